"""The calibration set data-driven criteria run before every pruning step, with the task's loss.

A task (:mod:`pbkit.tasks`) builds it: pinned batches (same seed, same inputs), the task's
training loss on a batch, how to cut a batch of one out of a batch (per-sample gradients), and,
where the loss is a plain function of the outputs, that function (vectorised per-sample gradients).
Without the task's labels (e.g. ``synthetic`` images for a detector) ``loss`` is None: criteria
that need gradients refuse it, feature-map criteria use the images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Batch = tuple[torch.Tensor, Any]  # (images, the task's targets)


@dataclass
class Calibration:
    batches: list[Batch]
    task: str  # the task's title, for messages ("classification", "detection")
    loss: Callable[[nn.Module, Batch], torch.Tensor] | None = None
    sample: Callable[[Batch, int], Batch] | None = None  # image i of a batch, as a batch of one
    output_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = (
        None  # vmap-able (out, y)
    )
    info: dict[str, Any] = field(
        default_factory=dict
    )  # dataset, batches, batch_size, seed, samples
