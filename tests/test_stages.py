"""The stages and their orchestrator: accuracy on real data, one base for every method, atomic and
resumable runs, each stage's own facts, no process state leaking from one run into the next."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pbkit import stages
from pbkit.core import config, record
from pbkit.core.errors import PbkitError
from tests.conftest import DIGITS


@pytest.mark.slow
def test_digits_base_pruned_2x_and_finetuned_stays_within_3_points(digits_run) -> None:  # type: ignore[no-untyped-def]
    _, rec = digits_run
    a = rec.accuracy
    assert a.metric == "top1" and rec.dataset is not None and rec.dataset.name == "digits"
    assert a.base is not None and a.base > 90.0  # a trained base on real digits
    assert rec.method.achieved_speedup >= 2.0
    assert a.finetuned is not None and a.finetuned >= a.base - 3.0
    assert rec.model.weights == "trained" and rec.base_training is not None
    ft = rec.finetune or {}
    assert (ft["epochs"], ft["optimizer"], ft["schedule"], ft["seed"]) == (6, "sgd", "cosine", 0)
    assert len(ft["history"]) == 6


@pytest.mark.slow
def test_every_method_prunes_the_same_saved_base(digits_run) -> None:  # type: ignore[no-untyped-def]
    run_dir, first = digits_run
    cfg = config.load(
        None, [*DIGITS, f"out={run_dir.parent}", "prune.method=fpgm", "finetune.epochs=0"]
    )
    second = stages.run(cfg, until="finetune", quiet=True).record
    assert second.model.weights_path == first.model.weights_path
    assert second.model.weights_sha256 == first.model.weights_sha256
    assert second.accuracy.base == first.accuracy.base
    assert second.method.key == "fpgm" and second.accuracy.finetuned is None


def test_interrupted_run_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pbkit.models.checkpoint as ck

    calls = {"n": 0}
    real = ck.save_model

    def save_then_die(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # the pruned model: after the dense one was written
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ck, "save_model", save_then_die)
    out = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        stages.run(
            config.load(None, ["model.name=resnet20_cifar", f"out={out}"]),
            until="finetune",
            quiet=True,
        )
    assert list(out.iterdir()) == []


def test_existing_run_folder_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    (out / "taken").mkdir(parents=True)
    (out / "taken" / "record.json").write_text("{}")
    with pytest.raises(PbkitError, match="already exists"):
        stages.run(
            config.load(None, ["model.name=resnet20_cifar", f"out={out}", "run_id=taken"]),
            quiet=True,
        )
    assert (out / "taken" / "record.json").read_text() == "{}"


def test_bench_after_export_keeps_parity_and_replaces_only_its_points(
    pruned_run: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    before = record.read(run)
    rec = stages.bench_run(run, ["bench.backends=[torch-cpu]", "bench.quick=true"], quiet=True)

    def keyed(ps: list[record.Parity]) -> dict[tuple[str, str, str, int], record.Parity]:
        return {(p.backend, p.variant, p.precision, p.batch): p for p in ps}

    assert (
        keyed(rec.parity).keys() == keyed(before.parity).keys()
    )  # torch-cpu checked again, nothing lost
    assert [p for p in rec.parity if p.backend == "ort-cpu"] == [
        p for p in before.parity if p.backend == "ort-cpu"
    ]
    assert {(p.backend, p.variant) for p in rec.latency} == {
        (p.backend, p.variant) for p in before.latency
    }
    assert list(rec.stages)[-1] == "bench"
    assert rec.bench is not None and rec.bench["quick"] is True


def test_bench_measures_each_point_over_fresh_sessions(pruned_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    rec = stages.bench_run(
        run,
        [
            "bench.backends=[ort-cpu]",
            "bench.quick=false",
            "bench.sessions=2",
            "bench.min_time_s=0.1",
            "bench.min_iters=10",
            "bench.max_time_s=0.1",
            "bench.warmup_s=0",
            "bench.warmup_iters=2",
            "bench.block_s=0.02",
        ],
        quiet=True,
    )
    pts = {p.variant: p for p in rec.latency if p.backend == "ort-cpu"}
    dense, pruned = pts["dense"], pts["pruned"]
    assert pruned.sessions == 2 and len(pruned.session_medians_ms or []) == 2
    assert not pruned.model_extra  # every field is declared (pbkit schema)
    assert (
        pruned.ci is not None
        and pruned.ci.sessions == 2
        and len(pruned.ci.session_speedups or []) == 2
    )
    assert pruned.speedup_vs_dense == pytest.approx(dense.median_ms / pruned.median_ms)
    assert (
        pruned.speedup_ci is not None
        and pruned.speedup_ci[0] <= pruned.speedup_vs_dense <= pruned.speedup_ci[1]
    )
    assert (
        dense.memory is not None and pruned.memory is not None
    )  # recorded while the first session was built
    assert (
        len([c for c in rec.parity if c.backend == "ort-cpu" and c.batch == 1]) == 2
    )  # once per variant
    assert rec.bench is not None and rec.bench["sessions"] == 2
    from pbkit.report import tables

    assert "2 sessions" in tables.speedup_cell(
        dense, pruned
    ) and "tries" not in tables.speedup_cell(dense, pruned)


def test_a_runs_bench_stage_measures_in_a_fresh_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pbkit.stages import bench, orchestrate

    def in_this_process(*a: object, **k: object) -> None:
        raise AssertionError("the bench stage ran in the process that pruned")

    monkeypatch.setattr(bench, "run", in_this_process)  # a fresh interpreter imports the real one
    cfg = _cfg(
        tmp_path / "runs",
        "bench.quick=false",
        "bench.sessions=2",
        "bench.min_time_s=0.05",
        "bench.min_iters=5",
        "bench.max_time_s=0.05",
        "bench.warmup_s=0",
        "bench.warmup_iters=2",
    )
    out = stages.run(cfg, quiet=True)
    assert "bench" in out.ran and {p.variant for p in out.record.latency} == {"dense", "pruned"}
    assert out.record.bench is not None and out.record.bench["sessions"] == 2
    # what fails in that process comes back as one line
    with pytest.raises(PbkitError, match="not a run folder|record") as e:
        orchestrate._bench_in_fresh_process(tmp_path / "nothing", cfg, True)
    assert "\n" not in str(e.value)


def test_a_run_made_before_a_bench_key_existed_is_measured_with_its_default(
    pruned_run: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    data = json.loads((run / "record.json").read_text())
    for key in ("sessions", "session_warmup_iters"):
        del data["config"]["bench"][key]  # as a record written before these keys existed
    (run / "record.json").write_text(json.dumps(data))
    rec = stages.bench_run(run, ["bench.backends=[torch-cpu]"], quiet=True)
    assert (
        rec.bench is not None and rec.bench["quick"] is True and "session_warmup_iters" in rec.bench
    )


def test_bad_run_id(tmp_path: Path) -> None:
    with pytest.raises(PbkitError, match="run_id"):
        stages.run(config.load(None, [f"out={tmp_path}", "run_id=../escape"]), quiet=True)


# ------------------------------------------------------------------------------------------------
# content-addressed, resumable runs

SMALL = [
    "model.name=resnet20_cifar",
    "prune.method=l1",
    "prune.speedup=2",
    "prune.iterative_steps=40",
    "bench.quick=true",
    "bench.backends=[torch-cpu]",
    "export.exporter=torchscript",
]


def _cfg(out: Path, *sets: str) -> config.Config:
    return config.load(None, [*SMALL, f"out={out}", *sets])


def test_run_id_is_a_readable_prefix_and_the_hash_of_what_determines_the_result(
    tmp_path: Path,
) -> None:
    from pbkit.stages import rundir

    def plan(*sets: str) -> rundir.Plan:
        return rundir.plan(_cfg(tmp_path, *sets))

    p = plan()
    assert re.fullmatch(r"resnet20-cifar-l1-protected-2x-[0-9a-f]{10}", p.run_id)
    assert p.run_id.endswith(p.identity.hash[:10]) and len(p.identity.hash) == 64
    assert plan().run_id == p.run_id  # the same configuration, the same run
    # what cannot change a data-free l1 result does not change its id
    for same in (
        "finetune.epochs=5",
        "sparsify.reg=0.1",
        "prune.calibration.batches=3",
        "bench.batches=[1,8]",
        "export.opset=17",
        "dataset.eval_batch_size=7",
    ):
        assert plan(same).run_id == p.run_id, same
    for other in (
        "prune.speedup=3",
        "prune.scope=local",
        "prune.round_to=8",
        "prune.seed=1",
        "model.seed=1",
        "prune.iterative_steps=41",
        "dataset.name=synthetic",
    ):
        assert plan(other).identity.hash != p.identity.hash, other
    # where they matter, recipes, calibration and sparse training are part of it
    slim = plan("prune.method=slim", "dataset.name=synthetic")
    assert (
        plan("prune.method=slim", "dataset.name=synthetic", "sparsify.reg=0.1").run_id
        != slim.run_id
    )
    assert (
        plan("dataset.name=synthetic", "finetune.epochs=2").run_id
        != plan("dataset.name=synthetic", "finetune.epochs=3").run_id
    )
    taylor = plan("prune.method=taylor", "prune.calibration.dataset=synthetic")
    assert (
        plan(
            "prune.method=taylor", "prune.calibration.dataset=synthetic", "prune.calibration.seed=1"
        ).run_id
        != taylor.run_id
    )


def test_checkpoint_weights_enter_the_identity_by_content(tmp_path: Path) -> None:
    import torch

    from pbkit import models
    from pbkit.stages import rundir

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(models.build(models.resolve("resnet20_cifar"), seed=1).state_dict(), a)
    torch.save(models.build(models.resolve("resnet20_cifar"), seed=2).state_dict(), b)
    ids = {
        name: (
            rundir.plan(_cfg(tmp_path, "model.weights=checkpoint", f"model.checkpoint={p}")).run_id
        )
        for name, p in (("a", a), ("b", b))
    }
    assert ids["a"] != ids["b"]
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "renamed.pt"
    copy.write_bytes(a.read_bytes())  # another path, the same bytes: the same run
    assert (
        rundir.plan(_cfg(tmp_path, "model.weights=checkpoint", f"model.checkpoint={copy}")).run_id
        == ids["a"]
    )


def test_a_configuration_run_twice_reports_the_existing_run(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sets = [x for s in SMALL for x in ("--set", s)]
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model:\n  name: resnet20_cifar\n")
    first = pbkit("run", cfg_file, *sets, "--set", f"out={tmp_path / 'runs'}", "--json")
    assert first.code == 0, first.err
    assert first.json()["stages_run"] == ["prune", "export", "bench"]
    run_dir = Path(first.json()["run_dir"])
    before = (run_dir / "record.json").read_bytes()
    again = pbkit("run", cfg_file, *sets, "--set", f"out={tmp_path / 'runs'}", "--json")
    assert again.code == 0, again.err
    assert again.json()["stages_run"] == [] and again.json()["stages_done_before"] == [
        "prune",
        "export",
        "bench",
    ]
    assert "complete" in again.err and "--force" in again.err
    assert (run_dir / "record.json").read_bytes() == before  # nothing was run or rewritten
    table = pbkit("run", cfg_file, *sets, "--set", f"out={tmp_path / 'runs'}")
    assert table.code == 0 and "achieved" in table.out and run_dir.name in table.out


def test_a_pruned_run_continues_with_export_and_bench_and_force_starts_again(
    tmp_path: Path,
) -> None:
    out = tmp_path / "runs"
    pruned = stages.run(_cfg(out), until="finetune", quiet=True)
    assert pruned.ran == ["prune"] and list(pruned.record.stages) == ["prune"]
    prune_facts = pruned.record.stages["prune"]
    (pruned.run_dir / ".record.json.k1ll3d.tmp").write_text(
        '{"half'
    )  # what a killed write leaves behind
    done = stages.run(_cfg(out), quiet=True)
    assert not list(done.run_dir.glob(".*.tmp"))
    assert (
        done.run_dir == pruned.run_dir
        and done.done_before == ["prune"]
        and done.ran == ["export", "bench"]
    )
    assert done.record.stages["prune"] == prune_facts  # the prune stage was not run again
    assert list(done.record.stages) == ["prune", "export", "bench"]
    # a bench asked for with other settings measures again; prune and export stay
    more = stages.run(_cfg(out, "bench.batches=[1,2]"), quiet=True)
    assert more.ran == ["bench"] and {p.batch for p in more.record.latency} == {1, 2}
    forced = stages.run(_cfg(out), force=True, quiet=True)
    assert forced.ran == ["prune", "export", "bench"]
    assert forced.record.stages["prune"].started_utc >= prune_facts.started_utc
    assert (
        forced.record.created_utc >= pruned.record.created_utc and len(forced.record.latency) == 2
    )


def test_a_run_folder_of_another_configuration_is_refused_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    first = stages.run(_cfg(out, "run_id=mine"), until="finetune", quiet=True)
    before = (first.run_dir / "record.json").read_bytes()
    with pytest.raises(PbkitError, match=r"already exists and holds another run \(configuration"):
        stages.run(_cfg(out, "run_id=mine", "prune.speedup=3"), until="finetune", quiet=True)
    assert (first.run_dir / "record.json").read_bytes() == before
    (out / "stray").mkdir()
    (out / "stray" / "notes.txt").write_text("mine")
    with pytest.raises(PbkitError, match="holds no pbkit record; not removing it"):
        stages.run(_cfg(out, "run_id=stray"), force=True, quiet=True)
    assert (out / "stray" / "notes.txt").read_text() == "mine"


def test_finetuning_is_its_own_stage_and_the_finetuned_model_is_exported(tmp_path: Path) -> None:
    import torch

    from pbkit.core.fileio import sha256_file
    from pbkit.models import checkpoint, counts

    cfg = _cfg(
        tmp_path / "runs",
        "dataset.name=synthetic",
        "dataset.train_limit=64",
        "dataset.test_limit=32",
        "finetune.epochs=1",
        "finetune.batch_size=32",
    )
    out = stages.run(cfg, quiet=True)
    rec = out.record
    assert out.ran == ["prune", "finetune", "export", "bench"] and list(rec.stages) == out.ran
    assert (
        rec.artifacts["pruned"]["path"] == "finetuned.pt"
        and rec.artifacts["pruned_as_pruned"]["path"] == "pruned.pt"
    )
    assert rec.accuracy.finetuned is not None and len((rec.finetune or {})["history"]) == 1
    assert rec.stages["finetune"].config == {
        "dataset": cfg.dataset.model_dump(),
        "finetune": cfg.finetune.model_dump(),
    }
    finetuned, _, _ = checkpoint.load_model(out.run_dir / "finetuned.pt")
    as_pruned, _, _ = checkpoint.load_model(out.run_dir / "pruned.pt")
    assert counts.layer_widths(finetuned) == counts.layer_widths(
        as_pruned
    )  # same architecture, trained weights
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            finetuned.state_dict().values(), as_pruned.state_dict().values(), strict=True
        )
    )
    pruned_point = next(p for p in rec.latency if p.variant == "pruned")
    assert pruned_point.artifact_sha256 == sha256_file(out.run_dir / "finetuned.pt")


# ------------------------------------------------------------------------------------------------
# each stage keeps its own facts


def test_a_record_pruned_on_one_machine_and_measured_on_another_says_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pbkit.machine import envinfo
    from pbkit.report import leaderboard

    run_dir = stages.run(_cfg(tmp_path / "runs"), until="finetune", quiet=True).run_dir
    real = envinfo.collect

    def elsewhere() -> dict[str, object]:
        env = real()
        env["host"] = {**env["host"], "hostname": "bench-box"}
        env["gpus"] = [{"index": 0, "name": "NVIDIA H100 80GB HBM3"}]
        return env

    monkeypatch.setattr(envinfo, "collect", elsewhere)
    rec = stages.bench_run(
        run_dir, ["bench.backends=[torch-cpu]", "bench.quick=true", "bench.rounds=1"], quiet=True
    )
    prune_env, bench_env = rec.stages["prune"].env or {}, rec.stages["bench"].env or {}
    assert prune_env["host"]["hostname"] == real()["host"]["hostname"] != "bench-box"
    assert (
        bench_env["host"]["hostname"] == "bench-box" and rec.env["host"]["hostname"] == "bench-box"
    )
    assert rec.stages["prune"].config["prune"]["method"] == "l1"  # type: ignore[index]
    assert rec.stages["bench"].config == {"bench": rec.config["bench"]}
    assert rec.stages["bench"].started_utc and rec.stages["bench"].seconds > 0  # type: ignore[operator]
    row = leaderboard.rows(leaderboard.find_records(run_dir))[0]
    assert (
        row.machine == "NVIDIA H100 80GB HBM3"
    )  # latency is named by the machine that measured it
    assert set(record.json_schema()["$defs"]["StageInfo"]["properties"]) >= {
        "config",
        "env",
        "started_utc",
        "seconds",
    }


def test_records_of_schema_1_0_are_read_and_upgraded() -> None:
    from tests.conftest import REPO

    old = sorted((REPO / "results/reference/cpu-2core/runs").glob("*/record.json"))
    assert old
    raw = json.loads(old[0].read_text())
    assert (
        raw["schema_version"] == "1.0"
        and isinstance(raw["stages"], list)
        and "task" not in raw["model"]
    )
    rec = record.read(old[0])
    assert list(rec.stages)[:2] == ["prune", "export"] and rec.stages["bench"].kit_version
    assert rec.model.task == "classify" and rec.identity is None
    assert rec.stage_env("bench") == rec.env  # 1.0 kept only the machine that measured last
    yolo = {**raw, "model": {**raw["model"], "family": "yolo"}}
    assert record.validate(yolo).model.task == "detect"


def test_a_run_of_an_older_pbkit_is_not_resumed(tmp_path: Path) -> None:
    first = stages.run(_cfg(tmp_path / "runs", "run_id=old"), until="finetune", quiet=True)
    data = json.loads((first.run_dir / "record.json").read_text())
    data.pop("identity")
    (first.run_dir / "record.json").write_text(json.dumps(data))
    with pytest.raises(PbkitError, match="made by an older pbkit"):
        stages.run(_cfg(tmp_path / "runs", "run_id=old"), quiet=True)


# ------------------------------------------------------------------------------------------------
# killed runs, concurrent runs

PBKIT = str(Path(sys.executable).parent / "pbkit")
KILLABLE = [
    *SMALL,
    "dataset.name=synthetic",
    "dataset.train_limit=256",
    "dataset.test_limit=64",
    "finetune.epochs=4",
    "finetune.batch_size=32",
]


def _start(out: Path, *sets: str) -> subprocess.Popen[str]:
    args = [x for s in [*KILLABLE, *sets, f"out={out}"] for x in ("--set", s)]
    return subprocess.Popen(
        [PBKIT, "run", str(Path(__file__).parent / "empty.yaml"), *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stages_on_disk(out: Path) -> list[str]:
    recs = list(out.glob("*/record.json"))
    if not recs:
        return []
    return list(record.read(recs[0]).stages)  # never half-written: it always validates


def _kill_when(
    proc: subprocess.Popen[str], out: Path, ready: Callable[[], bool], timeout: float = 120
) -> None:
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, (
            f"finished before the kill point: {proc.communicate()[1][-2000:]}"
        )
        assert time.monotonic() - t0 < timeout, "kill point never reached"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_a_run_killed_at_any_stage_resumes_and_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    ref = stages.run(config.load(None, [*KILLABLE, f"out={tmp_path / 'ref'}"]), quiet=True).record
    out = tmp_path / "runs"
    points: list[Callable[[], bool]] = [
        lambda: any(out.glob(".tmp-*/dense.pt")),  # inside the prune stage, its folder half made
        lambda: "prune" in _stages_on_disk(out),  # inside finetune
        lambda: "finetune" in _stages_on_disk(out),  # inside export
        lambda: "export" in _stages_on_disk(out),  # inside bench
    ]
    seen: list[list[str]] = []
    for ready in points:
        _kill_when(_start(out), out, ready)
        seen.append(_stages_on_disk(out))  # a valid record (or none) after every SIGKILL
    assert seen == [[], ["prune"], ["prune", "finetune"], ["prune", "finetune", "export"]]
    prune_facts = record.read(next(out.glob("*/record.json"))).stages["prune"]
    proc = _start(out)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    done = json.loads(stdout)
    assert done["stages_run"] == ["bench"] and done["stages_done_before"] == [
        "prune",
        "finetune",
        "export",
    ]
    rec = record.validate(done["record"])
    assert rec.stages["prune"] == prune_facts  # resumed, never redone
    assert rec.run_id == ref.run_id and rec.identity == ref.identity
    assert (rec.counts.macs_pruned, rec.counts.params_pruned) == (
        ref.counts.macs_pruned,
        ref.counts.params_pruned,
    )
    assert rec.accuracy.pruned == ref.accuracy.pruned
    assert rec.accuracy.finetuned == pytest.approx(ref.accuracy.finetuned, abs=2.0)
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".*.lock"))


def test_two_processes_on_one_configuration_do_not_corrupt_it(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    # started together (both import for seconds, then one takes the run's lock and works for seconds
    # while the other waits): waiting for the lock file before starting the second let a fast run
    # finish before the second even looked
    procs = [_start(out, "dataset.name=null"), _start(out, "dataset.name=null")]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), "".join(err for _, err in results)
    done = [json.loads(o) for o, _ in results]
    worker = next(i for i, d in enumerate(done) if d["stages_run"])
    waiter = 1 - worker
    a, b = done[worker], done[waiter]
    assert (
        a["run_dir"] == b["run_dir"]
        and a["stages_run"] == ["prune", "export", "bench"]
        and b["stages_run"] == []
    )
    assert (
        f"in use by process {procs[worker].pid}" in results[waiter][1]
        and "waiting" in results[waiter][1]
    )
    assert (
        a["record"] == b["record"] == json.loads((Path(a["run_dir"]) / "record.json").read_text())
    )
    assert [p.name for p in out.iterdir()] == [
        Path(a["run_dir"]).name
    ]  # no lock, no temp folder left


def test_the_lock_says_who_holds_it_and_waits(tmp_path: Path) -> None:
    import threading

    from pbkit.core import lock

    path = tmp_path / ".run.lock"
    told: list[str] = []
    order: list[str] = []
    with lock.exclusive(path):
        assert f"process {os.getpid()}" in lock.holder(path)
        waiter = threading.Thread(target=lambda: _take(lock, path, told, order))
        waiter.start()
        deadline = time.monotonic() + 10
        while not told:  # the waiter says it is waiting (who holds the lock) before it waits
            assert time.monotonic() < deadline, "the second taker never reported waiting"
            time.sleep(0.01)
        order.append("first done")
    waiter.join(timeout=10)
    assert order == ["first done", "second got it"] and told and f"process {os.getpid()}" in told[0]
    assert not path.exists()
    with pytest.raises(PbkitError, match="gave up after 0.2 s"), lock.exclusive(path):
        with lock.exclusive(path, timeout_s=0.2):
            pass


def _take(lock: object, path: Path, told: list[str], order: list[str]) -> None:
    with lock.exclusive(path, on_wait=told.append):  # type: ignore[attr-defined]
        order.append("second got it")


# ------------------------------------------------------------------------------------------------
# no process state leaks from one run into the next


def test_a_second_run_in_the_same_process_sees_the_state_it_would_see_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run B alone, then A (a detector: ultralytics settings; one bench thread; strict fp32;
    seeds), then B again: B starts from the same process state and gives the same run."""
    import cv2

    from pbkit.core import runtime
    from pbkit.models import ultralytics_env
    from pbkit.stages import orchestrate, prune

    with ultralytics_env.ultralytics_offline():
        import ultralytics.utils as ul
        import ultralytics.utils.checks as checks
    # a process that uses ultralytics online itself, with its own OpenCV threads and print options
    for mod, flag in (
        (ul, "ONLINE"),
        (ul, "AUTOINSTALL"),
        (checks, "ONLINE"),
        (checks, "AUTOINSTALL"),
    ):
        monkeypatch.setattr(mod, flag, True)
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(3)

    starts: list[dict[str, object]] = []
    real = prune.run

    def watched(ctx, rec=None):  # type: ignore[no-untyped-def]
        starts.append(runtime.snapshot())
        return real(ctx, rec)

    monkeypatch.setitem(orchestrate.STAGES, "prune", watched)
    b = [
        *SMALL,
        "prune.method=random",
        "dataset.name=synthetic",
        "dataset.train_limit=64",
        "dataset.test_limit=32",
        "finetune.epochs=1",
        "finetune.batch_size=32",
    ]
    a = [
        "model.name=yolov8n",
        "model.input_size=64",
        "prune.method=l1",
        "prune.iterative_steps=20",
        "bench.backends=[torch-cpu]",
        "bench.threads=1",
        "bench.quick=true",
        "export.exporter=torchscript",
    ]
    before = runtime.snapshot()
    alone = stages.run(config.load(None, [*b, f"out={tmp_path / 'alone'}"]), quiet=True).record
    assert runtime.snapshot() == before
    stages.run(config.load(None, [*a, f"out={tmp_path / 'a'}"]), quiet=True)
    assert (
        runtime.snapshot() == before
    )  # threads, fp32 precision, RNGs, environment, ultralytics flags
    again = stages.run(config.load(None, [*b, f"out={tmp_path / 'b'}"]), quiet=True).record
    assert runtime.snapshot() == before
    assert starts[0] == starts[1] == starts[2] == before
    assert again.identity == alone.identity and again.counts == alone.counts
    assert (again.accuracy.pruned, again.accuracy.finetuned) == (
        alone.accuracy.pruned,
        alone.accuracy.finetuned,
    )
    assert again.stages["prune"].env["torch_threads"] == alone.stages["prune"].env["torch_threads"]  # type: ignore[index]
    assert ul.ONLINE is True and cv2.getNumThreads() == 3  # the process's own settings, untouched
    cv2.setNumThreads(cv2_threads)


def test_a_run_whose_model_files_are_gone_says_so(tmp_path: Path) -> None:
    first = stages.run(_cfg(tmp_path / "runs"), until="finetune", quiet=True)
    (first.run_dir / "pruned.pt").unlink()
    with pytest.raises(
        PbkitError, match=r"has a record but not its model files \(pruned.pt; .*pass --force"
    ):
        stages.run(_cfg(tmp_path / "runs"), quiet=True)
    done = stages.run(_cfg(tmp_path / "runs"), force=True, quiet=True)
    assert done.ran == ["prune", "export", "bench"]


def test_concurrent_runs_that_need_the_same_base_train_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from pbkit import tasks
    from pbkit.stages import bases, context

    cfg = _cfg(
        tmp_path / "runs",
        "dataset.name=synthetic",
        "dataset.train_limit=32",
        "base.epochs=1",
        "base.batch_size=32",
    )
    bundle = context.dataset(cfg)
    spec = context.resolve_spec(cfg, bundle)
    task = tasks.get(spec.task)
    calls: list[int] = []
    real = type(task).train
    from pbkit.core import lock

    waiting = threading.Event()
    exclusive = lock.exclusive

    def telling(path, on_wait=None, timeout_s=None):  # type: ignore[no-untyped-def]
        def told(who: str) -> None:
            waiting.set()
            if on_wait is not None:
                on_wait(who)

        return exclusive(path, on_wait=told, timeout_s=timeout_s)

    def slow_train(self, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        assert waiting.wait(60), "the other run never came to wait for the base"
        return real(self, *a, **k)

    monkeypatch.setattr(lock, "exclusive", telling)
    monkeypatch.setattr(type(task), "train", slow_train)
    got: list[dict[str, object]] = []

    def obtain() -> None:
        _, weights, _ = bases.obtain(cfg, spec, task, bundle, tmp_path / "bases", quiet=True)
        got.append(weights)

    threads = [threading.Thread(target=obtain) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(calls) == 1 and len(got) == 2 and got[0] == got[1]
    assert got[0]["weights"] == "trained" and len(list((tmp_path / "bases").glob("*.pt"))) == 1


def test_an_empty_folder_in_a_runs_place_is_reused_and_a_foreign_one_refused(
    tmp_path: Path,
) -> None:
    from pbkit.stages import rundir

    plan = rundir.plan(_cfg(tmp_path / "runs"))
    plan.run_dir.mkdir(parents=True)
    assert plan.existing() is None and not plan.run_dir.exists()  # nothing in it to lose
    plan.run_dir.mkdir()
    (plan.run_dir / "notes.txt").write_text("mine")
    with pytest.raises(PbkitError, match="already exists and holds no record"):
        plan.existing()
    assert (plan.run_dir / "notes.txt").read_text() == "mine"
