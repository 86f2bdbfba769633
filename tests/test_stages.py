"""The stages and their orchestrator: accuracy on real data, one base for every method, atomic and
resumable runs, each stage's own facts, no process state leaking from one run into the next."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbkit import stages
from pbkit.core import config, record
from pbkit.core.errors import PbkitError

DIGITS = ["model.name=resnet20_cifar", "dataset.name=digits", "dataset.image_size=16",
          "base.epochs=15", "base.lr=0.05", "base.batch_size=64",
          "finetune.epochs=6", "finetune.lr=0.01", "finetune.batch_size=64", "finetune.schedule=cosine",
          "prune.method=l1", "prune.speedup=2"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, record.Record]:
    out = tmp_path_factory.mktemp("digits") / "runs"
    run_dir = stages.run(config.load(None, [*DIGITS, f"out={out}"]), until="finetune", quiet=True).run_dir
    return run_dir, record.read(run_dir)


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
    cfg = config.load(None, [*DIGITS, f"out={run_dir.parent}", "prune.method=fpgm", "finetune.epochs=0"])
    second = stages.run(cfg, until="finetune", quiet=True).record
    assert second.model.weights_path == first.model.weights_path
    assert second.model.weights_sha256 == first.model.weights_sha256
    assert second.accuracy.base == first.accuracy.base
    assert second.method.key == "fpgm" and second.accuracy.finetuned is None


def test_interrupted_run_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
        stages.run(config.load(None, ["model.name=resnet20_cifar", f"out={out}"]), until="finetune", quiet=True)
    assert list(out.iterdir()) == []


def test_existing_run_folder_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    (out / "taken").mkdir(parents=True)
    (out / "taken" / "record.json").write_text("{}")
    with pytest.raises(PbkitError, match="already exists"):
        stages.run(config.load(None, ["model.name=resnet20_cifar", f"out={out}", "run_id=taken"]), quiet=True)
    assert (out / "taken" / "record.json").read_text() == "{}"


def test_bench_after_export_keeps_parity_and_replaces_only_its_points(pruned_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    before = record.read(run)
    rec = stages.bench_run(run, ["bench.backends=[torch-cpu]", "bench.quick=true"], quiet=True)

    def keyed(ps: list[record.Parity]) -> dict[tuple[str, str, str, int], record.Parity]:
        return {(p.backend, p.variant, p.precision, p.batch): p for p in ps}

    assert keyed(rec.parity).keys() == keyed(before.parity).keys()  # torch-cpu checked again, nothing lost
    assert [p for p in rec.parity if p.backend == "ort-cpu"] == [p for p in before.parity if p.backend == "ort-cpu"]
    assert {(p.backend, p.variant) for p in rec.latency} == {(p.backend, p.variant) for p in before.latency}
    assert list(rec.stages)[-1] == "bench"
    assert rec.bench is not None and rec.bench["quick"] is True


def test_bad_run_id(tmp_path: Path) -> None:
    with pytest.raises(PbkitError, match="run_id"):
        stages.run(config.load(None, [f"out={tmp_path}", "run_id=../escape"]), quiet=True)
