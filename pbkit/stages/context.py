"""What every stage runs with, and what they share: one :class:`Context` and one signature,
``run(ctx, rec) -> Record`` (the prune stage, which makes the run folder, from ``ctx.plan``; the
others from the record so far). The stages never import each other (import-linter holds it),
but for the bench, which exports what it measures first."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbkit.core import config, record
from pbkit.core.errors import PbkitError
from pbkit.data import DataBundle, configured
from pbkit.models import ModelSpec, resolve
from pbkit.stages.rundir import Plan
from pbkit.tasks import Task


@dataclass(frozen=True)
class Context:
    """A stage's run: its folder, this command's configuration (not the record's: trust, for one,
    is the command's to give), whether to print progress, and, for the prune stage, the plan."""

    run_dir: Path
    cfg: config.Config
    quiet: bool = False
    plan: Plan | None = None

    @property
    def trust(self) -> bool:
        """Whether model files that hold a pickled model may be loaded (their code runs)."""
        return self.cfg.model.trust_checkpoint

    @classmethod
    def of(cls, plan: Plan, quiet: bool = False) -> Context:
        return cls(plan.run_dir, plan.cfg, quiet, plan)


# a stage: the record so far (None for the prune stage, which makes it) -> the record after it
Stage = Callable[[Context, "record.Record | None"], record.Record]


@contextlib.contextmanager
def budgeted(ctx: Context, what: str) -> Iterator[None]:
    """The export and bench stages under the memory and time budgets ``limits`` sets (memory: 75%
    of the machine's by default), as the prune stage runs under ``prune.max_memory_gib``: past
    one, one line and nothing half-written."""
    from pbkit.core import budget

    lim = ctx.cfg.limits
    memory = lim.memory_gib if lim.memory_gib is not None else budget.default_memory_gib()
    hint = "raise limits.memory_gib / limits.stage_s if the machine has room"
    # sampled twice a second: a finer watch would share the cores with what the bench measures
    keys = ("limits.memory_gib", "limits.stage_s")
    run = ctx.run_dir.name
    with budget.guarded(f"{what} of run {run}", memory, lim.stage_s, hint, 0.5, keys):
        yield


def need(rec: record.Record | None, stage: str) -> record.Record:
    """The record a stage after prune works on (there is one: the orchestrator made it first)."""
    if rec is None:
        raise PbkitError(f"the {stage} stage needs the run's record: prune first")
    return rec


def dataset(cfg: config.Config) -> DataBundle | None:
    """The dataset the configuration names, loaded (None for a data-free run)."""
    return configured(cfg.dataset, cfg.model.num_classes)


def resolve_spec(
    cfg: config.Config, bundle: DataBundle | None, planned: ModelSpec | None = None
) -> ModelSpec:
    """The model spec with classes and input size from the dataset where the config leaves them;
    a user's model (``planned``, as the plan resolved it) keeps the input size it was given or
    carries (an ultralytics checkpoint's training size) over a dataset's default."""
    size = cfg.model.input_size or cfg.dataset.image_size
    if size is None and planned is not None and planned.origin is not None:
        size = planned.input_size
    spec = resolve(
        cfg.model.name,
        num_classes=cfg.model.num_classes or (bundle.num_classes if bundle else None),
        input_size=size or (bundle.image_size if bundle else None),
        kwargs=cfg.model.kwargs,
        task=cfg.model.task,
        trust=cfg.model.trust_checkpoint,
    )
    if bundle is not None and spec.num_classes != bundle.num_classes:
        raise PbkitError(
            f"model.num_classes={spec.num_classes} but dataset {bundle.name} has"
            f" {bundle.num_classes} classes"
        )
    return spec


def scores(
    task: Task, model: Any, bundle: DataBundle | None, spec: ModelSpec, cfg: config.Config
) -> dict[str, float] | None:
    """The task's metrics in percent (its main ``metric`` and the others it reports); None for a
    data-free run."""
    return None if bundle is None else task.scores(model, bundle, spec, cfg.dataset.eval_batch_size)


def put_scores(
    acc: record.Accuracy, task: Task, point: str, values: dict[str, float] | None
) -> record.Accuracy:
    """The task's scores at one point (base, pruned, finetuned) into the record's accuracy: the
    main metric in its field, the others under ``others``; nothing for a data-free run."""
    if values is not None:
        acc.metric = task.metric
        setattr(acc, point, values[task.metric])
        for name, value in values.items():
            if name != task.metric:
                acc.others.setdefault(name, {})[point] = value
    return acc
