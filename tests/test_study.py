"""Studies: a grid from one study file, run on a local Ray, on a two-node Ray cluster or in the
driver; resumable by trial hash, failures contained, records written by the driver."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pbkit.core import record
from pbkit.core.errors import PbkitError
from pbkit.study import runner, spec, state

SHARED = {
    "model": {"name": "resnet20_cifar", "input_size": 16},
    "dataset": {"name": "synthetic", "train_limit": 64, "test_limit": 32},
    "base": {"epochs": 1, "batch_size": 32},
    "finetune": {"epochs": 1, "batch_size": 32},
    "prune": {"iterative_steps": 30},
    "bench": {"quick": True, "backends": ["torch-cpu"], "rounds": 1},
    "export": {"exporter": "torchscript"},
}
GRID = {"prune.method": ["l1", "random"], "prune.scope": ["local", "protected"], "seed": [0, 1]}
PBKIT = str(Path(sys.executable).parent / "pbkit")


def _study_file(
    tmp_path: Path, name: str = "small", grid: dict[str, Any] | None = None, **extra: Any
) -> Path:
    path = tmp_path / f"{name}.study.yaml"
    path.write_text(yaml.safe_dump({"name": name, "config": SHARED, "grid": grid or GRID, **extra}))
    return path


def _records(study_dir: Path) -> dict[str, record.Record]:
    return {
        p.parent.name: record.read(p) for p in sorted((study_dir / "runs").glob("*/record.json"))
    }


@pytest.fixture(scope="module")
def ray_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small study (2 methods x 2 scopes x 2 seeds) run once on a local Ray."""
    tmp = tmp_path_factory.mktemp("study")
    out = tmp / "out"
    summary = runner.run(spec.read(_study_file(tmp)), out, executor="ray", quiet=True)
    assert (
        summary.counts == {"done": 8, "failed": 0, "skipped": 0, "pending": 0} and summary.ran == 8
    )
    return out


def test_a_small_study_on_local_ray_records_every_trial(ray_study: Path) -> None:
    doc = state.read(ray_study)
    assert doc["executor"] == "ray" and doc["address"] and doc["counts"]["done"] == 8
    assert len({t["hash"] for t in doc["trials"]}) == 8
    recs = _records(ray_study)
    for t in doc["trials"]:
        assert (
            t["status"] == "done"
            and t["error"] is None
            and t["node_id"]
            and t["host"]
            and t["wall_s"] > 0
        )
        rec = recs[t["run_id"]]
        assert rec.identity is not None and rec.identity.hash == t["hash"]
        assert t["record"] == f"runs/{t['run_id']}/record.json"
        assert rec.artifacts["location"]["node_id"] == t["node_id"]
        assert (
            rec.method.key == t["params"]["prune.method"]
            and rec.finetune
            and rec.finetune["seed"] == t["params"]["seed"]
        )
        assert rec.bench and rec.bench["threads"] == 1  # the trial's one CPU
    # one base per seed, trained once before the trials, the same file for every trial of that seed
    assert len(doc["bases"]) == 2 and len(list((ray_study / "bases").glob("*.pt"))) == 2
    by_seed: dict[int, set[str]] = {}
    for t in doc["trials"]:
        by_seed.setdefault(t["params"]["seed"], set()).add(recs[t["run_id"]].model.weights_sha256)
    assert all(len(s) == 1 for s in by_seed.values()) and by_seed[0] != by_seed[1]
    assert {b["sha256"] for b in doc["bases"].values()} == set().union(*by_seed.values())


def test_the_study_folder_is_one_html_report(ray_study: Path, pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import hashlib
    import re

    out = tmp_path / "report.html"
    r = pbkit("report", ray_study, "--format", "html", "-o", out)
    assert r.code == 0, r.err
    page = out.read_text()
    records = sorted((ray_study / "runs").glob("*/record.json"))
    assert len(records) == 8 and all(
        hashlib.sha256(p.read_bytes()).hexdigest() in page for p in records
    )
    rows = re.findall(r'<tr class="entry".*?</tr>', page, re.S)
    assert len(rows) == 4  # 2 methods x 2 scopes, the 2 seeds of each one row
    assert all('data-col="n" data-sort="2"' in row for row in rows)


def test_running_it_again_runs_nothing_and_a_new_axis_value_runs_only_its_trials(
    ray_study: Path, tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(ray_study, out)
    again = runner.run(spec.read(_study_file(tmp_path)), out, executor="ray", quiet=True)
    assert again.ran == 0 and again.counts["done"] == 8
    grid = {**GRID, "prune.method": ["l1", "random", "fpgm"]}
    more = runner.run(
        spec.read(_study_file(tmp_path, grid=grid)), out, executor="local", quiet=True
    )
    assert more.ran == 4 and more.counts["done"] == 12
    doc = state.read(out)
    assert [t["params"]["prune.method"] for t in doc["trials"] if t.get("stages_run")].count(
        "fpgm"
    ) == 4


def test_the_local_executor_gives_the_same_runs_as_ray(ray_study: Path, tmp_path: Path) -> None:
    local = runner.run(
        spec.read(_study_file(tmp_path)), tmp_path / "local", executor="local", quiet=True
    )
    assert local.counts["done"] == 8 and state.read(tmp_path / "local")["executor"] == "local"
    a, b = _records(ray_study), _records(tmp_path / "local")
    assert a.keys() == b.keys()
    for run_id in a:
        ra, rb = a[run_id], b[run_id]
        assert (ra.counts.macs_pruned, ra.counts.params_pruned, ra.method.steps) == (
            rb.counts.macs_pruned,
            rb.counts.params_pruned,
            rb.method.steps,
        )
        assert (ra.accuracy.base, ra.accuracy.pruned, ra.accuracy.finetuned) == (
            rb.accuracy.base,
            rb.accuracy.pruned,
            rb.accuracy.finetuned,
        )


def test_a_failing_trial_is_contained_listed_and_retried_on_request(tmp_path: Path, pbkit) -> None:  # type: ignore[no-untyped-def]
    grid = {"prune.method": ["l1"], "prune.speedup": [2, 400]}
    path = _study_file(tmp_path, "fails", grid=grid, config={**SHARED, "dataset": {"name": None}})
    r = pbkit("study", "run", path, "--executor", "local", "--out", tmp_path / "out", "--json")
    assert r.code == 4
    summary = r.json()
    assert (summary["done"], summary["failed"]) == (1, 1)
    assert (
        "unreachable" in summary["failures"][0]["error"]
        and summary["failures"][0]["params"]["prune.speedup"] == 400
    )
    assert "1 trial(s) failed" in r.err and "--retry-failed" in r.err
    again = pbkit("study", "run", path, "--executor", "local", "--out", tmp_path / "out", "--json")
    assert again.code == 4 and again.json()["ran"] == 0  # failed stays failed ...
    retried = pbkit(
        "study",
        "run",
        path,
        "--executor",
        "local",
        "--out",
        tmp_path / "out",
        "--retry-failed",
        "--json",
    )
    assert retried.code == 4 and retried.json()["ran"] == 1  # ... until asked, and only it runs
    status = pbkit("study", "status", tmp_path / "out", "--json")
    assert status.code == 0 and (status.json()["done"], status.json()["failed"]) == (1, 1)


def test_methods_that_do_not_apply_are_skipped_with_a_note(tmp_path: Path) -> None:
    path = _study_file(
        tmp_path,
        "skips",
        grid={"prune.method": ["obdc"]},
        config={**SHARED, "model": {"name": "yolov8n"}, "dataset": {"name": None}},
    )
    summary = runner.run(spec.read(path), tmp_path / "out", executor="ray", quiet=True)
    assert (
        summary.counts["skipped"] == 1 and summary.ran == 0 and summary.address is None
    )  # nothing to run: no Ray
    trial = state.read(tmp_path / "out")["trials"][0]
    assert trial["status"] == "skipped" and "does not apply to yolo" in trial["note"]


@pytest.mark.parametrize(
    "text,needle",
    [
        ("name: x\ngrid: {}\n", "grid: the grid needs at least one axis"),
        ("name: x\ngrid: {prune.method: []}\n", "has no values"),
        ("name: x\ngrid: {run_id: [a]}\n", "a study names and places its runs itself"),
        ("name: x\ngrids: {prune.method: [l1]}\n", "unknown key"),
        ("name: ../x\ngrid: {prune.method: [l1]}\n", "name"),
        ("name: x\ngrid: {prune.method: [magic]}\n", "unknown method 'magic'"),
        ("name: x\ngrid: {prune.scoope: [local]}\n", "unknown key 'prune.scoope'"),
        ("name: x\nconfig: {run_id: mine}\ngrid: {prune.method: [l1]}\n", "remove run_id"),
        ("name: x\ngrid: {prune.method: [l1]}\nexclude: [{prune.method: l1}]\n", "no trial left"),
    ],
)
def test_bad_study_files_are_one_clear_line(tmp_path: Path, pbkit, text: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.study.yaml"
    path.write_text(text)
    r = pbkit("study", "run", path, "--out", tmp_path / "out")
    assert r.code == 2 and needle in r.err and r.err.count("\n") == 1, r.err
    assert not (tmp_path / "out" / "study.json").exists()


def test_extends_exclude_and_set_shape_the_trials(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("model:\n  name: resnet56_cifar\nprune:\n  speedup: 3\n")
    path = _study_file(
        tmp_path,
        "shaped",
        grid={"prune.method": ["l1", "l2"], "prune.scope": ["local", "global"]},
        extends="run.yaml",
        config={"finetune": {"epochs": 2}},
        exclude=[{"prune.method": "l2", "prune.scope": "global"}],
    )
    st = spec.read(path, ["finetune.epochs=3"])
    assert [t.params for t in st.trials] == [
        {"prune.method": "l1", "prune.scope": "local"},
        {"prune.method": "l1", "prune.scope": "global"},
        {"prune.method": "l2", "prune.scope": "local"},
    ]
    t = st.trials[0]
    assert (t.cfg.model.name, t.cfg.prune.speedup, t.cfg.finetune.epochs) == (
        "resnet56_cifar",
        3.0,
        3,
    )
    with pytest.raises(PbkitError, match="not found"):
        spec.read(_study_file(tmp_path, "nofile", extends="missing.yaml"))


def test_the_target_is_a_study_axis_latency_trials_are_their_own_runs() -> None:
    st = spec.read(Path(__file__).resolve().parents[1] / "configs/study/digits-latency.study.yaml")
    by = {(t.params["prune.target"], t.params["seed"]): t for t in st.trials}
    assert len(st.trials) == 6 and set(by) == {
        (x, s) for x in ("latency", "macs") for s in (0, 1, 2)
    }
    lat, macs = by[("latency", 0)], by[("macs", 0)]
    assert (lat.cfg.prune.target, lat.cfg.prune.backend, macs.cfg.prune.target) == (
        "latency",
        "ort-cpu",
        "macs",
    )
    assert lat.hash != macs.hash and "-ort-cpu-" in lat.run_id and "-ort-cpu-" not in macs.run_id
    assert lat.base_key == macs.base_key  # one base per seed, shared by both targets (held equal)
    macs_only = spec.read(
        Path(__file__).resolve().parents[1] / "configs/study/digits-latency.study.yaml",
        ["prune.backend=torch-cpu"],
    )  # the backend is not part of a MACs run's identity
    assert {t.hash for t in macs_only.trials if t.params["prune.target"] == "macs"} == {
        t.hash for t in st.trials if t.params["prune.target"] == "macs"
    }


# ------------------------------------------------------------------------------------------------
# killed drivers, dying workers, a two-node cluster


@pytest.mark.slow
def test_a_killed_driver_leaves_nothing_half_written_and_the_rerun_finishes(tmp_path: Path) -> None:
    path = _study_file(tmp_path)
    out = tmp_path / "out"
    cmd = [PBKIT, "study", "run", str(path), "--out", str(out), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while len(list((out / "runs").glob("*/record.json"))) < 2:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() - t0 < 240
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    doc = state.read(out)  # valid JSON, every finished trial with its record
    for t in doc["trials"]:
        if t["status"] == "done":
            record.read(out / t["record"])
    done_before = doc["counts"]["done"]
    assert done_before < 8
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout)
    assert summary["done"] == 8 and summary["ran"] == 8 - done_before
    assert len(list((out / "runs").glob("*/record.json"))) == 8
    assert not list(out.rglob(".*.tmp")) and not list(out.glob("runs/.tmp-*"))


def _dies_once_mid_trial(victim: str, died: Path) -> Any:
    """A stand-in for ``worker.run_trial`` that Ray ships to its worker processes (a function
    defined in a function is pickled by value, so no worker imports this module): the first
    attempt at trial ``victim`` prunes, leaves the file ``died`` and ends its worker process there,
    mid-trial; every other call is the real ``run_trial`` of the worker's own, unpatched
    ``pbkit.study.worker``."""

    def run_trial(job: dict[str, Any], base: Any = None, attempts: Any = None) -> dict[str, Any]:
        import os

        from pbkit import stages
        from pbkit.study import worker

        if job["hash"] == victim and not died.exists():
            prune_only = stages.run

            def prune_then_die(cfg: Any, **_: Any) -> Any:
                prune_only(cfg, until="prune", quiet=True)
                died.write_text(str(os.getpid()))
                os._exit(1)  # the worker process dies: Ray retries the task

            stages.run = prune_then_die
        return worker.run_trial(job, base, attempts)

    return run_trial


@pytest.mark.slow
def test_a_worker_that_dies_is_retried_by_ray_and_the_retry_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pbkit.study import worker

    grid = {"prune.method": ["l1", "random"]}
    path = _study_file(tmp_path, "retry", grid=grid, config={**SHARED, "dataset": {"name": None}})
    victim = spec.read(path).trials[1].hash
    died = tmp_path / "died.pid"
    # the executor hands Ray ``worker.run_trial`` when it starts: the stand-in goes instead
    monkeypatch.setattr(worker, "run_trial", _dies_once_mid_trial(victim, died))
    summary = runner.run(spec.read(path), tmp_path / "out", executor="ray", quiet=True)
    assert died.is_file() and int(died.read_text()) > 0  # a worker did die in the victim's trial
    assert summary.counts["done"] == 2
    trials = {t["hash"]: t for t in state.read(tmp_path / "out")["trials"]}
    assert trials[victim]["attempts"] == 2 and trials[victim]["retried"] == 1
    assert "prune" not in trials[victim]["stages_run"]  # the retry went on from the pruned model
    assert all(t["attempts"] == 1 for h, t in trials.items() if h != victim)


@pytest.mark.slow
def test_a_two_node_cluster_runs_trials_on_both_nodes_without_shared_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.cluster_utils import Cluster

    monkeypatch.setenv(
        "PBKIT_CACHE", str(tmp_path / "node-local")
    )  # each node's own folder below it
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        grid = {"prune.method": ["l1", "l2", "random", "fpgm"]}
        path = _study_file(
            tmp_path, "cluster", grid=grid, config={**SHARED, "dataset": {"name": None}}
        )
        out = tmp_path / "driver"
        address = cluster.address
        summary = runner.run(spec.read(path), out, executor="ray", address=address, quiet=True)
    finally:
        cluster.shutdown()
    assert summary.counts["done"] == 4 and summary.address == address, summary
    doc = state.read(out)
    nodes = {t["node_id"] for t in doc["trials"]}
    assert len(nodes) == 2  # both nodes ran trials
    recs = _records(out)
    assert len(recs) == 4 and not list(
        out.rglob("*.pt")
    )  # records came back; artifacts stayed on the nodes
    for t in doc["trials"]:
        where = Path(recs[t["run_id"]].artifacts["location"]["run_dir"])
        assert where.is_relative_to(tmp_path / "node-local" / "study-work" / t["node_id"][:12])
        assert (where / "pruned.pt").is_file()


def test_resources_no_node_has_are_refused_before_any_trial(tmp_path: Path, pbkit) -> None:  # type: ignore[no-untyped-def]
    path = _study_file(tmp_path, "big", grid={"prune.method": ["l1"]}, resources={"cpu": 512})
    r = pbkit("study", "run", path, "--out", tmp_path / "out")
    assert (
        r.code == 2 and "each trial asks 512 CPU and 0 GPU" in r.err and r.err.count("\n") == 1
    ), r.err
    assert state.read(tmp_path / "out")["counts"]["pending"] == 1  # nothing ran, nothing lost


def test_the_study_cli_has_help_with_examples(pbkit) -> None:  # type: ignore[no-untyped-def]
    for args in (["study", "--help"], ["study", "run", "--help"], ["study", "status", "--help"]):
        r = pbkit(*args)
        assert r.code == 0 and "Example" in r.out
    r = pbkit("study", "status", "/nonexistent")
    assert r.code == 2 and "not a study folder" in r.err


def test_a_study_leaves_the_process_as_it_found_it(tmp_path: Path) -> None:
    import ray

    from pbkit.core import runtime

    before = runtime.snapshot()
    runner.run(
        spec.read(
            _study_file(
                tmp_path,
                "env",
                grid={"prune.method": ["l1"]},
                config={**SHARED, "dataset": {"name": None}},
            )
        ),
        tmp_path / "o",
        executor="ray",
        quiet=True,
    )
    after = runtime.snapshot()
    changed = {
        k
        for k in before["environ"].keys() | after["environ"].keys()
        if before["environ"].get(k) != after["environ"].get(k)
    }
    assert changed <= {"RAY_AUTH_MODE"}  # Ray's own, tied to the config it keeps for the process
    assert {k: v for k, v in after.items() if k != "environ"} == {
        k: v for k, v in before.items() if k != "environ"
    }
    assert not ray.is_initialized()
