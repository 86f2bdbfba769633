"""The Task seam: everything that depends on what a model is for.

A stage never asks whether a model is a classifier or a detector; it asks the model's task:

- ``evaluate``: the task's metric (``metric``: top1, mAP50-95, mIoU) on the dataset's test split
  (``scores``: with the task's other metrics, e.g. pixel accuracy);
- ``train``: the training loop (base training, sparse training with a regularizer, finetuning)
  with the task's loss;
- ``calibration``: pinned batches and the task's loss for data-driven criteria;
- ``protected``: the modules pruning must never touch (classifier head, Detect head);
- ``parity_outputs``: which outputs parity compares after export.

Implementations register in :mod:`pbkit.tasks`; a new task adds one module there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import nn

from pbkit.core.config import CalibrationCfg
from pbkit.core.errors import PbkitError
from pbkit.data import DataBundle
from pbkit.models import ModelSpec
from pbkit.pruning import Calibration
from pbkit.train.recipe import OnEpoch, TrainRequest

__all__ = ["OnEpoch", "Task", "TrainRequest"]


_TITLES: dict[str, str] = {}  # task key -> title, filled as implementations are defined


class Task(ABC):
    name: str  # the key models and datasets name: classify | detect | segment
    title: str  # in messages: classification | detection | segmentation
    metric: str  # the evaluation metric, in percent: top1 | mAP50-95 | mIoU
    history_metric: str  # the metric's key in a training history's per-epoch rows
    trains_by_iterations: bool = (
        True  # train(max_iters=...) works: the interleaved pruning schedule
    )
    not_distributed: str | None = (
        None  # why train(dist=...) (DDP across processes) is not available, if it is not
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _TITLES[cls.name] = cls.title

    def check_data(self, bundle: DataBundle, purpose: str) -> None:
        """Refuse a dataset that serves another task, naming both."""
        if bundle.task != self.name:
            raise PbkitError(
                f"{purpose} a {self.title} model needs a {self.title} dataset; {bundle.name} is a "
                f"{_TITLES.get(bundle.task, bundle.task)} dataset"
            )

    @abstractmethod
    def protected(self, model: nn.Module, spec: ModelSpec) -> list[nn.Module]:
        """Modules pruning never touches (they produce the task's outputs)."""

    @abstractmethod
    def evaluate(
        self, model: nn.Module, bundle: DataBundle, spec: ModelSpec, batch_size: int
    ) -> float:
        """The task's metric of ``model`` on the test split, in percent."""

    @abstractmethod
    def train(
        self,
        model: nn.Module,
        bundle: DataBundle,
        spec: ModelSpec,
        request: TrainRequest,
    ) -> dict[str, Any]:
        """Train ``model`` in place as ``request`` asks (its recipe, hooks, teacher, distributed
        rank: :class:`~pbkit.train.recipe.TrainRequest`); return the recipe as run with its
        history."""

    @abstractmethod
    def calibration(self, bundle: DataBundle, cfg: CalibrationCfg, spec: ModelSpec) -> Calibration:
        """Pinned calibration batches (same seed, same inputs) with the task's loss where the
        dataset carries the task's labels."""

    def scores(
        self, model: nn.Module, bundle: DataBundle, spec: ModelSpec, batch_size: int
    ) -> dict[str, float]:
        """Every metric the task reports, the main one (``metric``) included; one pass where the
        task computes several at once (segmentation: mIoU and pixel accuracy)."""
        return {self.metric: self.evaluate(model, bundle, spec, batch_size)}

    def notes(self, model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
        """Facts about the model's task heads the record keeps (e.g. a dropped auxiliary head)."""
        return {}

    def parity_outputs(self, outputs: list[Any]) -> tuple[list[Any], str]:
        """The outputs parity compares, and how the record names them."""
        return outputs, "all outputs"

    def epoch_line(self, row: dict[str, float]) -> str:
        """One progress line for a finished training epoch."""
        return " ".join(
            f"{k} {v:.3f}" if k == "loss" else f"{k} {v:.2f}"
            for k, v in row.items()
            if k not in ("epoch", "lr")
        )
