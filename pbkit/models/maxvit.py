"""torchvision's MaxViT, made prunable.

MaxViT alternates MBConv blocks with block (window) and grid attention. Its attention reshapes its
output back to the input's width (``reshape(B, G, P, D)``), so the residual stream's width and the
attention's inner width are one number; :func:`make_prunable` (applied whenever pbkit builds a
``tv:maxvit_*`` model) gives each attention a forward pass that takes its inner width from its
weights instead, the same arithmetic for the dense model (tested bit for bit).

The window and grid partitions (reshapes and permutes of [B, C, H, W] into windows) are what the
dependency graph cannot follow: while it traces they run as single nodes that keep each channel
where it is (:mod:`pbkit.pruning.repairs.held`), as does the attention, whose pruner takes its input
channels from ``to_qkv``'s columns and its output channels from ``merge``'s rows. Heads and head
width stay as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import maxvit as tvm


class Attention(tvm.RelativePositionalMultiHeadAttention):
    """torchvision's relative-position attention whose widths come from its weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, p, _ = x.shape
        heads, dh = self.n_heads, self.head_dim
        q, k, v = torch.chunk(self.to_qkv(x), 3, dim=-1)
        q = q.reshape(b, g, p, heads, dh).permute(0, 1, 3, 2, 4)
        k = k.reshape(b, g, p, heads, dh).permute(0, 1, 3, 2, 4)
        v = v.reshape(b, g, p, heads, dh).permute(0, 1, 3, 2, 4)
        k = k * self.scale_factor
        dot = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k)
        dot = F.softmax(dot + self.get_relative_positional_bias(), dim=-1)
        out = torch.einsum("B G H I J, B G H J D -> B G H I D", dot, v)
        return self.merge(out.permute(0, 1, 3, 2, 4).reshape(b, g, p, heads * dh))


ATTENTION = (Attention,)
# reshapes and permutes that keep the channel axis's channels as they are
PARTITION = (tvm.WindowPartition, tvm.WindowDepartition, tvm.SwapAxes)


def make_prunable(model: nn.Module) -> nn.Module:
    """Every attention of ``model`` given the width-reading forward pass (in place: the same
    parameters, buffers and attributes)."""
    for m in model.modules():
        if type(m) is tvm.RelativePositionalMultiHeadAttention:
            m.__class__ = Attention
    return model
