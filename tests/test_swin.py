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
from pbkit.models import checkpoint, counts, registry, swin
from tests.conftest import output_in_fresh_process


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_the_prunable_swin_computes_what_torchvision_computes(name: str) -> None:
    torch.manual_seed(0)
    original = getattr(torchvision.models, name)().eval()
    prunable = swin.make_prunable(copy.deepcopy(original))
    assert all(type(m) in swin.ATTENTION for m in prunable.modules() if isinstance(m, torchvision.models.swin_transformer.ShiftedWindowAttention))
    x = torch.randn(2, 3, 60, 76)  # not a multiple of the windows: padding, and a shift in the first stages
    with torch.no_grad():
        assert torch.equal(prunable(x), original(x))
    assert counts.count_macs(prunable, 64) == counts.count_macs(original, 64)
    built = registry.build(registry.resolve(f"tv:{name}", input_size=64))
    assert sum(isinstance(m, swin.ATTENTION) for m in built.modules()) == 12 and registry.known_failure(f"tv:{name}") is None


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["local", "global", "protected"])
def test_swin_t_prunes_in_every_scope_reloads_and_exports_with_parity(scope: str, tmp_path: Path) -> None:
    until = "export" if scope == "protected" else "prune"  # (export is the same in every scope)
    cfg = config.load(None, ["model.name=tv:swin_t", "model.input_size=32", "prune.method=l2", "prune.speedup=1.5",
                             f"prune.scope={scope}", "prune.iterative_steps=20", f"out={tmp_path / 'runs'}"])
    out = stages.run(cfg, until=until, quiet=True)
    rec = out.record
    assert rec.method.achieved_speedup >= 1.5 and rec.counts.params_pruned < rec.counts.params_base
    model, _, _ = checkpoint.load_model(out.run_dir / "pruned.pt")
    blocks = [m for m in model.modules() if isinstance(m, swin.ATTENTION)]
    assert any(b.qkv.in_features < 96 * 2 ** i for i, b in zip([0, 0, 1, 1, *[2] * 6, 3, 3], blocks, strict=True))
    x = counts.example_input(32, batch=2)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1000)
    assert torch.allclose(output_in_fresh_process(out.run_dir / "pruned.pt", x, tmp_path), y, atol=1e-5)
    if until == "export":
        assert rec.parity and all(p.passed for p in rec.parity)
