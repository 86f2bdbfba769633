"""Semantic segmentation: mIoU (and pixel accuracy) over the test split, per-pixel cross-entropy
(255 ignored) in pbkit's training loop, distillation per pixel from the dense teacher, calibration
batches with the segmentation loss, the per-class head convolutions protected, parity on the
per-pixel logits."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pbkit.core import device
from pbkit.core.errors import PbkitError
from pbkit.data import DataBundle
from pbkit.models import ModelSpec, segment
from pbkit.tasks.base import EngineScore, Predict
from pbkit.tasks.classify import Classify, speed

IGNORE = 255


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The (target, prediction) pixel counts, ignored pixels left out."""
    keep = target != IGNORE
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def miou(conf: torch.Tensor) -> tuple[float, float]:
    """(mean IoU over the classes present in the labels or the predictions, pixel accuracy), in
    percent."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    seen = union > 0
    if not bool(seen.any()):
        raise PbkitError("evaluation set has no labelled pixels")
    return float(100.0 * (inter[seen] / union[seen]).mean()), float(
        100.0 * inter.sum() / conf.sum()
    )


@torch.no_grad()
def scores_of(model: nn.Module, loader: DataLoader[Any], num_classes: int) -> dict[str, float]:
    was_training = model.training
    model.eval()
    dev = device.of(model)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for x, y in loader:
        conf += confusion(model(device.to(x, dev)).argmax(dim=1).cpu(), y, num_classes)
    model.train(was_training)
    m, acc = miou(conf)
    return {"mIoU": m, "pixel_acc": acc}


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, ignore_index=IGNORE)


def kd_loss_dense(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Distillation per pixel: T^2 * KL(softmax(teacher/T) || softmax(student/T)) over the classes
    (dim 1) of each pixel, averaged over pixels and images; no gradient into the teacher."""
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student / t, dim=1), F.softmax(teacher.detach() / t, dim=1), reduction="none"
    )
    return kl.sum(dim=1).mean() * t * t


class Segment(Classify):
    """Classification per pixel: the training loop, distillation and calibration are
    classification's, with the per-pixel loss, metric and KD term."""

    name = "segment"
    title = "segmentation"
    metric = "mIoU"
    history_metric = "mIoU"
    kd_term = staticmethod(kd_loss_dense)
    metric_is_sample_mean = False  # mIoU pools intersections and unions over the whole split

    def protected(self, model: nn.Module, spec: ModelSpec) -> list[nn.Module]:
        return segment.heads(model, spec.num_classes)

    def evaluate(
        self, model: nn.Module, bundle: DataBundle, spec: ModelSpec, batch_size: int
    ) -> float:
        return self.scores(model, bundle, spec, batch_size)[self.metric]

    def scores(
        self, model: nn.Module, bundle: DataBundle, spec: ModelSpec, batch_size: int
    ) -> dict[str, float]:
        self.check_data(bundle, "evaluating")
        return scores_of(model, bundle.loader("test", batch_size), spec.num_classes)

    @torch.no_grad()
    def engine_score(
        self,
        predict: Predict,
        model: nn.Module,
        bundle: DataBundle,
        spec: ModelSpec,
        batch_size: int,
    ) -> EngineScore:
        """mIoU through the engine and PyTorch's; agreement: the share of labelled pixels whose
        class is PyTorch's."""
        import numpy as np

        self.check_data(bundle, "evaluating")
        model = model.eval().float().cpu()
        k = spec.num_classes
        conf = torch.zeros(k, k, dtype=torch.long)
        ref_conf = torch.zeros(k, k, dtype=torch.long)
        same = pixels = images = 0
        for x, y in bundle.loader("test", batch_size):
            ref = model(x.float()).argmax(dim=1)
            got = torch.from_numpy(np.asarray(predict(x.float().numpy())[0])).argmax(dim=1)
            conf += confusion(got, y, k)
            ref_conf += confusion(ref, y, k)
            keep = y != IGNORE
            same += int((got[keep] == ref[keep]).sum())
            pixels += int(keep.sum())
            images += len(y)
        value, ref_value = miou(conf)[0], miou(ref_conf)[0]
        return EngineScore(self.metric, value, ref_value, 100.0 * same / max(pixels, 1), images)

    def loss(
        self, out: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        return seg_loss(out, target)

    def test_metric(self, model: nn.Module, loader: DataLoader[Any], spec: ModelSpec) -> float:
        return scores_of(model, loader, spec.num_classes)["mIoU"]

    def notes(self, model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
        return segment.notes(model)

    def epoch_line(self, row: dict[str, float]) -> str:
        m = f" mIoU {row['mIoU']:.2f}" if "mIoU" in row else ""
        return f"loss {row['loss']:.3f}{m}" + speed(row)
