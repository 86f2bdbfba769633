"""torchvision's Swin Transformers prune: the window attention reads its widths from its weights
(the dense outputs unchanged), the dependency graph sees window attention and patch merging as
single layers with pruners of their own, and the pruned model reloads and exports with parity."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torchvision

from pbkit import stages
from pbkit.core import config
from pbkit.models import checkpoint, counts, registry, sources, swin
from pbkit.pruning.repairs import held
from tests.conftest import output_in_fresh_process


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_the_prunable_swin_computes_what_torchvision_computes(name: str) -> None:
    torch.manual_seed(0)
    original = getattr(torchvision.models, name)().eval()
    prunable = swin.make_prunable(copy.deepcopy(original))
    assert all(
        type(m) in swin.ATTENTION
        for m in prunable.modules()
        if isinstance(m, torchvision.models.swin_transformer.ShiftedWindowAttention)
    )
    x = torch.randn(
        2, 3, 60, 76
    )  # not a multiple of the windows: padding, and a shift in the first stages
    with torch.no_grad():
        assert torch.equal(prunable(x), original(x))
    assert counts.count_macs(prunable, 64) == counts.count_macs(original, 64)
    built = sources.build(sources.resolve(f"tv:{name}", input_size=64))
    assert (
        sum(isinstance(m, swin.ATTENTION) for m in built.modules()) == 12
        and registry.known_failure(f"tv:{name}") is None
    )


def test_timm_swin_v2_with_widths_from_its_weights_computes_what_timm_computes() -> None:
    import timm

    torch.manual_seed(0)
    original = timm.create_model("swinv2_tiny_window8_256", depths=(1, 1, 2, 1), img_size=64).eval()
    prunable = swin.make_timm_prunable(copy.deepcopy(original))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(prunable(x), original(x))


# (model, input size, kwargs, scope): torchvision's Swin-T in every scope; timm's Swin v1 and v2,
# shallow
CASES = [
    ("tv:swin_t", 32, "{}", "local"),
    ("tv:swin_t", 32, "{}", "global"),
    ("tv:swin_t", 32, "{}", "protected"),
    ("timm:swin_tiny_patch4_window7_224", 64, "{depths: [1, 1, 2, 1]}", "protected"),
    ("timm:swinv2_tiny_window8_256", 64, "{depths: [1, 1, 2, 1]}", "protected"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "size", "kwargs", "scope"), CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES]
)
def test_swin_prunes_reloads_and_exports_with_parity(
    name: str, size: int, kwargs: str, scope: str, tmp_path: Path
) -> None:
    until = "export" if scope == "protected" else "prune"  # (export is the same in every scope)
    cfg = config.load(
        None,
        [
            f"model.name={name}",
            f"model.input_size={size}",
            f"model.kwargs={kwargs}",
            "prune.method=l2",
            "prune.speedup=1.5",
            f"prune.scope={scope}",
            "prune.iterative_steps=10",
            f"out={tmp_path / 'runs'}",
        ],
    )
    out = stages.run(cfg, until=until, quiet=True)
    rec = out.record
    assert rec.method.achieved_speedup >= 1.5 and rec.counts.params_pruned < rec.counts.params_base
    model, _, _ = checkpoint.load_model(out.run_dir / "pruned.pt")
    dense, _, _ = checkpoint.load_model(out.run_dir / "dense.pt")
    windowed = held.attention_classes()
    narrower = [
        a.qkv.in_features < d.qkv.in_features
        for a, d in zip(
            [m for m in model.modules() if isinstance(m, windowed)],
            [m for m in dense.modules() if isinstance(m, windowed)],
            strict=True,
        )
    ]
    assert narrower and any(narrower)  # the residual stream entering window attention was pruned
    x = counts.example_input(size, batch=2)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1000)
    assert torch.allclose(
        output_in_fresh_process(out.run_dir / "pruned.pt", x, tmp_path), y, atol=1e-5
    )
    if until == "export":
        assert rec.parity and all(p.passed for p in rec.parity)
