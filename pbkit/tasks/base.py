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
from collections.abc import Callable
from typing import Any

from torch import nn

from pbkit.core.config import CalibrationCfg, KDCfg
from pbkit.core.errors import PbkitError
from pbkit.data import DataBundle
from pbkit.models import ModelSpec
from pbkit.pruning import Calibration
from pbkit.train.distributed import Dist

OnEpoch = Callable[[int, dict[str, float]], None]


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
        recipe: dict[str, Any],
        *,
        eval_batch_size: int,
        evaluate_each_epoch: bool = True,
        on_epoch: OnEpoch | None = None,
        regularize: Callable[[], None] | None = None,
        after_epoch: Callable[[], None] | None = None,
        teacher: nn.Module | None = None,
        kd: KDCfg | None = None,
        max_iters: int | None = None,
        dist: Dist | None = None,
    ) -> dict[str, Any]:
        """Train ``model`` in place with ``recipe``; return the recipe as run with its history.
        ``regularize`` runs between backward and the optimizer step, ``after_epoch`` after each
        epoch (sparse training); with ``teacher`` and ``kd`` the loss distils the teacher's
        outputs into the model's; ``max_iters`` stops after that many optimizer steps (training
        between pruning steps); with ``dist`` this process is one rank of a DistributedDataParallel
        job (``recipe["batch_size"]`` is the global batch)."""

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
