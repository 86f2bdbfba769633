"""The dense base every method of a comparison prunes: random (seeded), the hub's pretrained
weights, a checkpoint file, or trained once per (architecture, dataset, recipe, seed) and reused
by hash from ``<results>/bases/``. Training a base takes a lock, so concurrent runs that need
the same base train it once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbkit.core import config, lock
from pbkit.core.console import Steps, note
from pbkit.core.fileio import ensure_writable_dir, sha256_file
from pbkit.data import DataBundle
from pbkit.models import ModelSpec, build, checkpoint, weights
from pbkit.stages import distributed
from pbkit.stages.rundir import dataset_fields, slug, teacher_file, trained_fields, trains_base
from pbkit.tasks import Task
from pbkit.train.recipe import Recipe, TrainRequest

Weights = dict[str, Any]  # weights, weights_path, weights_sha256 (record.ModelInfo fields)


def obtain(
    cfg: config.Config,
    spec: ModelSpec,
    task: Task,
    bundle: DataBundle | None,
    bases_dir: Path,
    quiet: bool = False,
    dev: torch.device | None = None,
) -> tuple[nn.Module, Weights, dict[str, Any] | None]:
    """The dense base model on ``dev`` (trained there when pbkit trains it), how its weights came
    to be, and its training history if trained."""
    model, w, history = _obtain(
        cfg, spec, task, bundle, bases_dir, quiet, dev or torch.device("cpu")
    )
    return model.to(dev or torch.device("cpu")), w, history


def _obtain(
    cfg: config.Config,
    spec: ModelSpec,
    task: Task,
    bundle: DataBundle | None,
    bases_dir: Path,
    quiet: bool,
    dev: torch.device,
) -> tuple[nn.Module, Weights, dict[str, Any] | None]:
    m = cfg.model
    origin = spec.origin
    if m.weights == "checkpoint" or (
        origin is not None and origin.kind == "ultralytics-checkpoint" and m.weights == "random"
    ):  # (an ultralytics checkpoint given as the model brings its weights)
        file = m.checkpoint if m.weights == "checkpoint" else (origin.path if origin else None)
        assert file is not None  # the run's identity checked it
        trust = m.trust_checkpoint
        model = checkpoint.load_base(spec, file, trust=trust, seed=m.seed)
        where = str(Path(file).expanduser().resolve())
        return (
            model,
            {"weights": "checkpoint", "weights_path": where, "weights_sha256": sha256_file(where)},
            None,
        )
    if m.weights == "pretrained":
        model = build(spec, pretrained=True, seed=m.seed)
        return (
            model,
            {
                "weights": "pretrained",
                "weights_path": None,
                "weights_sha256": weights.state_sha256(model),
            },
            None,
        )
    model = build(spec, seed=m.seed)
    # a pickled module or a Python object comes with its own weights
    given = "given" if origin is not None and origin.pickled else "random"
    if bundle is None or not trains_base(cfg):
        return (
            model,
            {
                "weights": given,
                "weights_path": None,
                "weights_sha256": weights.state_sha256(model),
            },
            None,
        )
    arch = spec.to_dict()
    if origin is not None:  # what the source is, not where it lies
        arch["origin"] = origin.identity()
    key = json.dumps(
        {
            "spec": arch,
            "seed": m.seed,
            "dataset": dataset_fields(cfg),
            "recipe": trained_fields(cfg, cfg.base),
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = bases_dir / f"{slug(spec.label)}__{bundle.name}__{digest}.pt"
    ensure_writable_dir(bases_dir)
    with lock.exclusive(
        bases_dir / f".{path.name}.lock",
        on_wait=lambda who: note(f"base {path.name} is being trained by {who}; waiting", quiet),
    ):
        if path.is_file():
            note(f"reusing base model {path}", quiet)
            model, _, extra = checkpoint.load_model(path, trust=m.trust_checkpoint)
            return model, _trained(path), extra.get("training")
        steps = Steps(
            f"training base {spec.name} on {bundle.name}{distributed.label(cfg)}",
            cfg.base.epochs,
            quiet,
        )
        model.to(dev)
        request = TrainRequest(
            Recipe.of(cfg.base),
            eval_batch_size=cfg.dataset.eval_batch_size,
            on_epoch=lambda e, row: steps.update(e, task.epoch_line(row)),
        )
        history = distributed.train(cfg, task, model, bundle, spec, request, what="base training")
        steps.close(task.epoch_line(history["history"][-1]) if history.get("history") else "")
        checkpoint.save_model(model, spec, path, extra={"training": history})
    return model, _trained(path), history


def teacher(
    cfg: config.Config, dense: Callable[[], nn.Module], dev: torch.device | None = None
) -> nn.Module | None:
    """The distillation teacher when ``finetune.kd`` is on: the named model file, else the run's own
    dense base (``dense()``); on ``dev`` (the student's), in eval mode, without gradients."""
    kd = cfg.finetune.kd
    if not kd.enabled:
        return None
    model = (
        checkpoint.load_model(teacher_file(kd.teacher), cfg.model.trust_checkpoint)[0]
        if kd.teacher
        else dense()
    )
    model.to(dev or torch.device("cpu")).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _trained(path: Path) -> Weights:
    return {"weights": "trained", "weights_path": str(path), "weights_sha256": sha256_file(path)}
