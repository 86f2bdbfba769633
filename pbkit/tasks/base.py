"""The Task seam: everything that depends on what a model is for.

A stage never asks whether a model is a classifier or a detector; it asks the model's task:

- ``evaluate``: the task's metric (``metric``: top1, mAP50-95, mIoU) on the dataset's test split
  (``scores``: with the task's other metrics, e.g. pixel accuracy);
- ``train``: the training loop (base training, sparse training with a regularizer, finetuning)
  with the task's loss;
- ``calibration``: pinned batches and the task's loss for data-driven criteria;
- ``protected``: the modules pruning must never touch (classifier head, Detect head);
- ``parity_outputs``: which outputs parity compares after export;
- ``calibration_images``: the images INT8 quantization is calibrated on (the training split);
- ``engine_score``: the metric evaluated through an exported engine (a backend's runner), next to
  the PyTorch model's on the same images.

Implementations register in :mod:`pbkit.tasks`; a new task adds one module there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from pbkit.core.config import CalibrationCfg
from pbkit.core.errors import PbkitError
from pbkit.data import DataBundle
from pbkit.models import ModelSpec
from pbkit.pruning import Calibration
from pbkit.train.recipe import OnEpoch, TrainRequest

__all__ = ["EngineScore", "OnEpoch", "Predict", "Task", "TrainRequest"]

# an engine's forward: a float32 NCHW batch in, the model's outputs (as arrays) out
Predict = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class EngineScore:
    """The task's metric of one model evaluated through an engine, and of the PyTorch fp32 model on
    the same images in the same pass."""

    metric: str
    value: float  # through the engine, percent
    torch_value: float  # PyTorch's, percent
    agreement: float | None  # the share of predictions (images, pixels) equal to PyTorch's, %
    images: int


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

    def calibration_images(
        self, bundle: DataBundle, spec: ModelSpec, n: int, seed: int
    ) -> np.ndarray:
        """``n`` images of the training split (never the test split the metric is evaluated on),
        float32 NCHW as the model takes them; the same seed gives the same images."""
        import torch

        torch.manual_seed(seed)  # augmentations draw from torch's generator
        out: list[np.ndarray] = []
        got = 0
        for batch in bundle.loader("train", min(n, 256), seed=seed, shuffle=True):
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            out.append(x.float().numpy())
            got += len(out[-1])
            if got >= n:
                break
        if not out:
            raise PbkitError(f"{bundle.name} has no training images to calibrate with")
        return np.ascontiguousarray(np.concatenate(out)[:n], dtype=np.float32)

    def engine_score(
        self,
        predict: Predict,
        model: nn.Module,
        bundle: DataBundle,
        spec: ModelSpec,
        batch_size: int,
    ) -> EngineScore:
        """The metric of ``predict`` (an engine) and of ``model`` (PyTorch, fp32) on the test
        split, in one pass over the same batches."""
        raise PbkitError(
            f"accuracy on the engine is not available for {self.title} models yet (the PyTorch"
            " accuracy is in the record)"
        )

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
