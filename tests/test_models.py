from __future__ import annotations

import pytest
import torch

from pbkit import models
from pbkit.core.errors import PbkitError
from pbkit.models import counts


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_cifar_models_build_and_classify_32px(name: str) -> None:
    spec = models.resolve(name, num_classes=10)
    m = models.build(spec).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10)
    assert spec.input_size == 32 and spec.family == "cnn"


def test_study_parameter_counts_match_pruningbench() -> None:
    # The study's table: VGG-19 on CIFAR-100 has 20.09 M parameters.
    vgg = models.build(models.resolve("vgg19_cifar", num_classes=100))
    assert round(counts.count_params(vgg) / 1e6, 2) == 20.09
    r56 = models.build(models.resolve("resnet56_cifar", num_classes=10))
    assert 0.85e6 < counts.count_params(r56) < 0.87e6


def test_random_init_is_seeded() -> None:
    spec = models.resolve("resnet20_cifar")
    a, b, c = models.build(spec, seed=1), models.build(spec, seed=1), models.build(spec, seed=2)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_prefixed_models_resolve_with_family() -> None:
    assert models.resolve("tv:resnet18").family == "cnn"
    vit = models.resolve("timm:vit_small_patch16_224")
    assert (vit.family, vit.input_size, vit.num_classes) == ("vit", 224, 1000)
    assert models.resolve("tv:vit_b_16").family == "vit"


@pytest.mark.parametrize(
    "name,needle",
    [
        ("resnet999", "choose one of"),
        ("tv:nope", "unknown torchvision"),
        ("timm:nope", "unknown timm"),
    ],
)
def test_unknown_models_are_clear_errors(name: str, needle: str) -> None:
    with pytest.raises(PbkitError, match=needle):
        models.resolve(name)


def test_pretrained_cifar_weights_do_not_exist() -> None:
    with pytest.raises(PbkitError, match="no pretrained weights"):
        models.build(models.resolve("resnet20_cifar"), pretrained=True)


def test_classifier_head_is_found() -> None:
    m = models.build(models.resolve("resnet20_cifar", num_classes=10))
    assert models.classifier_heads(m, 10) == [m.fc]
