"""Where a run computes (``device``), mixed precision, channels-last training and DataLoader
settings. On this CPU machine: ``device=cpu`` (and ``auto``) keep the results the kit gave before
these settings existed, exactly; AMP and channels-last train; workers give the same batches. The
CUDA cases are marked ``gpu`` and skip here (benchmarks/gpu_suite.sh runs them on a GPU)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pbkit import stages
from pbkit.core import config, record
from tests.conftest import REPO, once

# resnet20_cifar on digits 16x16: a 2-epoch base, taylor (calibrated) to 2x, 1 epoch of finetuning
SETS = [
    "model.name=resnet20_cifar",
    "dataset.name=digits",
    "dataset.image_size=16",
    "base.epochs=2",
    "base.batch_size=64",
    "prune.method=taylor",
    "prune.iterative_steps=20",
    "finetune.epochs=1",
    "finetune.batch_size=64",
]
# what the kit gave for SETS (one torch thread) before the device, AMP and loader settings existed
# (commit d4dbb51^), per family of CPU kernels: a short training at lr 0.1 turns the last bit of a
# kernel's arithmetic into points of accuracy, so each machine matches the figures its own kernels
# gave. A machine with other kernels: run d4dbb51^ on it with SETS and add its figures here.
BEFORE = {
    "first CI machines (AMD EPYC)": {
        "acc": [37.111111111111114, 10.444444444444445, 55.111111111111114],
        "macs": 4996712,
        "params": 59554,
        "loss": 1.7955181947352714,
    },
    "AMD EPYC with AVX-512": {
        "acc": [76.66666666666667, 11.333333333333334, 93.33333333333333],
        "macs": 4982356,
        "params": 91174,
        "loss": 0.8006439222369977,
    },
    "Intel Xeon with AMX (d4dbb51^ run on it, 2026-12-05)": {
        "acc": [78.44444444444444, 19.11111111111111, 86.22222222222223],
        "macs": 5019546,
        "params": 84379,
        "loss": 0.8717994089691216,
    },
}
KEYS = ("acc", "macs", "params", "loss")


def _matches_before(facts: dict[str, Any]) -> str | None:
    """The name of the pre-device figures these facts equal exactly, or None."""
    got = {k: facts[k] for k in KEYS}
    return next((name for name, ref in BEFORE.items() if ref == got), None)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(folder: Path, *extra: str) -> record.Record:
    """A run under ``folder`` with its own bases (``folder/bases``): each trains its base itself."""
    cfg = config.load(None, [f"out={folder / 'runs'}", *SETS, *extra])
    return stages.run(cfg, until="finetune", quiet=True).record


def _facts(rec: record.Record) -> dict[str, object]:
    a = rec.accuracy
    return {
        "acc": [a.base, a.pruned, a.finetuned],
        "macs": rec.counts.macs_pruned,
        "params": rec.counts.params_pruned,
        "loss": (rec.finetune or {})["history"][-1]["loss"],
    }


def _fresh(folder: Path, *extra: str) -> dict[str, Any]:
    """A run in a new Python process with one torch thread: what it computed and where. Exact
    comparisons need a process whose history cannot matter (a short training at lr 0.1 turns the
    last bit of a kernel choice into points of accuracy)."""
    code = (
        "import json, sys, torch\ntorch.set_num_threads(1)\nfrom pathlib import Path\nfrom"
        " tests.test_device import _run, _facts\nrec = _run(Path(sys.argv[1]),"
        " *sys.argv[2:])\nprint(json.dumps({**_facts(rec), 'devices': [rec.stages[s].device for s"
        " in ('prune', 'finetune')], 'identity': rec.identity.hash, 'run_id': rec.run_id,"
        " 'images_per_s': rec.finetune['history'][-1]['images_per_s'], 'identity_finetune':"
        " rec.identity.fields['finetune']}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder), *extra],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    def build(folder: Path) -> dict[str, Any]:
        return {
            **_fresh(folder, "device=cpu"),
            "folder": str(folder),
        }  # its base is in folder/bases

    return once(tmp_path_factory, "device_cpu_run", build)  # type: ignore[no-any-return]


def test_device_cpu_keeps_the_results_exactly(cpu_run: dict[str, Any]) -> None:
    assert _matches_before(cpu_run) is not None, (
        f"{ {k: cpu_run[k] for k in KEYS} } matches no figures in BEFORE"
    )
    assert cpu_run["devices"] == ["cpu", "cpu"]
    assert cpu_run["images_per_s"] > 0  # throughput per epoch
    assert (
        "amp" not in cpu_run["identity_finetune"]
    )  # at the default, run ids made before AMP existed hold


def test_device_auto_is_the_cpu_here() -> None:
    from pbkit.core import device

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert device.resolve("auto") == device.resolve("cpu") == torch.device("cpu")


@pytest.mark.slow
def test_workers_give_the_same_batches(cpu_run: dict[str, Any], tmp_path: Path) -> None:
    rec = _fresh(tmp_path / "w", "device=cpu", "dataset.workers=2")
    assert {k: rec[k] for k in KEYS} == {k: cpu_run[k] for k in KEYS} and _matches_before(
        rec
    ) is not None
    assert rec["identity"] == cpu_run["identity"]  # worker processes do not change a result...


def test_persistent_workers_name_another_run(tmp_path: Path) -> None:
    from pbkit.stages import rundir

    def run_id(*extra: str) -> str:
        return rundir.plan(config.load(None, [f"out={tmp_path}", *SETS, *extra])).run_dir.name

    # ...persistent ones do (PyTorch draws one seed fewer per epoch): named apart; pinning does not
    assert (
        run_id("dataset.workers=2", "dataset.persistent_workers=true")
        != run_id()
        == run_id("dataset.workers=2", "dataset.pin_memory=true")
        == run_id("device=cpu")
    )


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_is_part_of_the_recipe(
    cpu_run: dict[str, Any], tmp_path: Path, amp: str
) -> None:
    # next to cpu_run, whose base it reuses (AMP is part of the finetuning recipe only): a run of
    # its own
    rec = _run(Path(cpu_run["folder"]), f"finetune.amp={amp}", "finetune.channels_last=true")
    assert (
        rec.model.weights_sha256
        == record.read(Path(cpu_run["folder"]) / "runs" / cpu_run["run_id"]).model.weights_sha256
    )
    ft = rec.finetune or {}
    assert ft["amp"] == amp and ft["channels_last"] is True
    assert (
        all(math.isfinite(row["loss"]) for row in ft["history"])
        and rec.accuracy.finetuned is not None
    )
    assert rec.identity.fields["finetune"]["amp"] == amp  # type: ignore[union-attr]
    assert rec.identity.hash != cpu_run["identity"]  # type: ignore[union-attr]
    from pbkit.report import setups

    assert setups.from_record(rec)["ft_recipe"]["amp"] == amp
    old = rec.model_copy(update={"finetune": {k: v for k, v in ft.items() if k != "amp"}})
    assert (
        setups.from_record(old)["ft_recipe"]["amp"] == "off"
    )  # records made before AMP trained without it


def test_a_device_that_is_not_there_is_one_line(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    r = pbkit(
        "prune",
        "--model",
        "resnet20_cifar",
        "--method",
        "l1",
        "--speedup",
        "2",
        "--set",
        "device=cuda",
        "--set",
        f"out={tmp_path}",
    )
    assert (
        r.code == 2
        and "device cuda: no CUDA device is visible" in r.err
        and "Traceback" not in r.err
    )
    assert not any(tmp_path.iterdir())
    r = pbkit(
        "prune",
        "--model",
        "resnet20_cifar",
        "--method",
        "l1",
        "--speedup",
        "2",
        "--set",
        "device=tpu",
        "--set",
        f"out={tmp_path}",
    )
    assert r.code == 2 and "device must be auto, cpu, cuda or cuda:N" in r.err


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_every_stage_computes_on_the_gpu(tmp_path: Path, amp: str) -> None:
    rec = _run(
        tmp_path,
        "device=cuda",
        f"finetune.amp={amp}",
        "finetune.channels_last=true",
        "dataset.pin_memory=true",
        "dataset.workers=2",
    )
    assert rec.stages["prune"].device.startswith("cuda:0") and rec.stages[
        "finetune"
    ].device.startswith("cuda:0")
    assert (
        rec.method.calibration is not None and rec.method.achieved_speedup >= 2.0
    )  # taylor calibrated on the GPU
    assert rec.accuracy.finetuned is not None and (rec.finetune or {})["amp"] == amp
