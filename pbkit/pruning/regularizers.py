"""Regularizers of our own for the sparsifying stage (the others come from torch-pruning).

``GroupLassoPruner``: group LASSO on dependency-graph groups. The penalty reg * sum_c ||W_c||_2,
where W_c gathers every weight that channel c of a group touches (producer rows, BatchNorm
entries, consumer columns), adds reg * w / ||W_c|| to each of those weights' gradients. Called as
``pruner.regularize(model)`` after ``loss.backward()`` and before ``optimizer.step()``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

OUT_FNS = (function.prune_conv_out_channels, function.prune_linear_out_channels)
IN_FNS = (function.prune_conv_in_channels, function.prune_linear_in_channels)


class GroupLassoPruner(tp.pruner.MetaPruner):
    def __init__(self, *args: Any, reg: float = 5e-4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reg = reg
        self._sq = tp.importance.GroupMagnitudeImportance(
            p=2, group_reduction="sum", normalizer=None
        )
        self.update_regularizer()

    def update_regularizer(self) -> None:
        self._groups = list(
            self.DG.get_all_groups(
                root_module_types=self.root_module_types, ignored_layers=self.ignored_layers
            )
        )

    @torch.no_grad()
    def regularize(self, model: nn.Module, bias: bool = False) -> None:
        for group in self._groups:
            sq = self._sq(group)  # per channel: sum of squares over the whole group
            if sq is None or not torch.isfinite(sq).all():
                continue
            scale = self.reg / (sq.sqrt() + 1e-8)
            for i, (dep, idxs) in enumerate(group):
                layer, fn = dep.target.module, dep.handler
                w = getattr(layer, "weight", None)
                if w is None or w.grad is None:
                    continue
                s = scale[torch.as_tensor(group[i].root_idxs)].to(w.dtype)
                idx = torch.as_tensor(idxs)
                if fn in OUT_FNS:
                    w.grad[idx] += s.view(-1, *([1] * (w.dim() - 1))) * w[idx]
                elif fn in IN_FNS and not (isinstance(layer, nn.Conv2d) and layer.groups != 1):
                    if w.shape[1] < int(idx.max()) + 1:
                        continue  # flattened or grouped inputs: index mapping we do not regularize
                    w.grad[:, idx] += s.view(1, -1, *([1] * (w.dim() - 2))) * w[:, idx]
                elif fn == function.prune_batchnorm_out_channels and getattr(
                    layer, "affine", False
                ):
                    w.grad[idx] += s * w[idx]


class GroupSlimPruner(tp.pruner.BNScalePruner):
    """BNScalePruner with group LASSO on BatchNorm gammas, skipping groups that hold no BatchNorm
    (torch-pruning 1.6.1 adds 1e-9 to the None such a group scores and fails)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["group_lasso"] = True
        super().__init__(*args, **kwargs)

    @torch.no_grad()
    def regularize(self, model: nn.Module, reg: float | None = None, bias: bool = False) -> None:
        reg = self.reg if reg is None else reg
        for group in self._groups:
            sq = self._l2_imp(group)
            if sq is None or not torch.isfinite(sq).all():
                continue
            gamma = reg / (sq + 1e-9).sqrt()
            for i, (dep, _) in enumerate(group):
                layer = dep.layer
                if (
                    isinstance(layer, nn.modules.batchnorm._BatchNorm)
                    and layer.affine
                    and layer not in self.ignored_layers
                    and layer.weight.grad is not None
                ):
                    g = torch.index_select(gamma, 0, torch.as_tensor(group[i].root_idxs))
                    layer.weight.grad.add_(g * layer.weight)
