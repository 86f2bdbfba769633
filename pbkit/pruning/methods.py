"""Pruning methods by key: the 16 of the PruningBench study (12 criteria, 4 regularizers in 5
combinations). Each method is an Importance (scores a channel group) that torch-pruning's Pruner
uses to decide and remove; data-driven criteria add a ``collect`` step run on pinned calibration
batches before every pruning step; sparsifying methods add a Pruner whose ``regularize`` runs
during sparse training. New methods register here; see README "Extending pbkit".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pbkit.core.errors import PbkitError, choices_error
from pbkit.pruning.calibration import Calibration

FAMILIES = ("cnn", "vit", "yolo")
SCOPES = {
    "local": "every group loses the same fraction",
    "global": "one threshold over normalised scores of all groups (layers may shrink to 1 channel)",
    "protected": "global with a floor that keeps at least 10% of every group (the study's default)",
}

Ctx = dict[str, Any]  # num_classes, seed, reg, delta_reg
GRADIENT_DATA = ("gradients", "per-sample gradients", "activations + gradients")


@dataclass(frozen=True)
class Method:
    key: str
    name: str
    paper: str
    stage: str  # "prune" (criterion only) or "sparsify" (regularised training, then a criterion)
    # what it needs: "none", "gradients", "per-sample gradients", "feature maps", "training data"
    data: str
    families: tuple[str, ...]
    importance: Callable[[Ctx], Any] = field(repr=False)
    # data-driven criteria: (importance, model, pruner, calibration) -> None, before every pruning
    # step
    collect: Callable[[Any, nn.Module, Any, Calibration], None] | None = field(
        default=None, repr=False
    )
    # sparsifying methods: (ctx) -> (Pruner class, extra kwargs); the Pruner regularizes
    pruner: Callable[[Ctx], tuple[type, dict[str, Any]]] | None = field(default=None, repr=False)
    regularizer: str | None = None
    per_epoch: str | None = None  # a Pruner method called after every sparse-training epoch
    # optional check of the model before pruning: returns why the criterion cannot rank it
    precheck: Callable[[nn.Module], str | None] | None = field(default=None, repr=False)

    def pruner_class(self, ctx: Ctx) -> tuple[type, dict[str, Any]]:
        """The Pruner that applies this method, with its extra arguments: the method's own
        (regularizing) Pruner, else torch-pruning's MetaPruner."""
        return self.pruner(ctx) if self.pruner is not None else (_tp().pruner.MetaPruner, {})

    @property
    def needs_data(self) -> bool:
        return self.data != "none"

    @property
    def needs_loss(self) -> bool:
        """Whether its criterion differentiates the task's loss (needs the task's labels)."""
        return self.data in GRADIENT_DATA

    def describe(self) -> dict[str, Any]:
        return dict(
            key=self.key,
            name=self.name,
            paper=self.paper,
            stage=self.stage,
            data=self.data,
            regularizer=self.regularizer,
            families=list(self.families),
        )


def _tp() -> Any:
    import torch_pruning as tp

    return tp


def _crit() -> Any:
    from pbkit.pruning import criteria

    return criteria


def _bn_gammas_differ(model: nn.Module) -> str | None:
    gammas = [
        m.weight.detach().flatten()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
    ]
    if not gammas:
        return (
            "this criterion ranks channels by BatchNorm gamma, and the model has no BatchNorm layer"
        )
    values = torch.cat(gammas)
    if bool((values == values[0]).all()):
        return (
            "bnscale ranks channels by BatchNorm gamma, and every gamma in this model is"
            f" {float(values[0]):g} (untrained?): give trained weights (--checkpoint FILE, or a"
            " dataset with base.epochs > 0)"
        )
    return None


def _group_slim_pruner(ctx: Ctx) -> tuple[type, dict[str, Any]]:
    from pbkit.pruning.regularizers import GroupSlimPruner

    return GroupSlimPruner, {"reg": ctx["reg"]}


def _group_lasso_pruner(ctx: Ctx) -> tuple[type, dict[str, Any]]:
    from pbkit.pruning.regularizers import GroupLassoPruner

    return GroupLassoPruner, {"reg": ctx["reg"]}


def _feature_maps(imp: Any, model: nn.Module, pruner: Any, calib: Calibration) -> None:
    imp.collect(model, pruner, calib.batches)  # feature-map criteria need the images only


_METHODS = [
    # pruning-stage criteria, data-free
    Method(
        "l1",
        "MagnitudeL1",
        "Li et al., ICLR 2017",
        "prune",
        "none",
        FAMILIES,
        lambda ctx: _tp().importance.MagnitudeImportance(p=1),
    ),
    Method(
        "l2",
        "MagnitudeL2",
        "Li et al., ICLR 2017",
        "prune",
        "none",
        FAMILIES,
        lambda ctx: _tp().importance.MagnitudeImportance(p=2),
    ),
    Method(
        "lamp",
        "LAMP",
        "Lee et al., ICLR 2021",
        "prune",
        "none",
        FAMILIES,
        lambda ctx: _tp().importance.LAMPImportance(p=2),
    ),
    Method(
        "fpgm",
        "FPGM",
        "He et al., CVPR 2019",
        "prune",
        "none",
        FAMILIES,
        lambda ctx: _tp().importance.FPGMImportance(p=2),
    ),
    Method(
        "bnscale",
        "BNScale",
        "Liu et al., ICCV 2017 (criterion)",
        "prune",
        "none",
        ("cnn", "yolo"),
        lambda ctx: _tp().importance.BNScaleImportance(),
        precheck=_bn_gammas_differ,
    ),
    Method(
        "random",
        "Random",
        "baseline",
        "prune",
        "none",
        FAMILIES,
        lambda ctx: _tp().importance.RandomImportance(),
    ),
    # pruning-stage criteria, data-driven
    Method(
        "taylor",
        "Taylor",
        "Molchanov et al., CVPR 2019",
        "prune",
        "gradients",
        FAMILIES,
        lambda ctx: _tp().importance.GroupTaylorImportance(),
        collect=lambda imp, m, p, c: _crit().collect_taylor(imp, m, p, c),
    ),
    Method(
        "hessian",
        "OBD-Hessian",
        "LeCun et al., NeurIPS 1989",
        "prune",
        "per-sample gradients",
        FAMILIES,
        lambda ctx: _crit().HessianImportance(),
        collect=lambda imp, m, p, c: imp.collect(m, p, c),
    ),
    Method(
        "obdc",
        "OBD-C",
        "Wang et al., ICML 2019 (EigenDamage)",
        "prune",
        "activations + gradients",
        ("cnn",),
        lambda ctx: _tp().importance.OBDCImportance(num_classes=ctx["num_classes"]),
        collect=lambda imp, m, p, c: _crit().collect_obdc(imp, m, p, c.batches),
        precheck=lambda m: _crit().obdc_precheck(m),
    ),
    Method(
        "thinet",
        "ThiNet",
        "Luo et al., ICCV 2017",
        "prune",
        "feature maps",
        FAMILIES,
        lambda ctx: _crit().ThiNetImportance(seed=ctx["seed"]),
        collect=_feature_maps,
    ),
    Method(
        "cp",
        "CP (channel pruning)",
        "He et al., ICCV 2017",
        "prune",
        "feature maps",
        FAMILIES,
        lambda ctx: _crit().CPImportance(seed=ctx["seed"]),
        collect=_feature_maps,
    ),
    Method(
        "hrank",
        "HRank",
        "Lin et al., CVPR 2020",
        "prune",
        "feature maps",
        ("cnn", "yolo"),
        lambda ctx: _crit().HRankImportance(),
        collect=_feature_maps,
    ),
    # sparsifying-stage: regularizer during sparse training, then the paired criterion
    Method(
        "slim",
        "Network Slimming",
        "Liu et al., ICCV 2017",
        "sparsify",
        "training data",
        ("cnn", "yolo"),
        lambda ctx: _tp().importance.BNScaleImportance(),
        pruner=lambda ctx: (_tp().pruner.BNScalePruner, {"reg": ctx["reg"], "group_lasso": False}),
        regularizer="BNScale (L1 on BN gamma)",
    ),
    Method(
        "group_slim",
        "Group Slimming",
        "Liu et al. 2017 + group LASSO",
        "sparsify",
        "training data",
        ("cnn", "yolo"),
        lambda ctx: _tp().importance.BNScaleImportance(),
        pruner=_group_slim_pruner,
        regularizer="GroupLASSO on BN gamma",
    ),
    Method(
        "l2_lasso",
        "GroupLASSO + L2",
        "Yuan & Lin 2006 (group LASSO)",
        "sparsify",
        "training data",
        FAMILIES,
        lambda ctx: _tp().importance.MagnitudeImportance(p=2),
        pruner=_group_lasso_pruner,
        regularizer="GroupLASSO on group weights",
    ),
    Method(
        "group_norm",
        "GroupNorm (DepGraph)",
        "Fang et al., CVPR 2023",
        "sparsify",
        "training data",
        FAMILIES,
        lambda ctx: _tp().importance.GroupMagnitudeImportance(p=2, normalizer="max"),
        pruner=lambda ctx: (_tp().pruner.GroupNormPruner, {"reg": ctx["reg"]}),
        regularizer="GroupNorm",
    ),
    Method(
        "growing_reg",
        "GrowingReg",
        "Wang et al., ICLR 2021",
        "sparsify",
        "training data",
        FAMILIES,
        lambda ctx: _tp().importance.MagnitudeImportance(p=2),
        pruner=lambda ctx: (
            _tp().pruner.GrowingRegPruner,
            {"reg": ctx["reg"], "delta_reg": ctx["delta_reg"]},
        ),
        regularizer="GrowingReg",
        per_epoch="update_reg",
    ),
]
METHODS: dict[str, Method] = {m.key: m for m in _METHODS}


def get(key: str, family: str | None = None) -> Method:
    if key not in METHODS:
        raise choices_error("method", key, list(METHODS))
    m = METHODS[key]
    if family is not None and family not in m.families:
        raise PbkitError(
            f"method {key!r} does not apply to {family} models (it applies to: "
            f"{', '.join(m.families)}), as in the PruningBench study"
        )
    return m


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise choices_error("scope", scope, list(SCOPES))
    return scope
