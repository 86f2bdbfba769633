"""Stage 2, finetune: train the pruned model with the recorded recipe (the task's training loop,
with distillation from the dense base when ``finetune.kd`` is on) and evaluate it. Writes
``finetuned.pt``; from then on the run's ``pruned`` variant (export, bench) is the finetuned model,
and ``pruned.pt`` keeps the model as pruned.

With ``init: scratch`` the pruned architecture is re-initialised (small-dense) and trained with the
base recipe for as many epochs as base training, the pruning stage and finetuning took together
(the scratch baseline, setup SX-A of Wang et al. 2023).

The record's ``finetune`` holds the whole recipe as run (optimizer, schedule with milestones,
epochs, batch, weight decay, augmentation, label smoothing, KD, seed), the per-epoch history and
the trainability accuracy (TA).
"""

from __future__ import annotations

from typing import Any

from pbkit.core import config, device, record
from pbkit.core.console import Steps
from pbkit.core.errors import PbkitError
from pbkit.core.fileio import sha256_file
from pbkit.machine import envinfo
from pbkit.models import checkpoint
from pbkit.models.weights import reinitialize
from pbkit.stages import bases, distributed
from pbkit.stages.context import Context, dataset, need, put_scores, scores
from pbkit.stages.rundir import DENSE, FINETUNED_FILE, MODEL_FILES, PRUNED, StageClock, teacher_file
from pbkit.tasks import get as get_task
from pbkit.train.loop import trainability
from pbkit.train.recipe import Recipe, TrainRequest


def run(ctx: Context, rec: record.Record | None) -> record.Record:
    """Finetune the pruned model (or train its architecture from scratch) and record it."""
    run_dir, cfg, quiet, rec = ctx.run_dir, ctx.cfg, ctx.quiet, need(rec, "finetune")
    clock = StageClock("finetune")
    dev = device.resolve(cfg.device)
    bundle = dataset(cfg)
    assert bundle is not None  # the stage runs only with a dataset (rundir.finetunes)
    model, spec, _ = checkpoint.load_model(
        run_dir / MODEL_FILES[PRUNED], cfg.model.trust_checkpoint
    )
    model.to(dev)
    task = get_task(spec.task)
    env = envinfo.collect()
    trust = cfg.model.trust_checkpoint
    if cfg.init == "scratch":
        recipe, extra = scratch_recipe(rec, cfg)
        reinitialize(model, recipe.seed)
        teacher = None
        title = f"training the pruned architecture from scratch, {recipe.epochs} epochs"
    else:
        recipe, extra = Recipe.of(cfg.finetune), {"init": "pruned"}
        teacher = bases.teacher(
            cfg, lambda: checkpoint.load_model(run_dir / MODEL_FILES[DENSE], trust)[0], dev
        )
        title = f"finetuning {recipe.epochs} epochs" + (
            " with distillation" if teacher is not None else ""
        )
    steps = Steps(title + distributed.label(cfg), recipe.epochs, quiet)
    kd = cfg.finetune.kd if teacher is not None else None
    request = TrainRequest(
        recipe,
        eval_batch_size=cfg.dataset.eval_batch_size,
        on_epoch=lambda e, row: steps.update(e, task.epoch_line(row)),
        teacher=teacher,
        kd=kd,
    )
    teacher_path = None
    if kd is not None:
        teacher_path = teacher_file(kd.teacher) if kd.teacher else run_dir / MODEL_FILES[DENSE]
    history = distributed.train(
        cfg, task, model, bundle, spec, request, what="finetuning", teacher_file=teacher_path
    )
    steps.close(task.epoch_line(history["history"][-1]) if history.get("history") else "")
    put_scores(rec.accuracy, task, "finetuned", scores(task, model, bundle, spec, cfg))
    checkpoint.save_model(model, spec, run_dir / FINETUNED_FILE)
    rec.finetune = {
        **history,
        **extra,
        "kd": cfg.finetune.kd.model_dump() if teacher is not None else {"enabled": False},
        "augmentation": bundle.info.get("augmentation", "none"),
        "trainability": trainability(
            history.get("history") or [], task.history_metric, recipe.schedule
        ),
    }
    rec.artifacts["pruned_as_pruned"] = (
        rec.artifacts.get("pruned_as_pruned") or rec.artifacts[PRUNED]
    )
    rec.artifacts[PRUNED] = {
        "path": FINETUNED_FILE,
        "sha256": sha256_file(run_dir / FINETUNED_FILE),
        "finetuned": True,
    }
    clock.finish(
        rec, cfg, env, device=(history.get("distributed") or {}).get("device") or device.name(dev)
    )
    record.write(run_dir, rec)
    return rec


def scratch_recipe(rec: record.Record, cfg: config.Config) -> tuple[Recipe, dict[str, Any]]:
    """The base recipe, for the epochs base training, the pruning stage (sparse training; the
    training between interleaved pruning steps, in epochs rounded up) and finetuning took."""
    if rec.base_training is None:
        raise PbkitError(
            "init: scratch trains for as many epochs as the base took, so the base must be trained"
            " by pbkit (model.weights: random, base.epochs > 0, a dataset); this run's base was"
            f" {rec.model.weights}"
        )
    parts = {
        "base": int(rec.base_training.get("epochs") or cfg.base.epochs),
        "sparsify": 0,
        "interleave": 0,
        "finetune": cfg.finetune.epochs,
    }
    if rec.method.sparsify:
        parts["sparsify"] = int(rec.method.sparsify.get("epochs") or 0)
    if rec.method.interleave:
        parts["interleave"] = int(rec.method.interleave.get("epochs") or 0)
    total = sum(parts.values())
    return Recipe.of(cfg.base, epochs=total), {
        "init": "scratch",
        "epochs_total": total,
        "epochs_from": parts,
    }
