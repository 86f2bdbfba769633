"""Segmentation models: per-pixel class logits ``(N, classes, H, W)`` at the input's size.

- ``tv:<name>`` for torchvision's segmentation models (``tv:fcn_resnet50``,
  ``tv:deeplabv3_mobilenet_v3_large``, ``tv:lraspp_mobilenet_v3_large``, ...), wrapped so they
  return the main head's logits as one tensor (torchvision returns a dict). Their auxiliary head
  (FCN, DeepLabV3) is dropped: it is a training aid only, never used at inference, so it is neither
  pruned nor trained nor exported; the record says so.
- ``timmseg:<vit>``: a timm ViT backbone (``timmseg:vit_tiny_patch16_224``) with a light head on
  its patch tokens (3x3 conv, BN, ReLU, 1x1 conv to the classes), upsampled to the input size.

The per-class convolutions (the last of each head) are never pruned: :func:`heads`.

Built from random weights, the MobileNetV3 models get PyTorch's batch-norm momentum (0.1) instead
of torchvision's 0.01, which is tuned for long ImageNet schedules: after the few hundred steps of
an offline run the running statistics would still be near their initial values and the model,
in eval mode, would predict one class. Pretrained builds keep 0.01. The record notes the momentum.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pbkit.core.errors import PbkitError

AUX_NOTE = "auxiliary head dropped (a training aid only: not pruned, trained or exported)"


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.segmentation))


class TorchvisionSegmenter(nn.Module):
    """A torchvision segmentation model that returns the main head's logits as a tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


class ViTSegmenter(nn.Module):
    """A ViT backbone's patch tokens as a feature map, a light conv head, upsampled logits."""

    def __init__(self, backbone: nn.Module, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        dim = int(backbone.num_features)
        self.head = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_features(x)  # (N, prefix + h*w, C)
        h, w = self.backbone.patch_embed.grid_size
        prefix = tokens.shape[1] - h * w
        fmap = tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
        return F.interpolate(
            self.head(fmap), size=x.shape[-2:], mode="bilinear", align_corners=False
        )


def build(
    name: str, num_classes: int, input_size: int, pretrained: bool, kwargs: dict[str, Any]
) -> nn.Module:
    if name.startswith("tv:"):
        import torchvision

        short = name[3:]
        kw = dict(kwargs)
        if pretrained:
            if num_classes != 21:
                raise PbkitError(
                    f"{name}: pretrained torchvision segmentation weights have 21 classes (VOC), "
                    f"not {num_classes}"
                )
            model = torchvision.models.get_model(short, weights="DEFAULT", **kw)
        else:
            if (
                "aux_loss"
                in inspect.signature(torchvision.models.get_model_builder(short)).parameters
            ):
                kw.setdefault("aux_loss", False)
            model = torchvision.models.get_model(
                short, weights=None, weights_backbone=None, num_classes=num_classes, **kw
            )
        if getattr(model, "aux_classifier", None) is not None:
            model.aux_classifier = None
        if (
            not pretrained
        ):  # trained here from scratch: PyTorch's BN momentum (see the module's doc)
            for m in model.modules():
                if (
                    isinstance(m, nn.modules.batchnorm._BatchNorm)
                    and m.momentum is not None
                    and m.momentum < 0.1
                ):
                    m.momentum = 0.1
        return TorchvisionSegmenter(model)
    if name.startswith("timmseg:"):
        import timm

        kw = {"img_size": input_size, **kwargs}
        backbone = timm.create_model(name[8:], pretrained=pretrained, num_classes=0, **kw)
        if not hasattr(backbone, "patch_embed"):
            raise PbkitError(
                f"{name}: timmseg: needs a ViT backbone with patch tokens (patch_embed), e.g. "
                "timmseg:vit_tiny_patch16_224"
            )
        return ViTSegmenter(backbone, num_classes)
    raise PbkitError(f"unknown segmentation model {name!r}")


def heads(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """The per-class convolutions of the segmentation head(s): never pruned."""
    out = [
        m
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
        and m.out_channels == num_classes
        and m.kernel_size == (1, 1)
        and (".classifier" in f".{name}" or name.startswith("head"))
    ]
    if not out:
        raise PbkitError(
            f"could not find the segmentation head (a 1x1 convolution with {num_classes} outputs) "
            "to protect"
        )
    return out


def notes(model: nn.Module) -> dict[str, Any]:
    """What the record says about the model's heads and batch norms."""
    out: dict[str, Any] = {}
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "aux_classifier"):
        out["aux_head"] = AUX_NOTE
    momenta = sorted(
        {
            m.momentum
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None
        }
    )
    if momenta:
        out["bn_momentum"] = momenta
    return out
