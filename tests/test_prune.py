from __future__ import annotations

import pytest
import torch
from torch import nn

from pbkit import models
from pbkit.core.errors import PbkitError
from pbkit.models import counts
from pbkit.pruning import methods
from tests.conftest import prune_model


def _r20() -> tuple[nn.Module, models.ModelSpec]:
    spec = models.resolve("resnet20_cifar", num_classes=10)
    return models.build(spec), spec


def _prune(model: nn.Module, spec: models.ModelSpec, **kw: object):  # type: ignore[no-untyped-def]
    return prune_model(model, spec, **kw)


@pytest.mark.parametrize("scope", ["local", "global", "protected"])
def test_each_scope_reaches_the_target_and_keeps_the_head(scope: str) -> None:
    model, spec = _r20()
    head_out = model.fc.out_features
    res = _prune(model, spec, scope=scope)
    assert res.achieved_speedup >= 2.0
    assert res.macs_base / res.macs_pruned == pytest.approx(res.achieved_speedup)
    assert counts.count_macs(model, 32) == res.macs_pruned
    assert model.fc.out_features == head_out
    assert res.ignored_layers == ["fc"]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_local_scope_prunes_every_layer_alike_and_global_does_not() -> None:
    def kept(scope: str) -> list[float]:
        model, spec = _r20()
        before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        _prune(model, spec, scope=scope, speedup=3.0)
        return [
            m.out_channels / before[n] for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
        ]

    local, glob = kept("local"), kept("global")
    assert max(local) - min(local) < 0.15
    assert max(glob) - min(glob) > max(local) - min(local)


def _ramped_r20() -> tuple[nn.Module, models.ModelSpec, nn.Conv2d]:
    """resnet20 where one 64-channel group has magnitudes spread over four decades: global
    pruning eats that group channel by channel, past any floor."""
    model, spec = _r20()
    block = model.layers[2][0]
    scale = torch.logspace(-4, 0, block.conv1.out_channels)
    with torch.no_grad():
        block.conv1.weight.mul_(scale.view(-1, 1, 1, 1))
        block.bn1.weight.mul_(scale)
        block.conv2.weight.mul_(scale.view(1, -1, 1, 1))
    return model, spec, block.conv1


@pytest.mark.parametrize("scope,low,high", [("protected", 0.09, 0.2), ("global", 0.0, 0.05)])
def test_protected_scope_keeps_a_ten_percent_floor_global_does_not(
    scope: str, low: float, high: float
) -> None:
    model, spec, conv = _ramped_r20()
    _prune(model, spec, scope=scope, speedup=2.0)
    kept = conv.out_channels / 64
    assert low <= kept <= high


def test_round_to_aligns_channels() -> None:
    model, spec = _r20()
    _prune(model, spec, round_to=8)
    widths = [m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths)


def test_random_criterion_is_seeded() -> None:
    def arch(seed: int) -> list[int]:
        model, spec = _r20()
        _prune(model, spec, method="random", seed=seed)
        return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]

    assert arch(3) == arch(3)
    assert arch(3) != arch(4)


def test_unreachable_target_is_a_clear_error() -> None:
    model, spec = _r20()
    with pytest.raises(PbkitError, match="unreachable"):
        _prune(model, spec, speedup=500.0, iterative_steps=20)


def test_speedup_must_exceed_one() -> None:
    model, spec = _r20()
    with pytest.raises(PbkitError, match="> 1"):
        _prune(model, spec, speedup=1.0)


def test_model_without_prunable_groups_is_a_clear_error() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    spec = models.ModelSpec("flat", num_classes=10, input_size=8, family="cnn", source="test")
    with pytest.raises(PbkitError, match="no prunable"):
        prune_model(model, spec)


def test_vit_attention_attributes_follow_the_pruned_qkv() -> None:
    spec = models.resolve(
        "timm:vit_small_patch16_224", input_size=64, num_classes=10, kwargs={"depth": 2}
    )
    model = models.build(spec).eval()
    res = prune_model(model, spec, "l2", scope="local", iterative_steps=100)
    assert res.achieved_speedup >= 2.0
    for blk in model.blocks:
        a = blk.attn
        assert a.num_heads * a.head_dim == a.qkv.out_features // 3 == a.attn_dim
        assert a.proj.in_features == a.attn_dim
    assert model.head.out_features == 10
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_bnscale_is_refused_for_vits() -> None:
    with pytest.raises(PbkitError, match="does not apply to vit"):
        methods.get("bnscale", "vit")


def test_bnscale_refuses_an_untrained_model_up_front() -> None:
    model, spec = _r20()  # fresh BatchNorm: every gamma is 1.0
    with pytest.raises(PbkitError, match="every gamma in this model is 1"):
        _prune(model, spec, method="bnscale")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
    assert _prune(model, spec, method="bnscale").achieved_speedup >= 2.0
