"""Repairs to what torch-pruning leaves behind when it cuts channels, applied while the prune loop
steps.

- **extra channel tensors** (:func:`cuts_follow`): a layer whose outputs torch-pruning cuts has its
  other per-channel tensors (:func:`extra_channel_tensors`, NFNet's ``gain``) cut to the same
  channels; left whole, the model would no longer run.
- **split offsets** (:func:`cuts_follow`): a split (``chunk``: a gated MLP's value and gate halves)
  whose input loses channels gets its chunk offsets moved: torch-pruning counts the new chunk sizes
  but keeps mapping indices with the traced offsets, so the next step's indices would run past the
  layers' ends.
- **view shapes** (:func:`view_shapes`): a view shape a module stored for its one per-channel
  parameter follows that parameter's new length (timm's metaformer ``Scale``).
- **attention widths** (:func:`attention_widths`): a timm-style attention's ``num_heads``,
  ``head_dim`` and ``attn_dim`` follow its pruned ``qkv``; torch-pruning leaves them as built.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from pbkit.pruning.repairs import held
from pbkit.pruning.repairs.common import fits
from pbkit.pruning.repairs.graph import kept

_KNOWN_TENSORS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def _width(m: Any) -> int | None:
    """The output width of a convolution, linear or norm layer; None for any other module."""
    if not isinstance(
        m,
        nn.Conv1d
        | nn.Conv2d
        | nn.Conv3d
        | nn.Linear
        | nn.modules.batchnorm._BatchNorm
        | nn.LayerNorm
        | nn.GroupNorm,
    ):
        return None
    width = (
        getattr(m, "out_channels", None)
        or getattr(m, "out_features", None)
        or getattr(m, "num_features", None)
    )
    return int(width) if width else None


def extra_channel_tensors(m: Any) -> list[str]:
    """The parameters and buffers of a convolution, linear or norm layer ``m``, other than the
    weight and bias torch-pruning prunes, with one entry per output channel (timm's scaled
    weight-standardised convolutions' ``gain``, NFNet's)."""
    width = _width(m)
    if width is None:
        return []
    return [
        name
        for name, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
        if name not in _KNOWN_TENSORS and t is not None and t.dim() >= 1 and t.shape[0] == width
    ]


@contextlib.contextmanager
def cuts_follow() -> Iterator[None]:
    """While the block runs, what torch-pruning leaves behind when it cuts channels is brought in
    line after each cut (the module's docstring: extra channel tensors, split offsets), and the
    patch on its dependency call is undone when the block ends."""
    with fits("extra channel tensors"):
        from torch_pruning.dependency import dependency

        original = dependency.Dependency.__call__
    with fits("split offsets"):
        from torch_pruning import ops

        split_op = ops._SplitOp

    def call(dep: Any, idxs: Any) -> Any:
        with fits("extra channel tensors"):
            m = dep.target.module
        before, extra = _width(m), extra_channel_tensors(m)
        out = original(dep, idxs)
        if extra and before is not None and (_width(m) or before) < before:
            with fits("extra channel tensors"):
                keep = kept(idxs, before)
            _cut_to(m, extra, keep)
        with fits("split offsets"):
            if isinstance(m, split_op) and m.split_sizes is not None and len(idxs):
                # (torch-pruning maps each next group's indices from these offsets)
                m.offsets = [sum(m.split_sizes[:i]) for i in range(len(m.split_sizes) + 1)]
        return out

    dependency.Dependency.__call__ = call
    try:
        yield
    finally:
        dependency.Dependency.__call__ = original


def _cut_to(m: Any, names: list[str], keep: list[int]) -> None:
    """Keep only the rows ``keep`` of each tensor ``names`` of ``m`` (a parameter stays a
    parameter)."""
    index = torch.tensor(keep, dtype=torch.long)
    for name in names:
        t = getattr(m, name)
        rows = t.detach()[index.to(t.device)].clone()
        if isinstance(t, nn.Parameter):
            setattr(m, name, nn.Parameter(rows, requires_grad=t.requires_grad))
        else:
            m._buffers[name] = rows


def view_shapes(model: nn.Module) -> None:
    """Bring a view shape a module stored for its one per-channel parameter in line with that
    parameter's new length (timm's metaformer ``Scale``: ``x * scale.view(self.shape)`` with
    ``shape = (dim, 1, 1)`` fixed when built; torch-pruning cuts ``scale`` and leaves ``shape``)."""
    for m in model.modules():
        shape = getattr(m, "shape", None)
        params = list(m.parameters(recurse=False))
        if (
            not (isinstance(shape, tuple) and shape and all(type(d) is int for d in shape))
            or len(params) != 1
        ):
            continue
        n = params[0].numel()
        if params[0].dim() == 1 and math.prod(shape) != n and math.prod(shape[1:]) == 1:
            m.shape = (n, *shape[1:])


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm-style attention blocks: a fused ``qkv`` Linear and a ``num_heads`` attribute (Swin's
    window attention is pruned as one block instead: :mod:`pbkit.pruning.repairs.held`)."""
    windowed = held.attention_classes()
    return [
        m
        for m in model.modules()
        if not isinstance(m, windowed)
        and isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "num_heads", None), int)
    ]


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """The ``num_heads`` torch-pruning is given: each attention's heads, by its ``qkv``."""
    return {m.qkv: m.num_heads for m in attention_modules(model)}


def attention_widths(model: nn.Module, pruner: Any) -> None:
    """Keep num_heads / head_dim / attn_dim in step with the pruned qkv projection, and a ViT's
    ``embed_dim`` / ``num_features`` with its patch embedding."""
    with fits("attention widths"):
        heads_after = pruner.num_heads
    for m in attention_modules(model):
        qkv: nn.Linear = m.qkv
        heads = int(heads_after.get(qkv, m.num_heads))
        m.num_heads = heads
        attn_dim = qkv.out_features // 3
        m.head_dim = attn_dim // heads
        if hasattr(m, "attn_dim"):
            m.attn_dim = attn_dim
    embed = getattr(getattr(model, "patch_embed", None), "proj", None)
    if isinstance(embed, nn.Conv2d):
        for attr in ("embed_dim", "num_features"):
            if isinstance(getattr(model, attr, None), int):
                setattr(model, attr, embed.out_channels)


def after_step(model: nn.Module, pruner: Any) -> None:
    """What follows every pruning step: stored view shapes and attention widths."""
    view_shapes(model)
    attention_widths(model, pruner)
