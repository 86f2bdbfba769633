"""Step 2 of the study, the graph: torch-pruning's Pruner (its dependency graph) for one model,
built with pbkit's repairs (:mod:`pbkit.pruning.repairs`), and the channel groups it may prune.

A failure of torch-pruning's trace is :class:`Untraceable` (the prune loop may try again with the
model's attention-like blocks held fixed); a repair that no longer fits torch-pruning is
:class:`~pbkit.pruning.repairs.RepairBroken`, never taken for the model's failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pbkit.core.errors import PbkitError, first_line
from pbkit.pruning.repairs import common, graph, held


class Untraceable(Exception):
    """The dependency graph failed on this model (one line)."""


@dataclass(frozen=True)
class PrunerSpec:
    """What torch-pruning's Pruner is built with, besides the model: the method's Pruner class,
    importance and extra arguments, the scope (global or not, the most of a group it may cut), the
    schedule, the alignment and each attention's heads."""

    pruner_cls: Any
    importance: Any
    extra: dict[str, Any]
    global_pruning: bool
    max_ratio: float
    iterative_steps: int
    round_to: int | None
    num_heads: dict[nn.Module, int]


def build(
    model: nn.Module,
    example: torch.Tensor,
    spec: PrunerSpec,
    protected: Sequence[nn.Module],
    hold: Sequence[nn.Module] = (),
) -> tuple[Any, list[Any]]:
    """The Pruner for ``model`` and its prunable groups, never touching ``protected``, with the
    blocks ``hold`` held fixed (each one node whose output channels stay). The forward hooks a
    trace that failed midway left behind are removed."""
    common.require_fit()
    before = {id(m): set(m._forward_hooks) for m in model.modules()}
    try:
        pruner = _pruner(model, example, spec, protected, hold)
        groups = _groups(model, pruner)
    except BaseException as e:
        _drop_hooks(model, before)
        if isinstance(e, PbkitError) or not isinstance(e, Exception):
            raise
        why = first_line(e)
        raise Untraceable(f"the dependency graph could not trace this model: {why}") from e
    if not groups:
        raise PbkitError("the dependency graph found no prunable channel group in this model")
    return pruner, groups


def _drop_hooks(model: nn.Module, before: dict[int, set[int]]) -> None:
    for m in model.modules():
        for key in set(m._forward_hooks) - before.get(id(m), set()):
            del m._forward_hooks[key]


def _arguments(
    model: nn.Module, example: torch.Tensor, spec: PrunerSpec, hold: Sequence[nn.Module]
) -> dict[str, Any]:
    """The method's extra Pruner arguments with the repairs' own: pruners for the blocks held as
    one node, and the image-map parameters' pruning dimension."""
    extra = spec.extra
    custom = held.pruners_for(model, hold, held.entries(model, hold, example) if hold else None)
    if custom:
        extra = {**extra, "customized_pruners": {**custom, **extra.get("customized_pruners", {})}}
    maps = graph.square_maps(model, set(extra.get("customized_pruners", {})))
    if maps:  # (torch-pruning finds the other parameters outside its layers itself)
        extra = {**extra, "unwrapped_parameters": [*maps, *extra.get("unwrapped_parameters", [])]}
    return extra


def _pruner(
    model: nn.Module,
    example: torch.Tensor,
    spec: PrunerSpec,
    protected: Sequence[nn.Module],
    hold: Sequence[nn.Module],
) -> Any:
    """torch-pruning's Pruner, its graph traced with the blocks it cannot follow hidden (each one
    node), the concatenations' widths from the trace, and no activation kept."""
    extra = _arguments(model, example, spec, hold)
    with held.hidden(model, also=hold), graph.exact_concat_sizes(), graph.shapes_only():
        return spec.pruner_cls(
            model,
            example,
            importance=spec.importance,
            global_pruning=spec.global_pruning,
            pruning_ratio=1.0,
            max_pruning_ratio=spec.max_ratio,
            iterative_steps=spec.iterative_steps,
            ignored_layers=[*protected, *held.fixed(model), *hold],
            round_to=spec.round_to,
            num_heads=spec.num_heads,
            **extra,
        )


def _groups(model: nn.Module, pruner: Any) -> list[Any]:
    """The groups ``pruner`` may prune, after the repairs that hold or leave some: channel splits
    held, gated token splits mapped, one-channel groups left, groups mapped astray held."""
    graph.token_splits(pruner.DG)
    pruner.ignored_layers.extend(graph.channel_splits(pruner.DG))  # the groups reaching them stay
    grouped = graph.leave_one_channel_groups(pruner, model)
    groups = _all_groups(pruner)
    astray = graph.astray(groups, grouped)
    if astray:
        pruner.ignored_layers.extend(astray)
        groups = _all_groups(pruner)
    return groups


def _all_groups(pruner: Any) -> list[Any]:
    return list(
        pruner.DG.get_all_groups(
            ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
        )
    )
