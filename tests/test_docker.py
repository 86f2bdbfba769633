"""The images, checked without a Docker engine: Dockerfiles parsed and linted, versions agreeing
with the lock files, and the image's entry point run natively with the same command line."""

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
DIGEST = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
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


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_every_base_is_pinned_by_tag_and_digest(kind: str) -> None:
    args, stages = args_and_stages(DOCKERFILES[kind])
    assert len(stages) == 2  # build stage + slim runtime stage
    for stage in stages:
        image = stage[0][1].split()[0]
        ref = args[image[2:-1]] if image.startswith("${") else image
        assert DIGEST.match(ref), f"{kind}: {ref} is not pinned by tag and digest"
    if kind == "gpu":
        assert re.match(r"^nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu", args["CUDA_IMAGE"])


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_the_lock_is_installed_with_hashes_and_nothing_else_is_pinned_apart(kind: str) -> None:
    text = " ".join(rest for ins, rest in instructions(DOCKERFILES[kind]) if ins == "RUN")
    assert f"--require-hashes -r {LOCKS[kind]}" in text
    for cmd in re.findall(r"pip install ([^&;]+)", text):
        # only the lock (with hashes) or pbkit itself (".", no dependencies) may be installed
        assert "--require-hashes -r requirements/" in cmd or (
            cmd.rstrip().endswith(" .") and "--no-deps" in cmd
        ), cmd
        assert "==" not in cmd, f"{kind}: a version pinned outside the lock: {cmd}"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_python_of_the_image_is_the_one_the_locks_are_resolved_for(kind: str) -> None:
    args, _ = args_and_stages(DOCKERFILES[kind])
    image_py = re.match(r"python:(\d+\.\d+)", args["PYTHON_IMAGE"])
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
    bad.write_text(
        DOCKERFILES["cpu"]
        .read_text()
        .replace(
            "pip install --no-deps --no-build-isolation .",
            "pip install --no-deps torch==2.12.0 && pip install .",
        )
    )
    text = " ".join(rest for ins, rest in instructions(bad) if ins == "RUN")
    assert any("==" in cmd for cmd in re.findall(r"pip install ([^&;]+)", text))


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_runtime_stage_user_labels_entrypoint(kind: str) -> None:
    _, stages = args_and_stages(DOCKERFILES[kind])
    final = stages[-1]
    users = [rest for ins, rest in final if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    labels = " ".join(rest for ins, rest in final if ins == "LABEL")
    for key in ("source", "version", "revision", "created"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert [rest for ins, rest in final if ins == "ENTRYPOINT"] == ['["pbkit"]']
    env = " ".join(rest for ins, rest in final if ins == "ENV")
    assert "PBKIT_IMAGE=" in env and "YOLO_OFFLINE=1" in env and "YOLO_AUTOINSTALL=false" in env


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
    env = {
        **os.environ,
        "PBKIT_IMAGE": f"ghcr.io/pbkit/{kind}:test",
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
    }
    assert info["lock_sha256"][LOCKS[kind]]


def test_the_workflow_builds_both_images_with_sbom_and_provenance() -> None:
    import yaml

    wf = yaml.safe_load((REPO / ".github/workflows/images.yml").read_text())
    build = wf["jobs"]["build"]
    files = {e["dockerfile"] for e in build["strategy"]["matrix"]["include"]}
    assert files == {"docker/Dockerfile", "docker/Dockerfile.cpu"}
    push = next(
        s for s in build["steps"] if s.get("uses", "").startswith("docker/build-push-action")
    )
    assert push["with"]["sbom"] is True and push["with"]["provenance"] == "mode=max"
    smoke = " ".join(s.get("run", "") for s in wf["jobs"]["smoke"]["steps"])
    assert " env --json" in smoke and "bench" in smoke
    assert wf[True]["push"]["tags"] == ["v*"]  # YAML reads the key `on` as True
