"""Hostile and careless input, one probe per case, written as a user would run it: every mistake
ends with exactly one ``error: ...`` line on stderr and a non-zero exit code (2 for bad input),
never a traceback nor ``error: internal error``, and nothing already written is lost, clobbered
or left half-written.

Every test works on its own copy of one small run (``made_run``: resnet20_cifar at 8 px, pruned
1.5x, exported, benched quickly), so no test sees another's files."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Result, once

RUN_ID = "hostile"
# a run that takes seconds: a tiny input, a coarse pruning loop, the torchscript exporter, a
# quick bench on both CPU backends
RUN_CONFIG: dict[str, Any] = {
    "model": {"name": "resnet20_cifar", "input_size": 8},
    "prune": {"method": "l1", "speedup": 1.5, "iterative_steps": 20},
    "export": {"exporter": "torchscript"},
    "bench": {"quick": True, "backends": ["torch-cpu", "ort-cpu"]},
    "run_id": RUN_ID,
}
PRUNE = ["prune", "--model", "resnet20_cifar", "--method", "l1", "--speedup", "1.5"]


def write_config(path: Path, out: Path) -> Path:
    """The run's configuration as a YAML file whose runs go to ``out``."""
    path.write_text(yaml.safe_dump({**RUN_CONFIG, "out": str(out)}), encoding="utf-8")
    return path


def call_main(*args: str) -> int:
    """``pbkit ARGS`` in this process (outside a test's capture): its exit code."""
    from pbkit.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def shared_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small run (pruned, exported, benched on torch-cpu and ort-cpu), made once per session
    (across xdist workers too, and shared with tests/test_fuzz.py); tests copy it and never touch
    it."""

    def build(folder: Path) -> str:
        cfg = write_config(folder / "run.yaml", folder / "runs")
        code = call_main("run", str(cfg))
        assert code == 0, f"the shared run could not be made (exit {code})"
        return str(folder / "runs" / RUN_ID)

    return Path(once(tmp_path_factory, "hostile-run", build))


@pytest.fixture(scope="session")
def made_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_run(tmp_path_factory)


@pytest.fixture
def run(made_run: Path, tmp_path: Path) -> Path:
    """This test's own copy of the run, at ``tmp_path/runs/hostile``."""
    dst = tmp_path / "runs" / RUN_ID
    shutil.copytree(made_run, dst)
    return dst


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PBKIT_DEBUG", raising=False)  # tracebacks would be by request


# ------------------------------------------------------------------------------------- helpers


def error_lines(r: Result) -> list[str]:
    return [line for line in r.err.splitlines() if line.startswith("error:")]


def assert_refused(r: Result, *needles: str, code: int = 2) -> str:
    """Exit ``code``, exactly one ``error:`` line, the last one on stderr, naming ``needles``; no
    traceback and no internal error. Returns the line."""
    assert "Traceback" not in r.err, r.err
    assert "internal error" not in r.err, f"exit {r.code}: {r.err!r}"
    assert r.code == code, f"exit {r.code} (expected {code}); stderr: {r.err!r}"
    errors = error_lines(r)
    assert len(errors) == 1, f"expected one error line, got {errors!r}; stderr: {r.err!r}"
    assert r.err.rstrip("\n").splitlines()[-1] == errors[0], r.err
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def assert_clean(r: Result) -> None:
    """No traceback, no internal error, an exit code the CLI documents."""
    assert "Traceback" not in r.err, r.err
    assert "internal error" not in r.err, f"exit {r.code}: {r.err!r}"
    assert r.code in (0, 2, 3, 4), f"exit {r.code}: {r.err!r}"


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its sha256 and permissions (a link: where it points)."""
    out: dict[str, tuple[str, int]] = {}
    for p in sorted(folder.rglob("*")):
        st = os.lstat(p)
        rel = str(p.relative_to(folder))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link:" + os.readlink(p), stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(st.st_mode))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            out[rel] = ("special", stat.S_IFMT(st.st_mode))
    return out


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit_record(run_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = run_dir / "record.json"
    rec = json.loads(path.read_text())
    change(rec)
    path.write_text(json.dumps(rec, indent=2))


def flip_one_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * where)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------- where output goes


def _device_like_dev_full(tmp_path: Path) -> Path:
    """/dev/full itself where this process could not replace it anyway (not root); as root, a
    device node of its own (the same major/minor) in the test's folder, so that a pbkit that
    renamed over its target would clobber nothing of the machine's."""
    if os.geteuid() != 0:
        return Path("/dev/full")
    node = tmp_path / "full"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    return node


def test_report_to_a_device_is_refused_and_the_device_left_alone(
    pbkit, run: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    target = _device_like_dev_full(tmp_path)
    before = os.lstat(target)
    r = pbkit("report", run.parent, "--format", "md", "-o", target)
    assert_refused(r, str(target))
    after = os.lstat(target)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert after.st_ino == before.st_ino  # not replaced by a regular file
    assert not [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]


def test_report_to_a_fifo_is_refused_and_nothing_written_to_it(
    pbkit, run: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    # a reader end held open: a pbkit that opened the FIFO to write would not block the test
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        r = pbkit("report", run.parent, "--format", "md", "-o", fifo)
        assert_refused(r, str(fifo))
        try:
            leaked = os.read(fd, 1 << 16)
        except BlockingIOError:
            leaked = b""
        assert leaked == b"", "the report was written into the FIFO"
    finally:
        os.close(fd)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_report_to_a_symlink_is_refused_and_its_file_left_alone(
    pbkit, run: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    link = tmp_path / "report.md"
    link.symlink_to(precious)
    r = pbkit("report", run.parent, "--format", "md", "-o", link)
    assert_refused(r, str(link))
    assert link.is_symlink() and os.readlink(link) == str(precious)
    assert precious.read_text() == "keep me\n"


def test_report_over_the_record_it_reports_is_refused_and_the_record_kept(pbkit, run: Path) -> None:  # type: ignore[no-untyped-def]
    rec = run / "record.json"
    before = snapshot(run)
    r = pbkit("report", run.parent, "--format", "md", "-o", rec)
    assert_refused(r, "record.json")
    assert snapshot(run) == before
    assert json.loads(rec.read_text())["run_id"] == RUN_ID


def test_a_new_report_file_gets_the_umasks_permissions(pbkit, run: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "out" / "board.md"
    old = os.umask(0o022)
    try:
        r = pbkit("report", run.parent, "--format", "md", "-o", target)
    finally:
        os.umask(old)
    assert_clean(r)
    assert r.code == 0, r.err
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert "| l1 |" in target.read_text()


# -------------------------------------------------------------- files trusted without a check


def test_run_does_not_call_a_run_with_a_changed_onnx_complete(
    pbkit, run: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(tmp_path / "run.yaml", run.parent)
    recorded = json.loads((run / "record.json").read_text())["artifacts"]["onnx"]["pruned"]
    flip_one_byte(run / "pruned.onnx")
    r = pbkit("run", cfg, "--json")
    assert_clean(r)
    assert "nothing to run" not in r.err, r.err
    if r.code == 0:  # it exported again, and said so
        assert "export" in r.json()["stages_run"], r.err
        assert "pruned.onnx" in r.err, r.err
        rec = json.loads((run / "record.json").read_text())
        now = rec["artifacts"]["onnx"]["pruned"]["sha256"]
        assert sha(run / "pruned.onnx") == now
        # and the record's ONNX measurements are of the file now there (measured again if not)
        points = [
            p for p in rec["latency"] if p["backend"] == "ort-cpu" and p["variant"] == "pruned"
        ]
        assert points and all(p["artifact_sha256"] == now for p in points)
    else:  # or it refused, naming the file
        assert_refused(r, "pruned.onnx")
        assert (
            json.loads((run / "record.json").read_text())["artifacts"]["onnx"]["pruned"] == recorded
        )


def test_bench_never_measures_an_onnx_other_than_the_records(pbkit, run: Path) -> None:  # type: ignore[no-untyped-def]
    flip_one_byte(run / "pruned.onnx")
    changed = sha(run / "pruned.onnx")
    before = (run / "record.json").read_bytes()
    r = pbkit("bench", run, "--quick", "--backend", "ort-cpu", "--json")
    assert_clean(r)
    if r.code == 0:  # it exported again first: what it measured is the record's file
        rec = r.json()["record"]
        onnx_sha = rec["artifacts"]["onnx"]["pruned"]["sha256"]
        assert onnx_sha == sha(run / "pruned.onnx") != changed
        points = [
            p for p in rec["latency"] if p["backend"] == "ort-cpu" and p["variant"] == "pruned"
        ]
        assert points and all(p["artifact_sha256"] == onnx_sha for p in points)
    else:
        assert_refused(r, "pruned.onnx")
        assert (run / "record.json").read_bytes() == before


@pytest.mark.parametrize("where", ["../../etc/passwd", "/etc/passwd"])
def test_a_record_naming_a_model_file_outside_its_run_is_refused(
    pbkit, run: Path, where: str
) -> None:  # type: ignore[no-untyped-def]
    edit_record(run, lambda rec: rec["artifacts"]["pruned"].update(path=where))
    before = snapshot(run)
    r = pbkit("export", run)
    assert_refused(r, "outside")
    assert snapshot(run) == before


@pytest.mark.parametrize("where", ["../../etc/passwd", "/etc/passwd"])
def test_a_record_naming_an_onnx_file_outside_its_run_is_refused(
    pbkit, run: Path, where: str
) -> None:  # type: ignore[no-untyped-def]
    edit_record(run, lambda rec: rec["artifacts"]["onnx"]["pruned"].update(path=where))
    before = snapshot(run)
    r = pbkit("bench", run, "--quick", "--backend", "ort-cpu")
    assert_refused(r, "outside")
    assert snapshot(run) == before


# ------------------------------------------------------------------------------------ reports

CSV_HOSTILE = {
    "model": '=HYPERLINK("http://evil.example","x")',
    "method": "+cmd|' /C calc'!A0",
    "scope": "-2+3+cmd",
    "run_id": "@SUM(1+1)*cmd",
}


def test_csv_cells_from_record_text_are_neutralised(pbkit, run: Path) -> None:  # type: ignore[no-untyped-def]
    def hostile(rec: dict[str, Any]) -> None:
        rec["model"]["name"] = CSV_HOSTILE["model"]
        rec["method"]["key"] = CSV_HOSTILE["method"]
        rec["method"]["scope"] = CSV_HOSTILE["scope"]
        rec["config"]["prune"]["scope"] = CSV_HOSTILE["scope"]
        rec["run_id"] = CSV_HOSTILE["run_id"]

    edit_record(run, hostile)
    r = pbkit("report", run.parent, "--format", "csv")
    assert_clean(r)
    assert r.code == 0, r.err
    cells = [c for row in csv.reader(io.StringIO(r.out)) for c in row]
    for text in CSV_HOSTILE.values():
        assert text not in cells, f"{text!r} reaches a cell as is"
    assert "'" + CSV_HOSTILE["model"] in cells and "'" + CSV_HOSTILE["method"] in cells

    def number(c: str) -> bool:
        try:
            float(c)
        except ValueError:
            return False
        return True

    dangerous = [c for c in cells if c and c[0] in "=+-@\t\r" and not number(c)]
    assert dangerous == [], dangerous


def test_markdown_escapes_html_and_pipes(pbkit, run: Path) -> None:  # type: ignore[no-untyped-def]
    def hostile(rec: dict[str, Any]) -> None:
        rec["model"]["name"] = "<script>alert(1)</script>"
        rec["method"]["key"] = "a|b<script>x</script>"

    edit_record(run, hostile)
    r = pbkit("report", run.parent, "--format", "md")
    assert_clean(r)
    assert r.code == 0, r.err
    assert "<script>" not in r.out, r.out
    rows = [line for line in r.out.splitlines() if line.startswith("|")]
    cells = {len(re.findall(r"(?<!\\)\|", line)) for line in rows}
    assert rows and len(cells) == 1, f"rows with different cell counts: {rows}"


def test_terminal_table_prints_markup_and_escapes_literally(pbkit, run: Path) -> None:  # type: ignore[no-untyped-def]
    def hostile(rec: dict[str, Any]) -> None:
        rec["model"]["name"] = "[bold]x[/bold]"
        rec["method"]["key"] = "\x1b[31mred"

    edit_record(run, hostile)
    r = pbkit("report", run.parent)
    assert_clean(r)
    assert r.code == 0, r.err
    assert "[bold]x[/bold]" in r.out, r.out  # shown as written, not applied
    assert "\x1b" not in r.out and "\x1b" not in r.err  # no escape sequence reaches the terminal
    assert "red" in r.out


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_a_record_with_a_non_finite_latency_is_refused(pbkit, run: Path, bad: str) -> None:  # type: ignore[no-untyped-def]
    path = run / "record.json"
    text, n = re.subn(r'"median_ms": [0-9.e+-]+', f'"median_ms": {bad}', path.read_text(), count=1)
    assert n == 1
    path.write_text(text)
    before = snapshot(run)
    r = pbkit("report", run.parent, "--format", "json")
    assert_refused(r, "record.json")
    assert snapshot(run) == before


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"bare {name} in the JSON report")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "median",
    [0.0, 1e-320, 1e308],  # zero, subnormal, and one whose ratios overflow
)
def test_report_json_never_prints_a_bare_nan(pbkit, run: Path, median: float) -> None:  # type: ignore[no-untyped-def]
    def extreme(rec: dict[str, Any]) -> None:
        for p in rec["latency"]:
            if p["variant"] == "dense":
                for k in ("median_ms", "mean_ms", "min_ms", "p90_ms", "p95_ms", "p99_ms"):
                    p[k] = median
                p["medians_ms"] = [median]
            p["speedup_ci"] = None

    edit_record(run, extreme)
    r = pbkit("report", run.parent, "--format", "json")
    assert_clean(r)
    if r.code == 0:
        _strict_json(r.out)
    else:
        assert_refused(r)


# ------------------------------------------------------------------------ knobs without limits


class WorkStarted(Exception):
    """Raised where a run's work begins: a knob that is not refused by then was not refused at
    once."""


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any run that gets as far as building its model stops there (exit 1: a failing test)."""
    from pbkit.stages import bases

    def refuse(*a: Any, **k: Any) -> Any:
        raise WorkStarted("the run started working: the value was not refused at once")

    monkeypatch.setattr(bases, "obtain", refuse)


def _refused_naming_a_limit(r: Result, key: str, value: str) -> None:
    """Refused in one line that names the key, the limit (a number other than the value given)
    and how to raise it."""
    if "WorkStarted" in r.err:
        pytest.fail(f"{key}={value} was not refused: the run began its work ({r.err.strip()!r})")
    line = assert_refused(r, key)
    rest = line.replace(value, "")
    assert re.search(r"\d", rest), f"no limit named in {line!r}"
    assert "raise" in rest or "--set" in rest, f"no way to raise the limit in {line!r}"


@pytest.mark.parametrize(
    "key,value",
    [
        ("bench.batches", "[100000]"),
        ("bench.threads", "100000"),
        ("prune.iterative_steps", "10000000"),
        ("bench.sessions", "100000"),
        ("bench.min_time_s", "100000"),
        ("model.input_size", "100000"),
    ],
)
def test_a_knob_past_its_limit_is_refused_at_once(
    pbkit, tmp_path: Path, no_work: None, key: str, value: str
) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "runs")
    t0 = time.perf_counter()
    r = pbkit("run", cfg, "--set", f"{key}={value}")
    _refused_naming_a_limit(r, key, value.strip("[]"))
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_speedup_that_is_not_a_number_is_refused_at_once(
    pbkit, tmp_path: Path, no_work: None, value: str
) -> None:  # type: ignore[no-untyped-def]
    r = pbkit(
        "prune",
        "--model",
        "resnet20_cifar",
        "--method",
        "l1",
        "--speedup",
        value,
        "--out",
        tmp_path / "runs",
    )
    if "WorkStarted" in r.err:
        pytest.fail(f"--speedup {value} was not refused: the run began its work ({r.err!r})")
    line = assert_refused(r, "speedup")
    assert "finite" in line or re.search(r"\d", line.replace(value, "")), line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ---------------------------------------------------------------- "internal error" for a mistake


def test_a_text_file_as_checkpoint(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ck = tmp_path / "weights.pt"
    ck.write_text("these are not weights\n")
    r = pbkit(
        *PRUNE, "--checkpoint", ck, "--out", tmp_path / "runs", "--set", "prune.iterative_steps=5"
    )
    assert_refused(r, "weights.pt")
    assert ck.read_text() == "these are not weights\n"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_an_unknown_model_kwarg(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = pbkit(
        *PRUNE,
        "--out",
        tmp_path / "runs",
        "--set",
        "model.kwargs.nope=1",
        "--set",
        "prune.iterative_steps=5",
    )
    assert_refused(r, "nope")
    assert not (tmp_path / "runs").exists() or not [
        p for p in (tmp_path / "runs").iterdir() if p.name != "bases"
    ]


@pytest.mark.parametrize("doc", ["[]", "3", '"a record"', "null"])
@pytest.mark.parametrize("command", ["report", "bench", "export"])
def test_a_record_that_is_json_but_not_an_object(pbkit, run: Path, doc: str, command: str) -> None:  # type: ignore[no-untyped-def]
    (run / "record.json").write_text(doc)
    before = snapshot(run)
    args = {
        "report": ["report", run.parent],
        "bench": ["bench", run, "--quick", "--backend", "torch-cpu"],
        "export": ["export", run],
    }[command]
    r = pbkit(*args)
    assert_refused(r, "record.json")
    assert snapshot(run) == before


def test_a_corrupt_onnx_file_the_record_vouches_for(pbkit, run: Path) -> None:  # type: ignore[no-untyped-def]
    """The record's sha256 edited to match: the file reaches ONNX Runtime, which must not make it
    an internal error."""
    onnx = run / "pruned.onnx"
    onnx.write_bytes(onnx.read_bytes()[:4096])
    digest = sha(onnx)

    def vouch(rec: dict[str, Any]) -> None:
        rec["artifacts"]["onnx"]["pruned"]["sha256"] = digest
        rec["artifacts"]["onnx_sha256"] = digest

    edit_record(run, vouch)
    before = snapshot(run)
    r = pbkit("bench", run, "--quick", "--backend", "ort-cpu")
    assert_refused(r, "pruned.onnx")
    assert snapshot(run) == before


def test_a_corrupt_onnx_file(pbkit, run: Path) -> None:  # type: ignore[no-untyped-def]
    onnx = run / "pruned.onnx"
    onnx.write_bytes(b"\x08\x07garbage" * 100)
    r = pbkit("bench", run, "--quick", "--backend", "ort-cpu", "--json")
    assert_clean(r)
    if r.code != 0:
        assert_refused(r, "pruned.onnx")


def _tmp_leftovers(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.startswith(".tmp-") or p.name.endswith(".tmp") or p.name.startswith("tmp")
    )


@pytest.fixture
def child_env() -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("PBKIT_DEBUG", "COLUMNS")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    yield env


def test_prune_ended_by_sigterm_leaves_nothing_half_written(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "pbkit.cli",
        "prune",
        "--model",
        "resnet20_cifar",
        "--method",
        "l1",
        "--speedup",
        "3",
        "--out",
        str(runs),
        "--set",
        "prune.iterative_steps=400",
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any(runs.glob(".tmp-*/dense.pt")):  # the dense model saved: pruning has begun
                break
            time.sleep(0.05)
        assert proc.poll() is None, "prune ended before it could be interrupted"
        assert any(runs.glob(".tmp-*/dense.pt")), "prune did not start within 60 s"
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    r = Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
    assert _tmp_leftovers(runs) == [], _tmp_leftovers(runs)
    assert_refused(r, "SIGTERM", code=143)
    assert not [p for p in runs.iterdir() if p.name != "bases" and (p / "record.json").exists()]


def test_a_pickle_as_checkpoint_prints_no_python_warning(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """A pickle (protocol 5) given as --checkpoint: one error line, and no Python warning with a
    path into site-packages before it (what a user sees in a terminal, hence a real process)."""
    import pickle

    ck = tmp_path / "weights.pt"
    ck.write_bytes(pickle.dumps({"a": 1}, protocol=5))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pbkit.cli",
            *PRUNE,
            "--checkpoint",
            str(ck),
            "--out",
            str(tmp_path / "runs"),
        ],
        cwd=tmp_path,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    r = Result(proc.returncode, proc.stdout, proc.stderr)
    assert_refused(r, "weights.pt")
    assert "Warning" not in r.err, r.err
    assert r.err.strip().splitlines() == error_lines(r), r.err
