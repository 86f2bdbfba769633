"""The images, checked without a container engine: Dockerfiles parsed and linted, versions agreeing
with the lock files, the image's entry point run natively with the same command line, and the
scripts `make docker-build` / `make docker-test` / `make lock-tensorrt` run (docker/engine.sh,
images.sh, tensorrt.sh) with stand-in commands on PATH. What needs an engine and a built image
(docker/smoke.sh) is `make docker-test`'s: it skips here, saying so."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = {"gpu": REPO / "docker/Dockerfile", "cpu": REPO / "docker/Dockerfile.cpu"}
LOCKS = {"gpu": "requirements/gpu.lock", "cpu": "requirements/base.lock"}
STAGES = {"gpu": 2, "cpu": 1}  # gpu: a python stage (Python 3.11 and its venv), then CUDA's
DIGEST = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")
IN_IMAGE = "/opt/pbkit/share/"  # where the images keep the locks, configs and scripts


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        buf += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def args_and_stages(path: Path) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for ins, rest in instructions(path):
        if ins == "ARG" and not stages and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
        if ins == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((ins, rest))
    return args, stages


def lock_pins(rel: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / rel).read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def pip_installs(path: Path) -> list[str]:
    """Every `pip install ...` of the Dockerfile's RUN steps (up to the next && or ;)."""
    text = " ".join(rest for ins, rest in instructions(path) if ins == "RUN")
    return re.findall(r"pip install ([^&;]+)", text)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_every_base_is_pinned_by_tag_and_digest(kind: str) -> None:
    args, stages = args_and_stages(DOCKERFILES[kind])
    assert len(stages) == STAGES[kind]
    for stage in stages:
        image = stage[0][1].split()[0]
        ref = args[image[2:-1]] if image.startswith("${") else image
        assert DIGEST.match(ref), f"{kind}: {ref} is not pinned by tag and digest"
        assert ref.startswith("docker.io/"), f"{kind}: {ref}: name the registry (podman asks)"
    if kind == "gpu":
        assert re.match(r"^docker\.io/nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu", args["CUDA_IMAGE"])


def test_no_syntax_line_that_would_pull_a_frontend() -> None:
    for path in DOCKERFILES.values():
        assert not re.search(r"^#\s*syntax=", path.read_text(), re.M), path.name


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_the_lock_is_installed_with_hashes_and_nothing_else_is_pinned_apart(kind: str) -> None:
    lock = LOCKS[kind]
    copies = [r for i, r in instructions(DOCKERFILES[kind]) if i == "COPY"]
    assert f"{lock} {IN_IMAGE}{lock}" in copies
    installs = pip_installs(DOCKERFILES[kind])
    assert any("--require-hashes" in c and lock.split("/")[-1] in c for c in installs) or (
        kind == "gpu"
        and any('--require-hashes --no-build-isolation -r "$lock"' in c for c in installs)
    )
    for cmd in installs:
        # a lock (with hashes), or pbkit itself (its source, no dependencies)
        assert (
            "--require-hashes -r" in cmd
            or "--require-hashes --no-build-isolation -r" in cmd
            or ("--no-deps" in cmd and cmd.rstrip().endswith("/tmp/pbkit-src"))
        ), cmd
        assert "==" not in cmd, f"{kind}: a version pinned outside the lock: {cmd}"


def test_tensorrt_is_installed_by_its_script_with_hashes_from_its_lock() -> None:
    runs = " ".join(r for i, r in instructions(DOCKERFILES["gpu"]) if i == "RUN")
    assert f"tensorrt.sh install /opt/pbkit/bin/python {IN_IMAGE}requirements" in runs
    script = (REPO / "docker/tensorrt.sh").read_text()
    install = script[script.index("  install)") :]
    assert "--require-hashes" in install and "--no-deps" in install and "tensorrt.lock" in install
    final = args_and_stages(DOCKERFILES["gpu"])[1][-1]
    assert ("ARG", "TENSORRT=install") in final  # a release build installs it, or refuses


def test_tensorrt_libs_stay_out_of_the_pypi_lock() -> None:
    """PyPI's tensorrt-cu13-libs is a stub that downloads the real wheel unchecked: `make lock`
    leaves it out, so `pip install -r requirements/gpu.lock` needs nothing but PyPI."""
    assert "--no-emit-package tensorrt-cu13-libs" in (REPO / "Makefile").read_text()
    gpu = lock_pins("requirements/gpu.lock")
    assert "tensorrt-cu13-libs" not in gpu and "tensorrt-cu13" in gpu
    trt = lock_pins("requirements/tensorrt.lock")
    # empty until `make lock-tensorrt` runs where NVIDIA's index answers; then the same version
    assert set(trt) <= {"tensorrt-cu13-libs"}
    if trt:
        assert trt["tensorrt-cu13-libs"] == gpu["tensorrt-cu13"]


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_python_of_the_image_is_the_one_the_locks_are_resolved_for(kind: str) -> None:
    args, _ = args_and_stages(DOCKERFILES[kind])
    image_py = re.search(r"/python:(\d+\.\d+)", args["PYTHON_IMAGE"])
    make_py = re.search(r"--python-version (\d+\.\d+)", (REPO / "Makefile").read_text())
    assert image_py and make_py and image_py.group(1) == make_py.group(1)


def test_locks_agree_on_every_shared_version() -> None:
    base, gpu, dev = (lock_pins(f"requirements/{n}.lock") for n in ("base", "gpu", "dev"))
    for other in (gpu, dev):
        disagree = {k: (v, other[k]) for k, v in base.items() if k in other and other[k] != v}
        assert not disagree
    assert base["torch"] == "2.13.0" and gpu["torch"] == "2.13.0" and "onnxruntime-gpu" in gpu


def test_a_dockerfile_pin_that_disagrees_with_the_lock_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    text = DOCKERFILES["cpu"].read_text()
    assert "--no-build-isolation /tmp/pbkit-src" in text
    bad.write_text(
        text.replace(
            "--no-build-isolation /tmp/pbkit-src",
            "--no-build-isolation torch==2.12.0 /tmp/pbkit-src",
        )
    )
    assert any("==" in cmd for cmd in pip_installs(bad))


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_runtime_stage_user_labels_entrypoint(kind: str) -> None:
    _, stages = args_and_stages(DOCKERFILES[kind])
    final = stages[-1]
    users = [rest for ins, rest in final if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    labels = " ".join(rest for ins, rest in final if ins == "LABEL")
    for key in ("source", "version", "revision", "created", "ref.name", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert "io.github.pbkit.stand-in=" in labels
    assert [rest for ins, rest in final if ins == "ENTRYPOINT"] == ['["pbkit"]']
    env = " ".join(rest for ins, rest in final if ins == "ENV")
    for var in (
        'PBKIT_IMAGE="${IMAGE_TAG}"',
        "PBKIT_IMAGE_BASE=",
        "YOLO_OFFLINE=1",
        "YOLO_AUTOINSTALL=false",
        "ORT_DISABLE_TELEMETRY=1",
        "HOME=/tmp",  # writable for any --user
    ):
        assert var in env, var


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_the_builds_facts_come_after_the_heavy_steps(kind: str) -> None:
    """A new revision or date must not re-run apt-get or re-install the environment: every ARG of
    the build's facts is declared after the last RUN that installs anything."""
    final = args_and_stages(DOCKERFILES[kind])[1][-1]
    heavy = max(k for k, (i, r) in enumerate(final) if i == "RUN" and "install" in r)
    for name in ("IMAGE_TAG", "VERSION", "REVISION", "CREATED", "STAND_IN"):
        at = [k for k, (i, r) in enumerate(final) if i == "ARG" and r.split("=")[0] == name]
        assert at and min(at) > heavy, f"{kind}: ARG {name} comes before an install step"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_openvino_telemetry_is_declined_where_home_is(kind: str) -> None:
    """`import openvino` sends an event unless $HOME/intel/openvino_telemetry holds 0."""
    final = args_and_stages(DOCKERFILES[kind])[1][-1]
    runs = " ".join(r for i, r in final if i == "RUN")
    env = " ".join(r for i, r in final if i == "ENV")
    home = re.search(r"\bHOME=(\S+)", env)
    assert home and f"echo 0 > {home.group(1)}/intel/openvino_telemetry" in runs


def test_dockerignore_keeps_environments_results_and_secrets_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "results", "*.pt", "*.onnx", ".env"):
        assert entry in ignored


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (make setup installs it)")
    r = subprocess.run(
        [hadolint, *map(str, DOCKERFILES.values())], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_the_entrypoint_runs_natively_as_in_the_image(kind: str, tmp_path: Path) -> None:
    """ENTRYPOINT + CMD, and `env --json`, run here with the image's environment variables."""
    _, stages = args_and_stages(DOCKERFILES[kind])
    final = stages[-1]
    entry = json.loads(next(rest for ins, rest in final if ins == "ENTRYPOINT"))
    cmd = json.loads(next(rest for ins, rest in final if ins == "CMD"))
    exe = str(Path(sys.executable).parent / entry[0])
    base = "localhost/pbkit-stand-in/python:3.11 (stand-in for docker.io/library/python:3.11)"
    env = {
        **os.environ,
        "PBKIT_IMAGE": f"ghcr.io/pbkit/{kind}:test",
        "PBKIT_IMAGE_BASE": base,
        "PBKIT_LOCK_DIR": str(REPO / "requirements"),
        "PBKIT_IMAGE_DIGEST": "sha256:" + "0" * 64,
    }
    r = subprocess.run([exe, *cmd], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and "Usage: pbkit" in r.stdout
    r = subprocess.run(
        [exe, "env", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    info = json.loads(r.stdout)
    assert info["container"] == {
        "image": f"ghcr.io/pbkit/{kind}:test",
        "digest": "sha256:" + "0" * 64,
        "base": base,
    }
    assert info["lock_sha256"][LOCKS[kind]]


def test_the_workflow_builds_with_the_same_scripts() -> None:
    import yaml

    wf = yaml.safe_load((REPO / ".github/workflows/images.yml").read_text())
    test = " ".join(s.get("run", "") for s in wf["jobs"]["test"]["steps"])
    assert "make docker-test" in test
    build = wf["jobs"]["build"]
    assert "test" in build["needs"]
    files = {e["dockerfile"] for e in build["strategy"]["matrix"]["include"]}
    assert files == {"docker/Dockerfile", "docker/Dockerfile.cpu"}
    runs = " ".join(s.get("run", "") for s in build["steps"])
    assert "docker/tensorrt.sh check" in runs  # the GPU image: its one line where TensorRT cannot
    push = next(
        s for s in build["steps"] if s.get("uses", "").startswith("docker/build-push-action")
    )
    assert push["with"]["sbom"] is True and push["with"]["provenance"] == "mode=max"
    build_args = push["with"]["build-args"]
    for arg in re.findall(r"^([A-Z_]+)=", build_args, re.M):
        assert re.search(rf"^ARG {arg}\b", DOCKERFILES["cpu"].read_text(), re.M), arg
    assert "IMAGE_TAG=" in build_args
    smoke = " ".join(s.get("run", "") for s in wf["jobs"]["smoke"]["steps"])
    assert "docker/smoke.sh" in smoke
    assert wf[True]["push"]["tags"] == ["v*"]  # YAML reads the key `on` as True


def test_ci_runs_docker_test_after_the_suite() -> None:
    lines = [
        ln.split("#")[0].strip()
        for ln in (REPO / ".ci/run").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    tests = next(k for k, ln in enumerate(lines) if ln.startswith("make test"))
    assert any(ln.startswith("make docker-test") for ln in lines[tests + 1 :])


# --------------------------------------------------------------- the scripts, with fake commands

TOOLS = ("bash", "cat", "grep", "id", "sed", "date", "mkdir", "dirname", "head", "tail", "cut")


def fake_bin(tmp_path: Path, **scripts: str) -> Path:
    """A PATH of its own: the few tools the scripts need, and the fake commands given (name:
    a /bin/sh body; `_` in a name stands for `-`)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_ / tool).symlink_to(found)
    for name, body in scripts.items():
        path = bin_ / name.replace("_", "-")
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
    return bin_


def bash(
    script: str, *args: str, path: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`bash -c script` in the repository, with PATH and the environment given."""
    full = {k: v for k, v in os.environ.items() if k not in ("CONTAINER_ENGINE", "TENSORRT")}
    full.update(REVISION="test", CREATED="2026-01-01T00:00:00Z")  # (no git asked)
    full.update(env)
    if path is not None:
        full["PATH"] = str(path)
    exe = shutil.which("bash")
    assert exe
    return subprocess.run(
        [exe, "-c", script, "bash", *args],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def pick(bin_: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return bash(
        'source docker/engine.sh && pick_engine && echo "${ENGINE[*]}|$ENGINE_KIND|${LIMITS[*]}"',
        path=bin_,
        **env,
    )


DOCKER = 'case $1 in --version) echo "Docker version 28.1.1";; info) exit 0;; esac'
PODMAN = 'case $1 in --version) echo "podman version 4.3.1";; esac'


def test_engine_docker_where_a_daemon_answers(tmp_path: Path) -> None:
    r = pick(fake_bin(tmp_path, docker=DOCKER, podman=PODMAN))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "docker|docker|"


def test_engine_podman_with_runc_and_the_machines_limits(tmp_path: Path) -> None:
    # docker here is podman's alias (podman-docker): podman it is, with runc, never crun
    alias = 'case $1 in --version) echo "podman version 4.3.1";; info) exit 0;; esac'
    r = pick(fake_bin(tmp_path, docker=alias, podman=PODMAN, runc="exit 0"))
    assert r.returncode == 0, r.stderr
    engine, kind, limits = r.stdout.strip().split("|")
    assert (engine, kind) == ("podman --runtime runc", "podman")
    files = bash("ulimit -Hn").stdout.strip()
    if files != "unlimited":
        assert f"--ulimit nofile={files}:{files}" in limits


def test_engine_podman_without_runc_keeps_its_default_runtime(tmp_path: Path) -> None:
    r = pick(fake_bin(tmp_path, podman=PODMAN))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("|")[:2] == ["podman", "podman"]


def test_engine_docker_forced_without_a_daemon_is_one_line(tmp_path: Path) -> None:
    r = pick(fake_bin(tmp_path, podman=PODMAN), CONTAINER_ENGINE="docker")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: CONTAINER_ENGINE=docker but no Docker daemon answers (docker info)"
    ]


def test_no_engine_and_no_apt_get_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bin_ = fake_bin(tmp_path)
    r = pick(bin_)
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: no container engine") and "apt-get" in line
    # and so does `make docker-test` (docker/images.sh test): one line, exit 2, nothing built
    r = bash('bash docker/images.sh "$1"', "test", path=bin_, LOGS=str(tmp_path / "logs"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [line]


def test_podman_that_apt_get_cannot_install_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("apt-get runs only as root here (or with passwordless sudo)")
    apt = 'echo "E: Unable to locate package podman" >&2; exit 100'
    r = pick(fake_bin(tmp_path, apt_get=apt))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and "Unable to locate package podman" in errors[0], lines
    assert all(ln.startswith(("installing ", "error: ")) for ln in lines), lines


def images_sh(fn: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A function of docker/images.sh (sourced: its functions only, nothing built)."""
    return bash(f'source docker/images.sh && {fn} "$@"', *args, **env)


@pytest.mark.parametrize(
    "tag, facts",
    [
        ("python:3.11.14-slim-bookworm", "bookworm 3.11"),
        ("python:3.12.3-slim-trixie", "trixie 3.12"),
        ("cuda:13.0.3-cudnn-runtime-ubuntu24.04", "trixie -"),
        ("cuda:12.4.1-cudnn-runtime-ubuntu22.04", "bookworm -"),
        ("cuda:13.0.3-cudnn-runtime-rockylinux9", None),
        ("python:3.11-alpine3.20", None),
        ("alpine:3.20", None),
    ],
)
def test_stand_in_for_a_base(tag: str, facts: str | None, tmp_path: Path) -> None:
    """The Debian release and Python minor a stand-in base is built from, or none."""
    r = images_sh("stand_in_for", tag, LOGS=str(tmp_path))
    if facts is None:
        assert r.returncode != 0 and not r.stdout.strip()
    else:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == facts


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_every_pinned_base_has_a_stand_in(kind: str, tmp_path: Path) -> None:
    """make docker-test can build each image where Docker Hub cannot be reached."""
    args, _ = args_and_stages(DOCKERFILES[kind])
    for name in (n for n in args if n.endswith("_IMAGE")):
        tag = args[name].split("@")[0].rsplit("/", 1)[-1]
        r = images_sh("stand_in_for", tag, LOGS=str(tmp_path))
        assert r.returncode == 0 and r.stdout.strip(), f"{kind}: no stand-in for {tag}"


def test_image_tags_say_what_makes_them_test_builds(tmp_path: Path) -> None:
    env = {"IMAGE": "ghcr.io/me/pbkit", "VERSION": "1.2.3", "LOGS": str(tmp_path)}
    cases = {
        ("cpu", ""): "ghcr.io/me/pbkit-cpu:1.2.3",
        ("cpu", "-stand-in"): "ghcr.io/me/pbkit-cpu:1.2.3-stand-in",
        ("gpu", ""): "ghcr.io/me/pbkit:1.2.3",
        ("gpu", "-stand-in-no-tensorrt"): "ghcr.io/me/pbkit:1.2.3-stand-in-no-tensorrt",
    }
    for (kind, suffix), want in cases.items():
        r = images_sh("tag_for", kind, suffix, **env)
        assert r.returncode == 0 and r.stdout.strip() == want, (kind, suffix, r.stderr)


def test_images_sh_refuses_an_unknown_mode(tmp_path: Path) -> None:
    r = bash("bash docker/images.sh push", LOGS=str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip() == "usage: docker/images.sh build|test"


# ---------------------------------------------------------------------------- TensorRT's lock

TRT = "11.4.0.106"


def lock_dir(tmp_path: Path, trt_pin: str | None) -> Path:
    d = tmp_path / "requirements"
    d.mkdir()
    (d / "gpu.lock").write_text(f"tensorrt-cu13=={TRT} \\\n    --hash=sha256:{'a' * 64}\n")
    body = "# TensorRT's libraries (empty until make lock-tensorrt)\n"
    if trt_pin:
        body += f"tensorrt-cu13-libs=={trt_pin} \\\n    --hash=sha256:{'b' * 64}\n"
    (d / "tensorrt.lock").write_text(body)
    return d


def trt(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return bash('bash docker/tensorrt.sh "$@"', *args, **env)


def one_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_tensorrt_install_refuses_with_an_empty_lock(tmp_path: Path) -> None:
    d = lock_dir(tmp_path, None)
    line = one_error(trt("install", sys.executable, str(d)))
    assert "holds no TensorRT wheel" in line and "make lock-tensorrt" in line
    assert "holds no TensorRT wheel" in one_error(trt("check", str(d)))


def test_tensorrt_install_skips_only_when_asked(tmp_path: Path) -> None:
    d = lock_dir(tmp_path, None)
    r = trt("install", sys.executable, str(d), TENSORRT="skip")
    assert r.returncode == 0 and "not installed (TENSORRT=skip)" in r.stdout
    assert "TENSORRT=maybe" in one_error(trt("install", sys.executable, str(d), TENSORRT="maybe"))


def test_tensorrt_lock_for_another_version_is_refused(tmp_path: Path) -> None:
    line = one_error(trt("check", str(lock_dir(tmp_path, "10.9.0.34"))))
    assert f"pins tensorrt-cu13-libs==10.9.0.34 but gpu.lock pins tensorrt-cu13=={TRT}" in line


def test_tensorrt_index_out_of_reach_is_one_line(tmp_path: Path) -> None:
    closed = "http://127.0.0.1:9/"  # (the discard port: nothing listens, refused at once)
    line = one_error(trt("check", str(lock_dir(tmp_path, TRT)), TENSORRT_INDEX=closed))
    assert "is not reachable" in line and closed in line
    before = (REPO / "requirements/tensorrt.lock").read_bytes()
    line = one_error(trt("lock", TENSORRT_INDEX=closed))  # `make lock-tensorrt`
    assert "is not reachable" in line and "make lock-tensorrt" in line
    assert (REPO / "requirements/tensorrt.lock").read_bytes() == before


# ------------------------------------------------------ what the images taught pbkit's own code


def test_torch_compile_cpu_needs_a_compiler_that_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pbkit.measure import backends

    # inductor's config reads CXX when it is imported: drop it so the check reads CXX now
    monkeypatch.delitem(sys.modules, "torch._inductor.config", raising=False)
    missing = str(tmp_path / "no-such-g++")
    monkeypatch.setenv("CXX", missing)
    monkeypatch.delenv("TORCH_INDUCTOR_INSTALL_GXX", raising=False)
    why = backends.cxx_reason()
    assert why is not None and "no C++ compiler" in why and missing in why
    broken = tmp_path / "broken-g++"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    assert backends.cxx_reason() is not None  # found, but it does not answer --version
    works = tmp_path / "g++"
    works.write_text("#!/bin/sh\necho 'g++ (fake) 12.2.0'\n")
    works.chmod(0o755)
    monkeypatch.setenv("CXX", str(works))
    assert backends.cxx_reason() is None


def test_torch_compile_cpu_listed_unavailable_without_a_compiler(tmp_path: Path) -> None:
    exe = str(Path(sys.executable).parent / "pbkit")
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++")}
    env.pop("TORCH_INDUCTOR_INSTALL_GXX", None)
    r = subprocess.run(
        [exe, "list", "backends", "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    found = {b["name"]: b for b in json.loads(r.stdout)["backends"]}
    assert "C++ compiler" in (found["torch-compile-cpu"]["reason"] or "")


def test_a_lock_in_a_folder_of_another_user_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run made in a container as another uid: its lock cannot be opened, even read-only, by
    this user: a PbkitError of one line that says how the container is run, never a traceback."""
    from pbkit.core import lock
    from pbkit.core.errors import PbkitError

    def denied(path: object, flags: int, mode: int = 0o777) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(lock.os, "open", denied)
    with pytest.raises(PbkitError) as e, lock.exclusive(tmp_path / "run" / ".lock"):
        pass
    text = str(e.value)
    assert "\n" not in text and "Permission denied" in text and '--user "$(id -u):$(id -g)"' in text

    def no_mkdir(self: Path, *a: object, **k: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", no_mkdir)
    with pytest.raises(PbkitError) as e, lock.exclusive(tmp_path / "other" / ".lock"):
        pass
    assert "\n" not in str(e.value) and "--user" in str(e.value)


def test_a_lock_file_of_another_user_is_taken_read_only(tmp_path: Path) -> None:
    """flock needs no write access: a lock file this user may only read is locked all the same."""
    if os.geteuid() == 0:
        pytest.skip("root may write any file: run as a non-root user to check this")
    from pbkit.core import lock

    path = tmp_path / ".lock"
    path.write_text("{}")
    path.chmod(0o444)
    with lock.exclusive(path):
        assert path.exists()


# ----------------------------------------------------------------------- with an engine only


def test_smoke_of_a_built_image() -> None:
    """docker/smoke.sh on an image built here: `make docker-test` runs it on both images."""
    image = os.environ.get("PBKIT_DOCKER_IMAGE")
    if not image:
        pytest.skip(
            "needs a container engine (Docker or podman) and a built image: make docker-test"
            " builds and runs it; PBKIT_DOCKER_IMAGE=<tag> runs it here"
        )
    r = bash('bash docker/smoke.sh "$1" light', image, LOGS=str(REPO / "build/docker/smoke-pytest"))
    assert r.returncode == 0, r.stderr[-3000:]
