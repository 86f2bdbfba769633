"""Step 4 of the study: the training loop used for base training, sparse training and finetuning.

A recipe is plain data (optimizer, LR schedule, epochs, batch, seed, ...) stored verbatim in the
record, so that two runs can be checked for holding it equal (../shared/reference/fairness.md).
The loss and the evaluation come from the task (:mod:`pbkit.tasks`); the loop knows neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from pbkit.core import device
from pbkit.core.errors import PbkitError
from pbkit.train.distributed import set_epoch
from pbkit.train.recipe import Recipe, TrainRequest


def _optimizer(model: nn.Module, r: Recipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if r.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=r.lr,
            momentum=r.momentum,
            weight_decay=r.weight_decay,
            nesterov=r.nesterov and r.momentum > 0,
        )
    if r.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
    if r.optimizer == "adam":
        return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)
    raise PbkitError(f"unknown optimizer {r.optimizer!r}; choose one of: adam, adamw, sgd")


def _scheduler(opt: torch.optim.Optimizer, r: Recipe) -> torch.optim.lr_scheduler.LRScheduler:
    s = r.schedule
    if s == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, r.milestone_epochs, gamma=r.gamma)
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(r.step_size, 1), gamma=r.gamma)
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(r.epochs, 1))
    if s == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise PbkitError(f"unknown schedule {s!r}; choose one of: constant, cosine, multistep, step")


Loss = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> scalar loss


def fit(
    model: nn.Module,
    train_loader: DataLoader[Any],
    request: TrainRequest,
    loss_fn: Loss,
    evaluate: Callable[[nn.Module], float] | None = None,
    metric_key: str = "accuracy",
) -> dict[str, Any]:
    """Train ``model`` in place with the request's recipe and the task's ``loss_fn``; return the
    recipe as run, its timing and per-epoch history (loss, the learning rate the epoch used, images
    per second and, with ``evaluate``, ``metric_key``; ``lr`` is the rate after the epoch's
    scheduler step). Batches move to the model's device; ``recipe.amp`` (bf16, fp16) runs the
    forward pass and loss under autocast, fp16 with a gradient scaler; ``recipe.channels_last``
    trains in that memory format.

    The request's ``regularize`` runs between ``loss.backward()`` and ``optimizer.step()`` (a
    regularizer's gradient), ``after_epoch`` after every epoch (e.g. GrowingReg's penalty update);
    ``max_iters`` stops after that many optimizer steps (training between pruning steps).

    With ``dist`` (a rank of a torchrun job; ``train_loader`` already sharded) the model trains
    wrapped in DistributedDataParallel, each epoch's loss and images are summed over the ranks and
    ``evaluate`` runs on every rank (it reduces what it measures itself).
    """
    recipe, dist, max_iters = request.recipe, request.dist, request.max_iters
    after_backward, after_epoch = request.regularize, request.after_epoch
    on_epoch = request.on_epoch
    torch.manual_seed(recipe.seed)
    dev = device.of(model)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.amp)
    scaler = torch.amp.GradScaler(dev.type, enabled=recipe.amp == "fp16")
    layout = torch.channels_last if recipe.channels_last else None
    if layout is not None:
        model.to(memory_format=layout)
    net = (
        dist.wrap(model) if dist is not None else model
    )  # the forward and backward pass; the optimizer
    opt = _optimizer(model, recipe)  # steps the parameters themselves
    sched = _scheduler(opt, recipe)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    iters = 0
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        total_loss = n = 0.0
        lr_used = opt.param_groups[0]["lr"]
        t_epoch = time.perf_counter()
        set_epoch(train_loader, epoch)
        for batch in train_loader:
            batch = device.to(batch, dev)
            if layout is not None and isinstance(batch, tuple | list) and batch[0].dim() == 4:
                batch = type(batch)([batch[0].contiguous(memory_format=layout), *batch[1:]])
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(net, batch)
            if not torch.isfinite(loss):
                raise PbkitError(
                    f"training diverged at epoch {epoch} (loss {loss.item()}); lower the learning"
                    " rate"
                )
            scaler.scale(loss).backward()
            if after_backward is not None:
                scaler.unscale_(opt)  # a regularizer's gradient is added to the true gradient
                after_backward()
            scaler.step(opt)
            scaler.update()
            total_loss += loss.item() * len(batch[0])
            n += len(batch[0])
            iters += 1
            if max_iters is not None and iters >= max_iters:
                break
        seconds = time.perf_counter() - t_epoch
        if dist is not None:  # every rank's images, in the ranks' mean time (they step together)
            total_loss, n, seconds = dist.sum([total_loss, n, seconds])
            seconds /= dist.world
        sched.step()
        if after_epoch is not None:
            after_epoch()
        row = {
            "epoch": epoch,
            "loss": total_loss / max(n, 1),
            "lr": opt.param_groups[0]["lr"],
            "lr_used": lr_used,
            "images_per_s": n / seconds if seconds > 0 else 0.0,
        }
        if evaluate is not None:
            row[metric_key] = evaluate(model)
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
        if max_iters is not None and iters >= max_iters:
            break
    model.eval()
    return {
        **recipe.as_record(),
        "milestones_epochs": recipe.milestone_epochs,
        "time_s": time.perf_counter() - t0,
        "history": history,
        "iterations": iters,
    }


STAGED = ("multistep", "step")  # schedules whose learning rate falls in stages


def trainability(
    history: list[dict[str, Any]], metric: str, schedule: str | None
) -> dict[str, Any] | None:
    """The trainability accuracy of Wang et al. (2023): the mean test metric over the epochs of
    the first learning-rate stage (the epochs trained at the first rate of a step schedule; for a
    schedule without stages, cosine or constant, every epoch), and whether the metric was still
    rising when the first decay came (least-squares slope over the stage's last three epochs > 0).
    None without per-epoch evaluation."""
    rows = [r for r in history if r.get(metric) is not None]
    if not rows:
        return None
    first = rows[0].get("lr_used")
    staged = (
        schedule in STAGED
        and first is not None
        and any(r.get("lr_used") is not None and r["lr_used"] < first * 0.999 for r in rows)
    )
    stage = [r for r in rows if not staged or r["lr_used"] >= (first or 0.0) * 0.999]
    values = [float(r[metric]) for r in stage]
    rising = None
    if staged and len(values) >= 2:
        tail = values[-3:]
        xs = list(range(len(tail)))
        mx, my = sum(xs) / len(xs), sum(tail) / len(tail)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, tail, strict=True)) / sum(
            (x - mx) ** 2 for x in xs
        )
        rising = slope > 0
    return {
        "ta": sum(values) / len(values),
        "metric": metric,
        "stage_epochs": len(stage),
        "staged": staged,
        "rising_at_first_decay": rising,
    }
