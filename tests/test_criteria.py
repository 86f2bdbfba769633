"""Known-answer tests: small constructed cases where the right ranking is known and a wrong
implementation (or a plain magnitude criterion) gives another answer."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch_pruning as tp
from torch import nn

from pbkit.pruning import Calibration, criteria, methods
from pbkit.pruning.criteria import lasso_entry_order, thinet_removal_order
from pbkit.tasks import get as get_task


class Tiny(nn.Module):
    """conv1 (the pruned group: its out channels) -> bn -> relu -> conv2 -> pool -> fc."""

    def __init__(
        self,
        c_in: int = 3,
        c1: int = 6,
        c2: int = 8,
        classes: int = 4,
        bn: bool = True,
        relu: bool = True,
        k1: int = 3,
        k2: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c1, k1, padding=k1 // 2, bias=False)
        self.bn = nn.BatchNorm2d(c1) if bn else nn.Identity()
        self.act = nn.ReLU() if relu else nn.Identity()
        self.conv2 = nn.Conv2d(c1, c2, k2, padding=k2 // 2, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.conv2(self.act(self.bn(self.conv1(x))))), 1))


def _batches(n: int = 2, bs: int = 16, size: int = 8, classes: int = 4, seed: int = 0) -> list[Any]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(bs, 3, size, size, generator=g), torch.randint(0, classes, (bs,), generator=g))
        for _ in range(n)
    ]


def _calib(batches: list[Any]) -> Calibration:
    return get_task("classify").calibration_of(batches)  # type: ignore[attr-defined,no-any-return]


def _scores(model: nn.Module, key: str, batches: list[Any] | None = None) -> torch.Tensor:
    """Scores of conv1's output channels (the group rooted at conv1) under method ``key``."""
    m = methods.get(key)
    imp = m.importance({"num_classes": 4, "seed": 0, "reg": 1e-3, "delta_reg": 1e-4})
    pruner = tp.pruner.MetaPruner(
        model, torch.randn(1, 3, 8, 8), importance=imp, pruning_ratio=0.5, ignored_layers=[model.fc]
    )
    if m.collect is not None:
        m.collect(imp, model, pruner, _calib(batches or _batches()))
    group = pruner.DG.get_pruning_group(
        model.conv1, tp.prune_conv_out_channels, idxs=list(range(model.conv1.out_channels))
    )
    return imp(group)


def _make_dead_but_heavy(model: Tiny, j: int) -> None:
    """Channel j of conv1 has the LARGEST filter but nothing downstream reads it."""
    with torch.no_grad():
        model.conv1.weight[j].mul_(20.0)
        model.conv2.weight[:, j] = 0.0


# ---------------------------------------------------------------------------------------- data-free


@pytest.mark.parametrize("key", ["l1", "l2", "lamp"])
def test_magnitude_criteria_drop_a_zero_channel_first(key: str) -> None:
    model = Tiny()
    with torch.no_grad():
        model.conv1.weight[2] = 0.0
        model.bn.weight[2] = 0.0
        model.conv2.weight[:, 2] = 0.0
    s = _scores(model, key)
    assert int(s.argmin()) == 2


def test_fpgm_drops_the_filter_at_the_geometric_median() -> None:
    """torch-pruning's FPGM (the study's) measures distances between |w|^2 vectors: build the
    points there. Four filters symmetric around a centre, plus the centre: the centre has the
    smallest sum of distances, so FPGM drops it first, though its norm is not the smallest."""
    torch.manual_seed(0)
    model = Tiny(c1=5)
    with torch.no_grad():
        shape = model.conv1.weight[0].shape
        center = torch.empty(shape).uniform_(1.0, 2.0)
        offset = torch.empty(shape).uniform_(-0.5, 0.5)
        points = [
            center + offset,
            center - offset,
            center + offset.roll(1, 0),
            center - offset.roll(1, 0),
            center,
        ]
        for i, p in enumerate(points):
            model.conv1.weight[i] = p.sqrt()
        model.conv2.weight[:] = model.conv2.weight[
            :, :1
        ].clone()  # consumers see every channel alike
    assert int(_scores(model, "fpgm").argmin()) == 4
    norms = model.conv1.weight.flatten(1).norm(dim=1)
    assert int(norms.argmin()) != 4


def test_bnscale_drops_a_zero_gamma() -> None:
    model = Tiny()
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 1.0)
        model.bn.weight[3] = 0.0
        model.conv1.weight[3].mul_(50)  # magnitude alone would keep it
    assert int(_scores(model, "bnscale").argmin()) == 3


# ------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("key", ["taylor", "hessian", "obdc"])
def test_gradient_criteria_drop_a_channel_nothing_reads(key: str) -> None:
    torch.manual_seed(0)
    model = Tiny()
    _make_dead_but_heavy(model, 1)
    assert int(_scores(model, "l2").argmin()) != 1  # magnitude is fooled by the large filter
    assert int(_scores(model, key).argmin()) == 1


def test_hessian_averages_squared_per_sample_gradients() -> None:
    """E[g^2] over samples, not the square of the mean gradient nor the last sample's."""
    torch.manual_seed(0)
    model = Tiny().eval()
    batches = _batches(n=1, bs=6)
    imp = criteria.HessianImportance(chunk=4)
    pruner = tp.pruner.MetaPruner(
        model, torch.randn(1, 3, 8, 8), importance=imp, ignored_layers=[model.fc]
    )
    imp.collect(model, pruner, _calib(batches))
    x, y = batches[0]
    expected = torch.zeros_like(model.conv1.weight)
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        expected += model.conv1.weight.grad.pow(2)
    got = imp._accu_grad[model.conv1.weight] / imp._counter[model.conv1.weight]
    assert torch.allclose(got, expected / len(x), rtol=1e-4, atol=1e-10)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert not torch.allclose(got, model.conv1.weight.grad.pow(2), rtol=1e-2)


# ---------------------------------------------------------------------------------- feature maps


def _ls_error(z: torch.Tensor, drop: list[int]) -> float:
    """Relative error of refitting y = z @ 1 without the dropped columns (least squares)."""
    y = z.sum(1)
    keep = [c for c in range(z.shape[1]) if c not in drop]
    coef = torch.linalg.lstsq(z[:, keep], y.unsqueeze(1)).solution
    return float((z[:, keep] @ coef).squeeze(1).sub(y).norm() / y.norm())


def _z_with_linear_combination(m: int = 400, c: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, c, generator=g, dtype=torch.float64)
    z[:, 0] *= 10.0  # large but independent: magnitude would keep it, and it is needed
    z[:, 5] = 4.0 * (z[:, 1] + z[:, 2])  # the largest column, and redundant
    return z


@pytest.mark.parametrize("order", [thinet_removal_order, lasso_entry_order])
def test_thinet_and_cp_drop_a_linear_combination_with_no_reconstruction_error(order: Any) -> None:
    z = _z_with_linear_combination()
    imp = order(z)
    first = int(imp.argmin())
    assert first in (1, 2, 5)
    assert _ls_error(z, [first]) < 1e-6
    # any other choice costs real error: the criterion found the only free removal
    assert min(_ls_error(z, [c]) for c in (0, 3, 4)) > 0.05


def test_thinet_keeps_one_of_two_duplicates() -> None:
    z = _z_with_linear_combination()
    z[:, 4] = z[:, 3]  # an exact duplicate pair
    imp = thinet_removal_order(z)
    order = imp.argsort().tolist()
    # two free removals exist (one of {3, 4} and one of {1, 2, 5}); they come first
    assert _ls_error(z, order[:2]) < 1e-6
    assert not {3, 4} <= set(order[:2])


def test_thinet_and_cp_on_a_real_model_find_the_redundant_channel() -> None:
    torch.manual_seed(0)
    # conv1 -> 1x1 conv2 (one output) is linear, so a channel that is a combination of two others
    # contributes a combination of their contributions: removable with no reconstruction error
    model = Tiny(c1=5, c2=1, k2=1, bn=False, relu=False).eval()
    with torch.no_grad():
        model.conv1.weight[4] = 3.0 * (model.conv1.weight[0] + model.conv1.weight[1])
        model.conv1.weight[2].mul_(0.2)  # smallest norm, yet needed
    for key in ("thinet", "cp"):
        s = _scores(model, key)
        assert int(s.argmin()) in (0, 1, 4), key
    assert int(_scores(model, "l2").argmin()) == 2  # magnitude drops the small, needed one


def test_hrank_orders_channels_by_feature_map_rank() -> None:
    """Inputs of rank-1 planes; 1x1 filters mixing 1, 2 or 3 planes give maps of rank 1, 2, 3."""
    model = Tiny(c1=4, k1=1, bn=False, relu=False).eval()
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.weight[0, 0] = 100.0  # rank 1, largest weights
        model.conv1.weight[1, :2] = torch.tensor([0.3, 0.2]).view(2, 1, 1)  # rank 2
        model.conv1.weight[2, :3] = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)  # rank 3
        # channel 3 stays zero: rank 0
    g = torch.Generator().manual_seed(0)
    x = torch.einsum(
        "ncu,ncv->ncuv", torch.randn(8, 3, 8, generator=g), torch.randn(8, 3, 8, generator=g)
    )
    s = _scores(model, "hrank", [(x, torch.zeros(8, dtype=torch.long))])
    assert s.argsort().tolist() == [3, 0, 1, 2]


# ---------------------------------------------------------------------------------- regularizers


def _norms(model: Tiny) -> dict[str, torch.Tensor]:
    return {
        "gamma": model.bn.weight.detach().abs().clone(),
        "group": (
            (
                model.conv1.weight.detach().flatten(1).pow(2).sum(1)
                + model.conv2.weight.detach().transpose(0, 1).flatten(1).pow(2).sum(1)
            ).sqrt()
        ),
    }


@pytest.mark.parametrize(
    "key,target",
    [
        ("slim", "gamma"),
        ("group_slim", "gamma"),
        ("l2_lasso", "group"),
        ("group_norm", "group"),
        ("growing_reg", "group"),
    ],
)
def test_regularizers_shrink_the_norms_they_target(key: str, target: str) -> None:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 1.5)
    m = methods.get(key)
    ctx = {"num_classes": 4, "seed": 0, "reg": 0.05, "delta_reg": 0.05}
    cls, extra = m.pruner(ctx)  # type: ignore[misc]
    pruner = cls(
        model,
        torch.randn(1, 3, 8, 8),
        importance=m.importance(ctx),
        ignored_layers=[model.fc],
        **extra,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = _norms(model)[target]
    for _ in range(5):
        opt.zero_grad()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # the regularizer's gradient alone
        pruner.regularize(model)
        opt.step()
        if m.per_epoch:
            getattr(pruner, m.per_epoch)()
    after = _norms(model)[target]
    assert (after < before - 1e-6).all(), (before, after)


def test_group_lasso_gradient_is_reg_times_w_over_group_norm() -> None:
    from pbkit.pruning.regularizers import GroupLassoPruner

    torch.manual_seed(0)
    model = Tiny()
    pruner = GroupLassoPruner(
        model,
        torch.randn(1, 3, 8, 8),
        importance=tp.importance.MagnitudeImportance(p=2),
        ignored_layers=[model.fc],
        reg=0.1,
    )
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.regularize(model)
    with torch.no_grad():
        norm = (
            model.conv1.weight.flatten(1).pow(2).sum(1)
            + model.bn.weight.pow(2)
            + model.conv2.weight.transpose(0, 1).flatten(1).pow(2).sum(1)
        ).sqrt()  # conv1's group
        assert torch.allclose(
            model.conv1.weight.grad, 0.1 * model.conv1.weight / norm.view(-1, 1, 1, 1), rtol=1e-4
        )
        assert torch.allclose(model.bn.weight.grad, 0.1 * model.bn.weight / norm, rtol=1e-4)


def test_growing_reg_penalty_grows_for_weak_channels() -> None:
    torch.manual_seed(0)
    model = Tiny()
    m = methods.get("growing_reg")
    cls, extra = m.pruner({"num_classes": 4, "seed": 0, "reg": 1e-3, "delta_reg": 1e-2})  # type: ignore[misc]
    pruner = cls(
        model,
        torch.randn(1, 3, 8, 8),
        importance=m.importance({}),
        ignored_layers=[model.fc],
        **extra,
    )
    group = next(g for g in pruner._groups if g[0].dep.target.module is model.conv1)
    with torch.no_grad():
        model.conv1.weight[0].mul_(0.01)  # the weakest channel
    pruner.update_reg()
    reg = pruner.group_reg[group]
    assert int(reg.argmax()) == 0 and float(reg.min()) >= 1e-3
