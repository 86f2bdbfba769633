"""Semantic segmentation: mIoU (and pixel accuracy) over the test split, per-pixel cross-entropy
(255 ignored) in pbkit's training loop, distillation per pixel from the dense teacher, calibration
batches with the segmentation loss, the per-class head convolutions protected, parity on the
per-pixel logits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pbkit.core.config import CalibrationCfg, KDCfg
from pbkit.core.errors import PbkitError
from pbkit.data import DataBundle
from pbkit.models import ModelSpec, segment
from pbkit.prune import Calibration
from pbkit.tasks.base import OnEpoch, Task
from pbkit.tasks.classify import classification_batches, distilled
from pbkit.train.loop import fit

IGNORE = 255


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The (target, prediction) pixel counts, ignored pixels left out."""
    keep = target != IGNORE
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def miou(conf: torch.Tensor) -> tuple[float, float]:
    """(mean IoU over the classes present in the labels or the predictions, pixel accuracy), in percent."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    seen = union > 0
    if not bool(seen.any()):
        raise PbkitError("evaluation set has no labelled pixels")
    return float(100.0 * (inter[seen] / union[seen]).mean()), float(100.0 * inter.sum() / conf.sum())


@torch.no_grad()
def scores_of(model: nn.Module, loader: DataLoader[Any], num_classes: int) -> dict[str, float]:
    was_training = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for x, y in loader:
        conf += confusion(model(x).argmax(dim=1), y, num_classes)
    model.train(was_training)
    m, acc = miou(conf)
    return {"mIoU": m, "pixel_acc": acc}


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, ignore_index=IGNORE)


def kd_loss_dense(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Distillation per pixel: T^2 * KL(softmax(teacher/T) || softmax(student/T)) over the classes
    (dim 1) of each pixel, averaged over pixels and images; no gradient into the teacher."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, dim=1), F.softmax(teacher.detach() / t, dim=1), reduction="none")
    return kl.sum(dim=1).mean() * t * t


class Segment(Task):
    name = "segment"
    title = "segmentation"
    metric = "mIoU"
    history_metric = "mIoU"

    def protected(self, model: nn.Module, spec: ModelSpec) -> list[nn.Module]:
        return segment.heads(model, spec.num_classes)

    def evaluate(self, model: nn.Module, bundle: DataBundle, spec: ModelSpec, batch_size: int) -> float:
        return self.scores(model, bundle, spec, batch_size)[self.metric]

    def scores(self, model: nn.Module, bundle: DataBundle, spec: ModelSpec, batch_size: int) -> dict[str, float]:
        self.check_data(bundle, "evaluating")
        return scores_of(model, bundle.loader("test", batch_size), spec.num_classes)

    def train(self, model: nn.Module, bundle: DataBundle, spec: ModelSpec, recipe: dict[str, Any], *,
              eval_batch_size: int, evaluate_each_epoch: bool = True, on_epoch: OnEpoch | None = None,
              regularize: Callable[[], None] | None = None, after_epoch: Callable[[], None] | None = None,
              teacher: nn.Module | None = None, kd: KDCfg | None = None,
              max_iters: int | None = None) -> dict[str, Any]:
        self.check_data(bundle, "training")
        test = bundle.loader("test", eval_batch_size) if evaluate_each_epoch else None

        def task_loss(m: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            out = m(batch[0])
            return seg_loss(out, batch[1]), out

        return fit(model, bundle.loader("train", int(recipe["batch_size"]), seed=int(recipe["seed"])), recipe,
                   loss_fn=distilled(task_loss, teacher, kd, term=kd_loss_dense),
                   evaluate=(lambda m: scores_of(m, test, spec.num_classes)["mIoU"]) if test is not None else None,
                   metric_key=self.history_metric, on_epoch=on_epoch, after_backward=regularize,
                   after_epoch=after_epoch, max_iters=max_iters)

    def calibration(self, bundle: DataBundle, cfg: CalibrationCfg, spec: ModelSpec) -> Calibration:
        self.check_data(bundle, "calibrating")
        batches = classification_batches(bundle, cfg.batches, cfg.batch_size, cfg.seed)
        return Calibration(batches, self.title, loss=lambda m, b: seg_loss(m(b[0]), b[1]),
                           sample=lambda b, i: (b[0][i:i + 1], b[1][i:i + 1]), output_loss=seg_loss,
                           info={"dataset": bundle.name, "batches": len(batches), "batch_size": cfg.batch_size,
                                 "seed": cfg.seed, "samples": sum(len(y) for _, y in batches)})

    def notes(self, model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
        return segment.notes(model)

    def epoch_line(self, row: dict[str, float]) -> str:
        m = f" mIoU {row['mIoU']:.2f}" if "mIoU" in row else ""
        return f"loss {row['loss']:.3f}{m}"
