"""torchvision's ShuffleNetV2, made prunable.

A ShuffleNetV2 unit ends in a channel shuffle (a reshape to [B, 2, C/2, H, W], a transpose and a
flatten) that interleaves the unit's two halves; the next unit splits its input in two again. The
dependency graph cannot map channel indices through that reshape (torch-pruning divides by zero
there), and no consistent pruning of the shuffled stream exists that keeps each unit a shuffle of
two equal halves. :func:`make_prunable` (applied whenever pbkit builds a ``tv:shufflenet_v2_*``
model) makes each unit's shuffle a parameter-free module of its own (the same arithmetic, so the
same outputs and state dict); :func:`fixed` names what must keep its width: the shuffles and the
convolutions that feed them, so the stream between units keeps its width and pruning takes the
units' inner widths (each branch's 1x1 -> depthwise -> 1x1 bottleneck), the stem and the last 1x1
convolution.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import shufflenetv2 as tvsh


class ChannelShuffle(nn.Module):
    """torchvision's channel shuffle as a module: one node the dependency graph can hold fixed."""

    def __init__(self, channels: int, groups: int = 2) -> None:
        super().__init__()
        self.channels = channels  # in and out: the dependency graph asks, and it never changes
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tvsh.channel_shuffle(x, self.groups)


class ShuffleUnit(tvsh.InvertedResidual):
    """torchvision's unit, its shuffle a submodule (``self.shuffle``)."""

    shuffle: ChannelShuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out)


def make_prunable(model: nn.Module) -> nn.Module:
    """Every unit of ``model`` given its shuffle as a submodule (in place)."""
    for m in model.modules():
        if type(m) is tvsh.InvertedResidual:
            half = [c for c in m.branch2.modules() if isinstance(c, nn.Conv2d)][-1].out_channels
            m.__class__ = ShuffleUnit
            m.shuffle = ChannelShuffle(2 * half)
    return model


def fixed(model: nn.Module) -> list[nn.Module]:
    """Layers whose output channels must keep their number: every shuffle and the last
    convolution of each branch feeding it."""
    out: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, ShuffleUnit):
            out.append(m.shuffle)
            for branch in (m.branch1, m.branch2):
                convs = [c for c in branch.modules() if isinstance(c, nn.Conv2d)]
                out += convs[-1:]
    return out
