"""Stage 2, finetune: train the pruned model with the recorded recipe (the task's training loop)
and evaluate it. Writes ``finetuned.pt``; from then on the run's ``pruned`` variant (export,
bench) is the finetuned model, and ``pruned.pt`` keeps the model as pruned."""

from __future__ import annotations

from pathlib import Path

from pbkit.core import config, record
from pbkit.core.console import Steps
from pbkit.core.fileio import sha256_file
from pbkit.machine import envinfo
from pbkit.models import checkpoint
from pbkit.stages import prune
from pbkit.stages.rundir import FINETUNED_FILE, MODEL_FILES, PRUNED, StageClock
from pbkit.tasks import get as get_task


def run(run_dir: Path, rec: record.Record, cfg: config.Config, quiet: bool = False) -> record.Record:
    clock = StageClock("finetune")
    bundle = prune.dataset(cfg)
    assert bundle is not None  # the stage runs only with a dataset (rundir.finetunes)
    model, spec, _ = checkpoint.load_model(run_dir / MODEL_FILES[PRUNED])
    task = get_task(spec.task)
    env = envinfo.collect()
    steps = Steps(f"finetuning {cfg.finetune.epochs} epochs", cfg.finetune.epochs, quiet)
    history = task.train(model, bundle, spec, cfg.finetune.model_dump(), eval_batch_size=cfg.dataset.eval_batch_size,
                         on_epoch=lambda e, row: steps.update(e, task.epoch_line(row)))
    steps.close(task.epoch_line(history["history"][-1]) if history.get("history") else "")
    rec.accuracy.finetuned = prune.evaluate(task, model, bundle, spec, cfg)
    checkpoint.save_model(model, spec, run_dir / FINETUNED_FILE)
    rec.finetune = history
    rec.artifacts["pruned_as_pruned"] = rec.artifacts.get("pruned_as_pruned") or rec.artifacts[PRUNED]
    rec.artifacts[PRUNED] = {"path": FINETUNED_FILE, "sha256": sha256_file(run_dir / FINETUNED_FILE), "finetuned": True}
    clock.finish(rec, cfg, env)
    record.write(run_dir, rec)
    return rec
