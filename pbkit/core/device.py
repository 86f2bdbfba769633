"""Where a run computes (the ``device`` setting): training, evaluation, calibration, distillation
and the pruning steps run on the model's device, and every loop moves its batches to it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pbkit.core.errors import PbkitError


def resolve(name: str) -> torch.device:
    """``auto``: the first CUDA device when one is visible, else the CPU; ``cpu``, ``cuda``,
    ``cuda:N`` as named, or one line saying why not."""
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PbkitError(
            f"device {name}: no CUDA device is visible (torch.cuda.is_available() is False); "
            "use device=cpu or device=auto"
        )
    dev = torch.device(name)
    index = dev.index if dev.index is not None else 0
    if index >= torch.cuda.device_count():
        raise PbkitError(
            f"device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    return torch.device("cuda", index)


def of(model: nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to(obj: Any, device: torch.device) -> Any:
    """Tensors (in tuples, lists and dicts too) moved to ``device``; anything else as it is."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else obj.to(device, non_blocking=True)
    if isinstance(obj, tuple | list):
        return type(obj)(to(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: to(v, device) for k, v in obj.items()}
    return obj


def name(dev: torch.device) -> str:
    """How the record names a device: ``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return str(dev)
