"""torchvision's Swin Transformers (v1 and v2), made prunable.

torchvision's window attention takes its head width from its input (``C // num_heads``), so the
width of the residual stream and the attention's inner width are one number: pruning one breaks
the other. :func:`make_prunable` (applied whenever pbkit builds a ``tv:swin_*`` model) gives every
attention block a forward pass that reads its widths from its own weights instead: the stream's
width from the input, the inner width from ``qkv`` (``3 * heads * head_dim`` rows) and the output
width from ``proj``. For the dense model the arithmetic is the same as torchvision's, operator for
operator, so outputs and MACs are unchanged (tested); for a pruned one each width can differ.

Which channels of the stream to prune across the blocks is torch-pruning's dependency graph's
job; what it cannot follow (the window partition, the cyclic shift, the patch-merging pad) is
hidden from it while it traces (:mod:`pbkit.pruning.repairs.held`), and custom pruners change those
blocks' own weights.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import swin_transformer as tvs


def _windows(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, H, W, C] -> [B * windows, size_h * size_w, C] (H, W multiples of the window)."""
    b, h, w, c = x.shape
    x = x.view(b, h // size[0], size[0], w // size[1], size[1], c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size[0] * size[1], c)


def _unwindows(x: torch.Tensor, size: tuple[int, int], b: int, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`_windows`."""
    c = x.shape[-1]
    x = x.view(b, h // size[0], w // size[1], size[0], size[1], c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def _shift_mask(
    h: int, w: int, size: tuple[int, int], shift: tuple[int, int], like: torch.Tensor
) -> torch.Tensor:
    """-100 between positions of a window that came from different regions before the cyclic
    shift."""
    region = like.new_zeros((h, w))
    label = 0
    for hs in ((0, -size[0]), (-size[0], -shift[0]), (-shift[0], None)):
        for ws in ((0, -size[1]), (-size[1], -shift[1]), (-shift[1], None)):
            region[hs[0] : hs[1], ws[0] : ws[1]] = label
            label += 1
    ids = _windows(region.view(1, h, w, 1), size).squeeze(-1)  # [windows, N]
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def window_attention(m: tvs.ShiftedWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """(Shifted) window self-attention of ``m`` on ``x`` [B, H, W, C], every width from the
    weights."""
    b, h, w, _ = x.shape
    size = (int(m.window_size[0]), int(m.window_size[1]))
    x = F.pad(x, (0, 0, 0, (size[1] - w % size[1]) % size[1], 0, (size[0] - h % size[0]) % size[0]))
    ph, pw = x.shape[1], x.shape[2]
    shift = [0 if size[i] >= (ph, pw)[i] else int(m.shift_size[i]) for i in range(2)]
    if sum(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    tokens = _windows(x, size)
    heads = int(m.num_heads)
    head_dim = m.qkv.weight.shape[0] // (3 * heads)
    bias = m.qkv.bias
    v2 = isinstance(m, tvs.ShiftedWindowAttentionV2)
    if v2 and bias is not None:  # v2 has no key bias
        bias = torch.cat(
            [
                bias[: heads * head_dim],
                torch.zeros_like(bias[heads * head_dim : 2 * heads * head_dim]),
                bias[2 * heads * head_dim :],
            ]
        )
    qkv = F.linear(tokens, m.qkv.weight, bias)
    q, k, v = qkv.reshape(tokens.shape[0], tokens.shape[1], 3, heads, head_dim).permute(
        2, 0, 3, 1, 4
    )
    if v2:
        scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        scores = scores * torch.clamp(m.logit_scale, max=math.log(100.0)).exp()
    else:
        scores = (q * head_dim**-0.5).matmul(k.transpose(-2, -1))
    scores = scores + m.get_relative_position_bias()
    if sum(shift):
        mask = _shift_mask(ph, pw, size, (shift[0], shift[1]), x)
        n = tokens.shape[1]
        scores = scores.view(-1, mask.shape[0], heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        scores = scores.view(-1, heads, n, n)
    attn = F.dropout(F.softmax(scores, dim=-1), p=m.attention_dropout, training=m.training)
    out = attn.matmul(v).transpose(1, 2).reshape(tokens.shape[0], tokens.shape[1], heads * head_dim)
    out = F.dropout(F.linear(out, m.proj.weight, m.proj.bias), p=m.dropout, training=m.training)
    out = _unwindows(out, size, b, ph, pw)
    if sum(shift):
        out = torch.roll(out, shifts=(shift[0], shift[1]), dims=(1, 2))
    return out[:, :h, :w, :].contiguous()


class WindowAttention(tvs.ShiftedWindowAttention):
    """torchvision's v1 block whose widths come from its weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return window_attention(self, x)


class WindowAttentionV2(tvs.ShiftedWindowAttentionV2):
    """torchvision's v2 block (cosine attention, continuous position bias) whose widths come from
    its weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return window_attention(self, x)


ATTENTION = (WindowAttention, WindowAttentionV2)
MERGING = (tvs.PatchMerging, tvs.PatchMergingV2)


def make_prunable(model: nn.Module) -> nn.Module:
    """Every torchvision window-attention block of ``model`` given the width-reading forward pass
    (in place: the same parameters, buffers and attributes)."""
    for m in model.modules():
        if type(m) is tvs.ShiftedWindowAttentionV2:
            m.__class__ = WindowAttentionV2
        elif type(m) is tvs.ShiftedWindowAttention:
            m.__class__ = WindowAttention
    return model


def _timm_v2_attention(m: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """timm's Swin v2 window attention on windows ``x`` [B*windows, N, C], its inner width read from
    ``qkv`` (timm's own forward takes it from the input's C)."""
    n = x.shape[1]
    heads = int(m.num_heads)
    if m.q_bias is None:
        qkv = m.qkv(x)
    elif m.qkv_bias_separate:
        qkv = m.qkv(x) + torch.cat((m.q_bias, m.k_bias, m.v_bias))
    else:
        qkv = F.linear(x, m.qkv.weight, torch.cat((m.q_bias, m.k_bias, m.v_bias)))
    q, k, v = qkv.reshape(x.shape[0], n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    scores = scores * torch.clamp(m.logit_scale, max=math.log(1.0 / 0.01)).exp()
    table = m.cpb_mlp(m.relative_coords_table).view(-1, heads)
    bias = table[m.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()
    scores = scores + 16 * torch.sigmoid(bias).unsqueeze(0)
    if mask is not None:
        scores = scores.view(-1, mask.shape[0], heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        scores = scores.view(-1, heads, n, n)
    out = (m.attn_drop(m.softmax(scores)) @ v).transpose(1, 2).reshape(x.shape[0], n, -1)
    return m.proj_drop(m.proj(out))


@functools.cache
def _timm_v2() -> type:
    from timm.models import swin_transformer_v2 as v2

    class TimmWindowAttentionV2(v2.WindowAttention):
        """timm's Swin v2 window attention whose inner width comes from its weights."""

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
            return _timm_v2_attention(self, x, mask)

    return TimmWindowAttentionV2


def make_timm_prunable(model: nn.Module) -> nn.Module:
    """timm's Swin v2 window attention given the width-reading forward pass (in place); timm's
    Swin v1 attention reads its widths from its weights already."""
    from timm.models import swin_transformer_v2 as v2

    cls = _timm_v2()
    for m in model.modules():
        if type(m) is v2.WindowAttention:
            m.__class__ = cls
    return model
