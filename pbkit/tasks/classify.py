"""Classification: top-1 accuracy, cross-entropy (with the recipe's label smoothing) in pbkit's
training loop, calibration batches from the training split, the classifier head protected."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pbkit.core import device
from pbkit.core.config import CalibrationCfg, KDCfg
from pbkit.core.errors import PbkitError
from pbkit.data import DataBundle
from pbkit.models import ModelSpec, classifier_heads
from pbkit.pruning import Calibration
from pbkit.tasks.base import EngineScore, Predict, Task
from pbkit.train.distributed import shard_loader
from pbkit.train.loop import fit
from pbkit.train.recipe import TrainRequest


@torch.no_grad()
def top1(model: nn.Module, loader: DataLoader[Any]) -> float:
    """Top-1 accuracy in percent."""
    was_training = model.training
    model.eval()
    dev = device.of(model)
    correct = total = 0
    for x, y in loader:
        x, y = device.to(x, dev), device.to(y, dev)
        pred = model(x).argmax(dim=1)
        correct += int((pred == y).sum())
        total += int(y.numel())
    model.train(was_training)
    if total == 0:
        raise PbkitError("evaluation set is empty")
    return 100.0 * correct / total


@torch.no_grad()
def engine_top1(
    predict: Predict, model: nn.Module, loader: DataLoader[Any]
) -> tuple[float, float, float, int]:
    """(engine top-1, PyTorch top-1, top-1 agreement, images): each batch through both, on the
    CPU, PyTorch in fp32."""
    model = model.eval().float().cpu()
    right = torch_right = same = total = 0
    for x, y in loader:
        ref = model(x.float()).argmax(dim=1)
        got = torch.from_numpy(np.asarray(predict(x.float().numpy())[0])).argmax(dim=1)
        right += int((got == y).sum())
        torch_right += int((ref == y).sum())
        same += int((got == ref).sum())
        total += int(y.numel())
    if total == 0:
        raise PbkitError("evaluation set is empty")
    return 100.0 * right / total, 100.0 * torch_right / total, 100.0 * same / total, total


def speed(row: dict[str, float]) -> str:
    """`` 1234 img/s`` for a training epoch's progress line."""
    return f" {row['images_per_s']:.0f} img/s" if row.get("images_per_s") else ""


def classification_batches(
    bundle: DataBundle, batches: int, batch_size: int, seed: int
) -> list[Any]:
    """The pinned calibration set: the same seed gives the same images and labels."""
    torch.manual_seed(seed)  # augmentations draw from torch's generator (restored after the run)
    out = []
    for x, y in bundle.loader("train", batch_size, seed=seed, shuffle=True):
        out.append((x, y))
        if len(out) == batches:
            break
    return out


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term on logits: T^2 * KL(softmax(teacher/T) || softmax(student/T)),
    averaged over the batch; the teacher's logits carry no gradient."""
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student / t, dim=1),
            F.softmax(teacher.detach() / t, dim=1),
            reduction="batchmean",
        )
        * t
        * t
    )


def distilled(
    task_loss: Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]],
    teacher: nn.Module | None,
    kd: KDCfg | None,
    term: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] = kd_loss,
) -> Callable[[nn.Module, Any], torch.Tensor]:
    """(1 - alpha) * task loss + alpha * ``term`` (:func:`kd_loss` on logits by default), the
    teacher in eval mode without gradients; the task loss alone without a teacher or with KD off."""
    if teacher is None or kd is None or not kd.enabled:
        return lambda m, batch: task_loss(m, batch)[0]
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        value, out = task_loss(m, batch)
        with torch.no_grad():
            target = teacher(batch[0])
        return (1 - kd.alpha) * value + kd.alpha * term(out, target, kd.temperature)

    return loss


class Classify(Task):
    name = "classify"
    title = "classification"
    metric = "top1"
    history_metric = "accuracy"

    def protected(self, model: nn.Module, spec: ModelSpec) -> list[nn.Module]:
        heads = classifier_heads(model, spec.num_classes)
        if not heads:
            raise PbkitError(
                f"could not find the classifier head (a layer with {spec.num_classes} outputs) to"
                " protect"
            )
        return heads

    def evaluate(
        self, model: nn.Module, bundle: DataBundle, spec: ModelSpec, batch_size: int
    ) -> float:
        self.check_data(bundle, "evaluating")
        return top1(model, bundle.loader("test", batch_size))

    def engine_score(
        self,
        predict: Predict,
        model: nn.Module,
        bundle: DataBundle,
        spec: ModelSpec,
        batch_size: int,
    ) -> EngineScore:
        self.check_data(bundle, "evaluating")
        value, ref, agree, n = engine_top1(predict, model, bundle.loader("test", batch_size))
        return EngineScore(self.metric, value, ref, agree, n)

    kd_term = staticmethod(kd_loss)  # the distillation term on the model's outputs

    def loss(
        self, out: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        """The task's training loss on a batch's outputs (cross-entropy, the recipe's label
        smoothing)."""
        return F.cross_entropy(out, target, label_smoothing=label_smoothing)

    def test_metric(self, model: nn.Module, loader: DataLoader[Any], spec: ModelSpec) -> float:
        """The metric evaluated after every training epoch."""
        return top1(model, loader)

    # the metric is a mean over test samples: across processes each rank evaluates its share and the
    # shares are weighted by their sizes (False: every rank evaluates the whole test split)
    metric_is_sample_mean = True

    def train(
        self,
        model: nn.Module,
        bundle: DataBundle,
        spec: ModelSpec,
        request: TrainRequest,
    ) -> dict[str, Any]:
        self.check_data(bundle, "training")
        recipe, dist = request.recipe, request.dist
        seed = recipe.seed
        train = bundle.loader(
            "train", dist.local_batch(recipe.batch_size) if dist else recipe.batch_size, seed=seed
        )
        test = (
            bundle.loader("test", request.eval_batch_size) if request.evaluate_each_epoch else None
        )
        if dist is not None:
            train = shard_loader(train, dist, seed, train=True)
            if test is not None and self.metric_is_sample_mean:
                test = shard_loader(test, dist, seed, train=False)

        def task_loss(m: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            out = m(batch[0])
            return self.loss(out, batch[1], recipe.label_smoothing), out

        def evaluate(m: nn.Module) -> float:
            assert test is not None
            value = self.test_metric(m, test, spec)
            if dist is None or not self.metric_is_sample_mean:
                return value
            share = len(test.dataset)
            weighted, total = dist.sum([value * share, float(share)])
            return weighted / total

        return fit(
            model,
            train,
            request,
            loss_fn=distilled(task_loss, request.teacher, request.kd, term=self.kd_term),
            evaluate=evaluate if test is not None else None,
            metric_key=self.history_metric,
        )

    def calibration(self, bundle: DataBundle, cfg: CalibrationCfg, spec: ModelSpec) -> Calibration:
        self.check_data(bundle, "calibrating")
        batches = classification_batches(bundle, cfg.batches, cfg.batch_size, cfg.seed)
        return self.calibration_of(
            batches,
            {
                "dataset": bundle.name,
                "batches": len(batches),
                "batch_size": cfg.batch_size,
                "seed": cfg.seed,
                "samples": sum(len(y) for _, y in batches),
            },
        )

    def calibration_of(self, batches: list[Any], info: dict[str, Any] | None = None) -> Calibration:
        """Labelled batches as a calibration set with the task's loss (without label smoothing)."""
        return Calibration(
            batches,
            self.title,
            loss=lambda m, b: self.loss(m(b[0]), b[1]),
            sample=lambda b, i: (b[0][i : i + 1], b[1][i : i + 1]),
            output_loss=lambda out, y: self.loss(out, y),
            info=info or {},
        )

    def epoch_line(self, row: dict[str, float]) -> str:
        acc = f" acc {row['accuracy']:.2f}" if "accuracy" in row else ""
        return f"loss {row['loss']:.3f}{acc}" + speed(row)
