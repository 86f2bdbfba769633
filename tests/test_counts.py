from __future__ import annotations

import timm
import torch
from torch import nn

from pbkit.models import counts


def test_conv_and_linear_macs_are_exact() -> None:
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(8, 5))
    # conv: 8 out * 3 in * 9 taps * 8*8 positions; linear: 8*5
    assert counts.count_macs(m, 8) == 8 * 3 * 9 * 64 + 8 * 5
    assert counts.count_params(m) == 8 * 3 * 9 + 8 * 5 + 5


def test_vit_attention_matmuls_are_counted() -> None:
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=64).eval()
    fused = counts.count_macs(m, 64)
    for mod in m.modules():
        if hasattr(mod, "fused_attn"):
            mod.fused_attn = False  # explicit q@k^T and attn@v, which the aten counter sees natively
    explicit = counts.count_macs(m, 64)
    assert fused == explicit
    tokens, dim, depth = 17, 192, 2
    attention_matmuls = depth * 2 * tokens * tokens * dim
    no_attention = explicit - attention_matmuls
    assert no_attention > 0 and fused > no_attention


def test_counting_restores_training_mode() -> None:
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    m.train()
    counts.count_macs(m, 8)
    assert m.training
    assert torch.backends.mha.get_fastpath_enabled()
