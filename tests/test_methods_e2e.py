"""Every method end to end through the pipeline: to 2x on a small CNN in each scope, and every
ViT-applicable method on a small ViT. (YOLOv8 runs arrive with the YOLOv8 model family.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from pbkit import stages
from pbkit.core import config, record
from pbkit.core.errors import PbkitError
from pbkit.pruning import methods

FAST = [
    "prune.speedup=2",
    "prune.iterative_steps=40",
    "prune.calibration.dataset=synthetic",
    "prune.calibration.batches=2",
    "prune.calibration.batch_size=8",
    "sparsify.epochs=1",
    "sparsify.batch_size=64",
]
CNN = ["model.name=resnet20_cifar", "model.input_size=16"]
VIT = [
    "model.name=timm:vit_small_patch16_224",
    "model.input_size=32",
    "model.num_classes=10",
    "model.kwargs={depth: 2, patch_size: 8, embed_dim: 96, num_heads: 3}",
]


def _run(tmp_path: Path, *sets: str) -> record.Record:
    cfg = config.load(None, [f"out={tmp_path / 'runs'}", *FAST, *sets])
    return stages.run(cfg, until="finetune", quiet=True).record


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["local", "global", "protected"])
@pytest.mark.parametrize("key", sorted(methods.METHODS))
def test_every_method_reaches_2x_on_a_cnn(tmp_path: Path, key: str, scope: str) -> None:
    extra = []
    if key == "bnscale":  # a random init has every BatchNorm gamma at 1: train briefly first
        extra = ["dataset.name=synthetic", "base.epochs=1", "base.batch_size=64"]
    rec = _run(tmp_path, *CNN, f"prune.method={key}", f"prune.scope={scope}", *extra)
    m = rec.method
    assert m.key == key and m.scope == scope and m.achieved_speedup >= 2.0
    spec = methods.get(key)
    if spec.collect is not None:
        assert m.calibration == {
            "dataset": "synthetic",
            "batches": 2,
            "batch_size": 8,
            "seed": 0,
            "samples": 16,
        }
    if spec.stage == "sparsify":
        assert m.reg_time_s is not None and m.reg_time_s > 0 and m.sparsify is not None
        assert m.sparsify["weight_decay"] == 0.0 and m.sparsify["reg"] == 5e-4
        assert m.regularizer == spec.regularizer
    else:
        assert m.reg_time_s is None


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["local", "global", "protected"])
@pytest.mark.parametrize(
    "key", sorted(k for k, m in methods.METHODS.items() if "vit" in m.families)
)
def test_every_vit_method_reaches_2x_on_a_small_vit(tmp_path: Path, key: str, scope: str) -> None:
    rec = _run(tmp_path, *VIT, f"prune.method={key}", f"prune.scope={scope}")
    assert (
        rec.method.achieved_speedup >= 2.0
        and rec.model.family == "vit"
        and rec.method.scope == scope
    )


def test_vit_applicability_follows_the_study() -> None:
    vit = {k for k, m in methods.METHODS.items() if "vit" in m.families}
    assert vit == {
        "l1",
        "l2",
        "lamp",
        "fpgm",
        "random",
        "taylor",
        "hessian",
        "thinet",
        "cp",
        "l2_lasso",
        "group_norm",
        "growing_reg",
    }
    assert {k for k, m in methods.METHODS.items() if "yolo" not in m.families} == {"obdc"}
    stages = [m.stage for m in methods.METHODS.values()]
    # the study's 16 methods: 12 criteria and 4 regularizers, GroupLASSO used in two combinations
    assert (stages.count("prune"), stages.count("sparsify")) == (12, 5)
    regs = {m.regularizer.split(" ")[0] for m in methods.METHODS.values() if m.regularizer}
    assert regs == {"BNScale", "GroupLASSO", "GroupNorm", "GrowingReg"}


@pytest.mark.parametrize("key", ["obdc", "hrank", "bnscale", "slim"])
def test_methods_refuse_vits_clearly(tmp_path: Path, key: str) -> None:
    with pytest.raises(PbkitError, match="does not apply to vit"):
        _run(tmp_path, *VIT, f"prune.method={key}")


@pytest.mark.parametrize(
    "key,needs",
    [("taylor", "calibration data"), ("thinet", "calibration data"), ("slim", "regularizer")],
)
def test_data_driven_methods_without_data_are_a_clear_error(
    tmp_path: Path, key: str, needs: str
) -> None:
    cfg = config.load(None, [f"out={tmp_path / 'runs'}", *CNN, f"prune.method={key}"])
    with pytest.raises(PbkitError, match=needs):
        stages.run(cfg, until="finetune", quiet=True)


@pytest.mark.parametrize("key", ["taylor", "thinet", "hrank"])
def test_same_calibration_gives_the_same_architecture(tmp_path: Path, key: str) -> None:
    import torch

    from pbkit.models import checkpoint

    def widths(run: str, seed: int = 0) -> list[int]:
        rec = _run(tmp_path / run, *CNN, f"prune.method={key}", f"prune.calibration.seed={seed}")
        model, _, _ = checkpoint.load_model(tmp_path / run / "runs" / rec.run_id / "pruned.pt")
        return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

    assert widths("a") == widths("b")
