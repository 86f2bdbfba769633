"""timm's mixed depth-wise convolution (MixConv, MixNet's MDConv), made prunable.

A :class:`timm.layers.MixedConv2d` splits its input's channels into groups, runs each group's
depth-wise convolution with its own kernel size and concatenates the results. Traced, the split
holds every channel group that reaches it (its widths are fixed when it is built, see
:func:`pbkit.pruning.repairs.graph.channel_splits`), and a MixNet keeps nearly all its channels.
:func:`make_prunable` (applied whenever pbkit builds a timm model) gives each depth-wise one the
class :class:`MixedDepthwiseConv2d`, the same module and forward pass under a class the dependency
graph sees as one layer; pbkit's pruners (:mod:`pbkit.pruning.repairs.held`) cut channel i from the
group that holds it and move the split sizes. Mixed pointwise convolutions (not depth-wise) stay
as they are.
"""

from __future__ import annotations

from timm.layers.mixed_conv2d import MixedConv2d
from torch import nn


class MixedDepthwiseConv2d(MixedConv2d):
    """A depth-wise :class:`MixedConv2d`: channel i in is channel i out."""


def depthwise(m: nn.Module) -> bool:
    """Whether ``m`` is a mixed convolution whose every group is depth-wise (one channel per
    group, in = out)."""
    return isinstance(m, MixedConv2d) and all(
        isinstance(c, nn.Conv2d) and c.groups == c.in_channels == c.out_channels for c in m.values()
    )


def make_prunable(model: nn.Module) -> nn.Module:
    """Every depth-wise mixed convolution of ``model`` given :class:`MixedDepthwiseConv2d` (in
    place)."""
    for m in model.modules():
        if type(m) is MixedConv2d and depthwise(m):
            m.__class__ = MixedDepthwiseConv2d
    return model
