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


# one model of every family the kit prunes, small enough to count quickly (name, input size, kwargs)
FAMILIES = [("resnet20_cifar", 32, {}), ("vgg19_cifar", 32, {}), ("tv:mobilenet_v3_small", 64, {}),
            ("tv:densenet121", 64, {}), ("tv:convnext_tiny", 64, {}), ("tv:vit_b_16", 224, {}),
            ("timm:vit_tiny_patch16_224", 64, {"depth": 2}), ("timm:efficientnet_b0", 64, {}),
            ("timm:convnext_atto", 64, {}), ("tv:lraspp_mobilenet_v3_large", 64, {}),
            ("timmseg:vit_tiny_patch16_224", 64, {"depth": 2}), ("yolov8n", 64, {})]


def test_the_meta_counter_gives_every_family_the_real_count_and_leaves_the_model_alone() -> None:
    from pbkit.models import registry

    for name, size, kwargs in FAMILIES:
        spec = registry.resolve(name, input_size=size, kwargs=kwargs)
        model = registry.build(spec, seed=0).eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        count, real, which = counts.macs_counter(model, size)
        assert which == "meta" and count(model) == real == counts.count_macs(model, size), name
        # nothing of the meta copy stays on the model: its tensors, and what a forward pass caches
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), name
        assert all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()]), name
        with torch.no_grad():
            model(counts.example_input(size))  # a real forward pass still runs (yolo caches its anchors)


def test_a_model_the_meta_device_cannot_run_is_counted_for_real() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y * float(y.abs().max().item() > -1)  # needs real data

    m = DataDependent()
    count, real, which = counts.macs_counter(m, 8)
    assert which == "real" and count(m) == real == 3 * 4 * 64
