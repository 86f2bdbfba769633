"""Pruning methods by key: each one is an Importance (scores a channel group) that torch-pruning's
Pruner uses to decide what to remove. New methods register here; see README "Adding a method".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pbkit.errors import PbkitError, choices_error

FAMILIES = ("cnn", "vit", "yolo")
SCOPES = {
    "local": "every group loses the same fraction",
    "global": "one threshold over normalised scores of all groups (layers may shrink to 1 channel)",
    "protected": "global with a floor that keeps at least 10% of every group (the study's default)",
}


@dataclass(frozen=True)
class Method:
    key: str
    name: str
    paper: str
    stage: str  # "prune" (criterion only) or "sparsify" (regularised training, then a criterion)
    data: str  # what the criterion needs: "none", "gradients", "feature maps", ...
    families: tuple[str, ...]
    importance: Callable[..., Any] = field(repr=False)
    # Optional check of the model before pruning: returns why the criterion cannot rank it.
    precheck: Callable[[Any], str | None] | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        return dict(key=self.key, name=self.name, paper=self.paper, stage=self.stage, data=self.data,
                    families=list(self.families))


def _tp() -> Any:
    import torch_pruning as tp

    return tp


def _bn_gammas_differ(model: Any) -> str | None:
    from torch import nn

    gammas = [m.weight.detach().flatten() for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    if not gammas:
        return "bnscale ranks channels by BatchNorm gamma, and this model has no BatchNorm layer"
    import torch

    values = torch.cat(gammas)
    if bool((values == values[0]).all()):
        return (f"bnscale ranks channels by BatchNorm gamma, and every gamma in this model is {float(values[0]):g} "
                "(untrained?): give trained weights (--checkpoint FILE, or a dataset with base.epochs > 0)")
    return None


METHODS: dict[str, Method] = {
    m.key: m
    for m in [
        Method("l1", "MagnitudeL1", "Li et al., ICLR 2017", "prune", "none", FAMILIES,
               lambda: _tp().importance.MagnitudeImportance(p=1)),
        Method("l2", "MagnitudeL2", "Li et al., ICLR 2017", "prune", "none", FAMILIES,
               lambda: _tp().importance.MagnitudeImportance(p=2)),
        Method("lamp", "LAMP", "Lee et al., ICLR 2021", "prune", "none", FAMILIES,
               lambda: _tp().importance.LAMPImportance(p=2)),
        Method("fpgm", "FPGM", "He et al., CVPR 2019", "prune", "none", FAMILIES,
               lambda: _tp().importance.FPGMImportance(p=2)),
        Method("bnscale", "BNScale", "Liu et al., ICCV 2017 (criterion)", "prune", "none", ("cnn", "yolo"),
               lambda: _tp().importance.BNScaleImportance(), precheck=_bn_gammas_differ),
        Method("random", "Random", "baseline", "prune", "none", FAMILIES,
               lambda: _tp().importance.RandomImportance()),
    ]
}


def get(key: str, family: str | None = None) -> Method:
    if key not in METHODS:
        raise choices_error("method", key, list(METHODS))
    m = METHODS[key]
    if family is not None and family not in m.families:
        raise PbkitError(f"method {key!r} does not apply to {family} models (it applies to: "
                         f"{', '.join(m.families)}), as in the PruningBench study")
    return m


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise choices_error("scope", scope, list(SCOPES))
    return scope
