from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from pbkit.models import counts


def test_conv_and_linear_macs_are_exact() -> None:
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    # conv: 8 out * 3 in * 9 taps * 8*8 positions; linear: 8*5
    assert counts.count_macs(m, 8) == 8 * 3 * 9 * 64 + 8 * 5
    assert counts.count_params(m) == 8 * 3 * 9 + 8 * 5 + 5


def test_vit_attention_matmuls_are_counted() -> None:
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=64).eval()
    fused = counts.count_macs(m, 64)
    for mod in m.modules():
        if hasattr(mod, "fused_attn"):
            mod.fused_attn = (
                False  # explicit q@k^T and attn@v, which the aten counter sees natively
            )
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
FAMILIES = [
    ("resnet20_cifar", 32, {}),
    ("vgg19_cifar", 32, {}),
    ("tv:mobilenet_v3_small", 64, {}),
    ("tv:densenet121", 32, {}),
    ("tv:convnext_tiny", 32, {}),
    ("tv:vit_b_16", 32, {"image_size": 32}),
    ("timm:vit_tiny_patch16_224", 64, {"depth": 2}),
    ("timm:efficientnet_b0", 64, {}),
    ("timm:convnext_atto", 64, {}),
    ("tv:lraspp_mobilenet_v3_large", 64, {}),
    ("timmseg:vit_tiny_patch16_224", 64, {"depth": 2}),
    ("yolov8n", 64, {}),
]

# nn.MultiheadAttention multiplies by its weights functionally (in_proj_weight, out_proj.weight): no
# layer holds those MACs, so the counter counts for real wherever the target may be near
ALL_FREE = {"tv:vit_b_16"}


def _prune(name: str, size: int, kwargs: dict[str, object], real: bool) -> tuple[int, int, int]:
    """Steps, MACs after them, real counts: a short protected l2 pruning to 1.3x, with MACs counted
    for real after every step (the counter before) or by the step counter."""
    from pbkit.models import sources
    from pbkit.pruning import methods
    from pbkit.pruning.loop import PruneSettings, prune_to_target
    from pbkit.tasks import get as get_task

    spec = sources.resolve(name, input_size=size, kwargs=kwargs)
    model = sources.build(spec, seed=0)
    before = counts.StepCounter.after_step
    if real:
        counts.StepCounter.after_step = lambda self, reached: (self.exact(), True)  # type: ignore[method-assign]
    try:
        res = prune_to_target(
            model,
            methods.get("l2"),
            PruneSettings(speedup=1.3, iterative_steps=12),
            input_size=size,
            num_classes=spec.num_classes,
            protected=get_task(spec.task).protected(model, spec),
        )
    finally:
        counts.StepCounter.after_step = before  # type: ignore[method-assign]
    assert res.macs_pruned == counts.count_macs(model, size)
    return res.steps, res.macs_pruned, res.real_counts


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size", "kwargs"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_the_step_counter_stops_where_counting_every_step_stops(
    name: str, size: int, kwargs: dict[str, object]
) -> None:
    real_steps, real_macs, every = _prune(name, size, kwargs, real=True)
    steps, macs, counted = _prune(name, size, kwargs, real=False)
    assert (steps, macs) == (real_steps, real_macs) and every == real_steps + 1
    if name in ALL_FREE:
        assert counted <= every
    else:
        assert counted < every  # fewer forward passes (CNNs: one, at the start)


def test_the_step_counter_knows_a_cnn_from_its_layers_and_bounds_the_rest() -> None:
    cnn = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    c = counts.StepCounter(cnn, 8)
    assert c.free == 0 and c.base == counts.count_macs(cnn, 8) == c.layers()
    # a layer made narrower (as a pruning step does): known exactly from its weight, without a
    # forward pass
    cnn[0] = c.model[0]
    conv = cnn[0]
    conv.weight = nn.Parameter(conv.weight[:4].clone())
    conv.bias = nn.Parameter(conv.bias[:4].clone())  # type: ignore[index]
    conv.out_channels = 4
    cnn[2].weight = nn.Parameter(cnn[2].weight[:4].clone())
    cnn[2].bias = nn.Parameter(cnn[2].bias[:4].clone())  # type: ignore[index]
    cnn[2].in_channels = cnn[2].out_channels = cnn[2].groups = 4
    cnn[5].weight = nn.Parameter(cnn[5].weight[:, :4].clone())
    cnn[5].in_features = 4
    assert c.after_step(lambda m: False) == (counts.count_macs(cnn, 8), True) and c.real_counts == 1
    # attention matmuls on activations belong to no layer: the free part, an upper bound until a
    # real count
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=64).eval()
    v = counts.StepCounter(vit, 64)
    assert v.free > 0 and v.after_step(lambda m: False) == (v.base, False) and v.real_counts == 1
    assert v.after_step(lambda m: True) == (v.base, True) and v.real_counts == 2
