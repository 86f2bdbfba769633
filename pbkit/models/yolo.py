"""YOLOv8 detectors as models: built from ultralytics' own model yamls and made prunable. Training,
validation and calibration with ultralytics live in :mod:`pbkit.tasks.detect`.

- C2f splits its tensor with ``chunk``, which dependency tracing mis-maps: every C2f is replaced by
  ``C2fSplit`` (two 1x1 convolutions, weights copied), an exact equivalent (tested).
- The Detect head is never pruned; export and finetuning use the pruned object, never a model
  rebuilt from the yaml (that silently restores the dense widths).
- ultralytics is only used inside :func:`pbkit.models.ultralytics_env.ultralytics_offline`: it never
  installs packages or reaches the network.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbkit.core.errors import PbkitError
from pbkit.models.ultralytics_env import ultralytics_offline

SIZES = ("n", "s", "m", "l", "x")
NAME = re.compile(r"^yolov8([nsmlx])$")
INPUT_SIZE = 640


def size_of(name: str) -> str:
    m = NAME.match(name)
    if m is None:
        raise PbkitError(
            f"unknown YOLOv8 model {name!r}; choose one of:"
            f" {', '.join('yolov8' + s for s in SIZES)}"
        )
    return m.group(1)


def build(name: str, num_classes: int = 80) -> nn.Module:
    """The dense detector from ultralytics' bundled yaml (random init), Detect stride set."""
    size = size_of(name)
    with ultralytics_offline(), contextlib.redirect_stdout(io.StringIO()):
        from ultralytics.nn.tasks import DetectionModel

        return DetectionModel(f"yolov8{size}.yaml", nc=num_classes, verbose=False)


def pretrained_file(name: str) -> Path:
    """Download ``yolov8<size>.pt`` (explicitly asked for), or say what to provide."""
    size = size_of(name)
    try:
        with ultralytics_offline():
            from ultralytics.utils.downloads import attempt_download_asset

            path = Path(attempt_download_asset(f"yolov8{size}.pt"))
    except Exception as e:  # no network: requests/urllib errors of many kinds
        path = Path(f"yolov8{size}.pt")
        if not path.is_file():
            raise PbkitError(
                f"pretrained weights yolov8{size}.pt need the network ({type(e).__name__});"
                f" download yolov8{size}.pt elsewhere and pass --checkpoint yolov8{size}.pt --set"
                " model.trust_checkpoint=true"
            ) from e
    if not path.is_file():
        raise PbkitError(
            f"pretrained weights yolov8{size}.pt could not be fetched (offline?); download it"
            f" elsewhere and pass --checkpoint yolov8{size}.pt --set model.trust_checkpoint=true"
        )
    return path


class C2fSplit(nn.Module):
    """C2f with its first 1x1 convolution split in two (cv0, cv1): no chunk, same function."""

    def __init__(self, c2f: nn.Module) -> None:
        super().__init__()
        c = c2f.c
        self.c = c
        self.cv0 = copy.deepcopy(c2f.cv1)
        self.cv1 = copy.deepcopy(c2f.cv1)
        for conv, part in ((self.cv0, slice(0, c)), (self.cv1, slice(c, 2 * c))):
            _slice_conv_bn(conv, part)
        self.cv2 = c2f.cv2
        self.m = c2f.m
        for attr in ("i", "f", "type", "np"):  # ultralytics' graph bookkeeping on model.model[i]
            if hasattr(c2f, attr):
                setattr(self, attr, getattr(c2f, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def _slice_conv_bn(block: nn.Module, part: slice) -> None:
    """Keep output channels ``part`` of an ultralytics Conv (conv + bn)."""
    conv, bn = block.conv, block.bn
    conv.weight = nn.Parameter(conv.weight.data[part].clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.data[part].clone())
    conv.out_channels = conv.weight.shape[0]
    bn.weight = nn.Parameter(bn.weight.data[part].clone())
    bn.bias = nn.Parameter(bn.bias.data[part].clone())
    bn.running_mean = bn.running_mean[part].clone()
    bn.running_var = bn.running_var[part].clone()
    bn.num_features = bn.weight.shape[0]


def make_prunable(model: nn.Module) -> nn.Module:
    """Replace every C2f by its split equivalent, in place; returns the model."""
    with ultralytics_offline():
        from ultralytics.nn.modules.block import C2f

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is C2f:
                setattr(parent, name, C2fSplit(child))
    return model


def detect_head(model: nn.Module) -> list[nn.Module]:
    with ultralytics_offline():
        from ultralytics.nn.modules.head import Detect

    return [m for m in model.modules() if isinstance(m, Detect)]


# In the flattened eval outputs [decoded, boxes, scores, *neck features], the raw head outputs.
RAW_HEAD = (1, 2)
RAW_HEAD_LABEL = "raw head outputs (box distributions, class logits)"


def raw_outputs(out: Any) -> list[torch.Tensor]:
    """The raw per-level head tensors of an eval-mode forward ``(decoded, [p3, p4, p5])``."""
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], list | tuple | dict):
        raw = out[1]
        if isinstance(raw, dict):
            raw = [v for v in raw.values() if isinstance(v, torch.Tensor)]
        return list(raw)
    return [out] if isinstance(out, torch.Tensor) else list(out)
