"""A model's outputs as a flat list of tensors (exporters, runners and parity all need it)."""

from __future__ import annotations

from typing import Any

import torch


def output_tensors(out: Any) -> list[torch.Tensor]:
    """A model's outputs (tensors, or lists / tuples / dicts of them) as a flat list of tensors."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, list | tuple):
        return [t for o in out for t in output_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in output_tensors(o)]
    return []
