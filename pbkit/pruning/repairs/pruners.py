"""The pruners torch-pruning is given for the blocks held as one node (:mod:`.held`): each says how
many input and output channels its block has and cuts the weights inside it.

torch-pruning couples a layer's input and output channels (one group) where its pruner's
``prune_in_channels`` is its ``prune_out_channels``; the pass-through kinds do that. Imported only
when a model has such a block (it imports torch-pruning, and with it timm).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch_pruning.pruner import function

from pbkit.pruning.repairs.common import fits
from pbkit.pruning.repairs.graph import kept

_LINEAR = function.LinearPruner()
_CONV = function.ConvPruner()
_NORM = function.LayernormPruner()
_DEPTHWISE = function.DepthwiseConvPruner()


def _qkv(layer: nn.Module) -> nn.Linear:
    return getattr(layer, "qkv", None) or layer.to_qkv


def _proj(layer: nn.Module) -> nn.Linear:
    return getattr(layer, "proj", None) or layer.merge


def _norm_width(layer: nn.Module) -> int:
    norm = getattr(layer, "norm", None)
    shape = getattr(norm, "normalized_shape", None)
    return int(shape[0]) if shape else -1


def cut_inputs(layer: nn.Module, idxs: Sequence[int]) -> None:
    """Cut input channels ``idxs`` of a convolution or linear layer."""
    (_CONV if isinstance(layer, nn.Conv2d) else _LINEAR).prune_in_channels(layer, idxs)


class AttentionPruner(function.BasePruningFunc):
    """Window attention: its input channels are ``qkv``'s columns, its output channels ``proj``'s
    rows (MaxViT: ``to_qkv``, ``merge``)."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        _LINEAR.prune_out_channels(_proj(layer), idxs)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        _LINEAR.prune_in_channels(_qkv(layer), idxs)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(_proj(layer).out_features)

    def get_in_channels(self, layer: nn.Module) -> int:
        return int(_qkv(layer).in_features)


class PassThroughPruner(function.BasePruningFunc):
    """A reshape or permute that keeps each channel as it is (MaxViT's window and grid partitions),
    or a channel gate that fits any width (ECA): no channel weights; its input and output channels
    are the same channels."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer

    prune_in_channels = prune_out_channels  # one function: in and out channels coupled

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return None  # the graph infers it from the layer's input

    get_in_channels = get_out_channels


class BlurPruner(PassThroughPruner):
    """A filter applied to each channel alone (timm's BlurPool2d): its input and output channels are
    the same channels, and the filter loses the rows of those cut."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        channels = getattr(layer, "channels", None)
        if channels is not None:
            with fits("blur pools"):
                keep = torch.tensor(kept(idxs, channels), dtype=torch.long)
            layer.filt = layer.filt[keep.to(layer.filt.device)].clone()
            layer.channels = len(keep)
        return layer

    prune_in_channels = prune_out_channels


class ContextPruner(PassThroughPruner):
    """A global context block: its input and output channels are the same channels; the cut ones
    leave the attention pooling's input columns, each MLP's input columns and the MLP's output
    rows."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        if layer.conv_attn is not None:
            _CONV.prune_in_channels(layer.conv_attn, idxs)
        for mlp in (layer.mlp_add, layer.mlp_scale):
            if mlp is not None:
                _CONV.prune_in_channels(mlp.fc1, idxs)
                _CONV.prune_out_channels(mlp.fc2, idxs)
        return layer

    prune_in_channels = prune_out_channels


class MixedPruner(PassThroughPruner):
    """A depth-wise mixed convolution: its input and output channels are the same channels; a cut
    channel leaves the group's convolution that holds it, and the split sizes follow."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        cut, start, sizes = {int(i) for i in idxs}, 0, []
        for conv in layer.values():
            width = conv.out_channels
            local = [i - start for i in sorted(cut) if start <= i < start + width]
            if local:
                _DEPTHWISE.prune_out_channels(conv, local)
            sizes.append(int(conv.out_channels))
            start += width
        layer.splits = sizes
        layer.in_channels = layer.out_channels = sum(sizes)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(sum(layer.splits))

    get_in_channels = get_out_channels


class MergingPruner(function.BasePruningFunc):
    """Patch merging: C input channels, each four times in the merged 4C (v1 normalises those), 2C
    output channels (v2 normalises those)."""

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        c = int(layer.reduction.in_features) // 4
        merged = [i + k * c for k in range(4) for i in idxs]
        before = _norm_width(layer) == 4 * c  # v1: the norm before the reduction (v2: after)
        _LINEAR.prune_in_channels(layer.reduction, merged)
        if before:
            _NORM.prune_out_channels(layer.norm, merged)
        layer.dim = c - len(idxs)
        return layer

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        after = _norm_width(layer) == layer.reduction.out_features
        _LINEAR.prune_out_channels(layer.reduction, idxs)
        if after:
            _NORM.prune_out_channels(layer.norm, idxs)
        if hasattr(layer, "out_dim"):
            layer.out_dim = int(layer.reduction.out_features)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.reduction.out_features)

    def get_in_channels(self, layer: nn.Module) -> int:
        return int(layer.reduction.in_features) // 4


class FixedPruner(function.BasePruningFunc):
    """A layer whose channels never change (ShuffleNet's channel shuffle, a block held fixed): an
    ignored layer, so no group that reaches it is pruned. Its input and output channels are coupled
    (one function), so a group that reaches its input reaches its output, which is what marks the
    group as not to be pruned."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise RuntimeError(
            f"{type(layer).__name__} keeps its channels; it should have been held fixed"
        )

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int | None:
        channels = getattr(layer, "channels", None)  # (None: the graph infers it from the input)
        return int(channels) if isinstance(channels, int) else None

    get_in_channels = get_out_channels


class HeldPruner(FixedPruner):
    """A block held fixed whose input only its own convolutions or linear layers read
    (:func:`~pbkit.pruning.repairs.held.entries`, timm's HaloAttn: ``q`` and ``kv``): its input
    channels are those layers' input channels, cut with the stream; its output channels stay (in
    and out not coupled, so only the groups reaching its output are held).

    ``reads``: for each such block, the layers that read its input."""

    def __init__(self, reads: dict[nn.Module, list[nn.Module]]) -> None:
        super().__init__()
        self.reads = reads

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        for m in self.reads[layer]:
            cut_inputs(m, idxs)
        return layer

    def get_in_channels(self, layer: nn.Module) -> int:
        m = self.reads[layer][0]
        return int(m.in_channels if isinstance(m, nn.Conv2d) else m.in_features)


def made(reads: dict[nn.Module, list[nn.Module]]) -> dict[str, function.BasePruningFunc]:
    """One pruner of each kind for one graph build (``reads``: :class:`HeldPruner`'s)."""
    return {
        "attention": AttentionPruner(),
        "merging": MergingPruner(),
        "passthrough": PassThroughPruner(),
        "blur": BlurPruner(),
        "context": ContextPruner(),
        "mixed": MixedPruner(),
        "fixed": FixedPruner(),
        "held": HeldPruner(reads),
    }
