"""Blocks the dependency graph must not trace into, and the pruners that change their weights.

torch-pruning learns which channels belong together by walking the autograd graph of one forward
pass. Inside a Swin block's window attention (window partition, cyclic shift, masks) and patch
merging (a strided pad and a concatenation on the channel axis) that walk does not end: it
recurses until memory runs out. While the graph is built, :func:`hidden` runs each such block
inside one autograd node whose only input is the block's input, so the graph sees a single
layer; the pruners here (:data:`PRUNERS`, passed as ``customized_pruners``) then prune that
layer's input channels (the residual stream entering it) and output channels (the stream
leaving it). The attention's inner width stays as it is (its forward pass reads each width from
the weights, :mod:`pbkit.models.swin`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from pbkit.models import swin


class _Opaque(torch.autograd.Function):
    """``fn(x)`` as one autograd node whose only input is ``x`` (for tracing; no backward)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError("an opaque block is for tracing the dependency graph, not for training")


def blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model`` the dependency graph must see as single layers."""
    return [m for m in model.modules() if isinstance(m, swin.ATTENTION + swin.MERGING)]


@contextlib.contextmanager
def hidden(model: nn.Module) -> Iterator[None]:
    """Within: every block of :func:`blocks` is one autograd node (its instance's forward wrapped)."""
    wrapped = blocks(model)
    for m in wrapped:
        inner = m.forward
        m.forward = (lambda f: lambda x: _Opaque.apply(x, f))(inner)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m in wrapped:
            del m.forward


def _linear() -> Any:
    import torch_pruning as tp

    return tp.pruner.function.LinearPruner()


def _norm() -> Any:
    import torch_pruning as tp

    return tp.pruner.function.LayernormPruner()


def _base() -> type:
    import torch_pruning as tp

    return tp.pruner.function.BasePruningFunc  # type: ignore[no-any-return]


def _pruners() -> dict[type, Any]:
    base = _base()

    class AttentionPruner(base):  # type: ignore[misc, valid-type]
        """Window attention: its input channels are ``qkv``'s columns, its output channels ``proj``'s rows."""

        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            _linear().prune_out_channels(layer.proj, idxs)
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            _linear().prune_in_channels(layer.qkv, idxs)
            return layer

        def get_out_channels(self, layer: nn.Module) -> int:
            return int(layer.proj.out_features)  # type: ignore[union-attr]

        def get_in_channels(self, layer: nn.Module) -> int:
            return int(layer.qkv.in_features)  # type: ignore[union-attr]

    class MergingPruner(base):  # type: ignore[misc, valid-type]
        """Patch merging: C input channels, each four times in the merged 4C (v1 normalises those),
        2C output channels (v2 normalises those)."""

        def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            c = int(layer.reduction.in_features) // 4  # type: ignore[union-attr]
            merged = [i + k * c for k in range(4) for i in idxs]
            _linear().prune_in_channels(layer.reduction, merged)
            if isinstance(layer, swin.MERGING[0]):  # v1: the norm before the reduction
                _norm().prune_out_channels(layer.norm, merged)
            layer.dim = c - len(idxs)  # type: ignore[assignment]
            return layer

        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            _linear().prune_out_channels(layer.reduction, idxs)
            if isinstance(layer, swin.MERGING[1]):  # v2: the norm after it
                _norm().prune_out_channels(layer.norm, idxs)
            return layer

        def get_out_channels(self, layer: nn.Module) -> int:
            return int(layer.reduction.out_features)  # type: ignore[union-attr]

        def get_in_channels(self, layer: nn.Module) -> int:
            return int(layer.reduction.in_features) // 4  # type: ignore[union-attr]

    attention, merging = AttentionPruner(), MergingPruner()
    return {**{cls: attention for cls in swin.ATTENTION}, **{cls: merging for cls in swin.MERGING}}


def pruners(model: nn.Module) -> dict[type, Any]:
    """``customized_pruners`` for the blocks ``model`` has (none: an empty dict)."""
    return _pruners() if blocks(model) else {}
