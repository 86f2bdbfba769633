"""Stage 1, prune: the dense base, its accuracy, grouping and pruning to the target (with sparse
training or calibration where the method needs them), the pruned model's accuracy.

The run folder is built under a temporary name and renamed when complete, so an interrupted prune
stage leaves no run folder (a killed one leaves a ``.tmp-`` folder that the next start removes).
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pbkit import __version__
from pbkit.core import config, device, record
from pbkit.core.clock import utc_now
from pbkit.core.console import Steps, note
from pbkit.core.errors import PbkitError
from pbkit.core.fileio import atomic_write_json, sha256_file
from pbkit.data import DataBundle
from pbkit.data import load as load_data
from pbkit.machine import envinfo
from pbkit.measure import align, backends, layers
from pbkit.measure.backends import Backend
from pbkit.models import ModelSpec, checkpoint, counts, known_failure
from pbkit.pruning import Calibration, PruneResult, PruneSettings, prune_to_target
from pbkit.pruning.knapsack import Tools
from pbkit.pruning.latency import LatencySettings
from pbkit.pruning.methods import Method
from pbkit.stages import bases
from pbkit.stages.context import Context, dataset, put_scores, resolve_spec, scores
from pbkit.stages.rundir import DENSE, LATENCY_TABLE, MODEL_FILES, PRUNED, Plan, StageClock
from pbkit.tasks import Task
from pbkit.tasks import get as get_task
from pbkit.train.recipe import Recipe, TrainRequest


def run(ctx: Context, rec: record.Record | None = None) -> record.Record:
    """Prune to the target and write the run folder (dense.pt, pruned.pt, record.json): the
    first stage, which makes the record (``rec`` is None)."""
    plan, quiet = ctx.plan, ctx.quiet
    if plan is None:
        raise PbkitError("the prune stage makes a run folder from a plan (rundir.plan)")
    cfg, method = plan.cfg, plan.method
    clock = StageClock("prune")
    dev = device.resolve(cfg.device)  # a device that is not there: one line before any work
    target_backend = _latency_backend(cfg)  # a backend that is not there: one line before any work
    bundle = dataset(cfg)
    spec = resolve_spec(cfg, bundle, plan.spec)
    task = get_task(spec.task)
    if (why := known_failure(spec.name)) is not None:
        note(
            f"note: {spec.name} is known not to prune here: {why}; trying anyway, within "
            "prune.max_memory_gib and prune.max_graph_s",
            quiet,
        )
    if bundle is not None:
        task.check_data(bundle, "pruning")
    if cfg.prune.schedule == "interleaved" and not task.trains_by_iterations:
        raise PbkitError(
            "prune.schedule: interleaved trains a few iterations between pruning steps, which "
            f"{task.title} models cannot (they train by epochs); use prune.schedule: oneshot"
        )
    env = envinfo.collect()
    model, weights, base_training = bases.obtain(
        cfg, spec, task, bundle, plan.bases_dir, quiet, dev
    )
    tmp = plan.run_dir.parent / f".tmp-{plan.run_id}"
    shutil.rmtree(tmp, ignore_errors=True)  # what a killed run left
    tmp.mkdir(parents=True)
    try:
        acc_base = scores(task, model, bundle, spec, cfg)
        checkpoint.save_model(model, spec, tmp / MODEL_FILES[DENSE])
        p = cfg.prune
        where = f" on {p.backend} {p.precision} b{p.batch}" if target_backend is not None else ""
        steps = Steps(
            f"pruning {spec.name} ({method.key}, {p.scope}) to {p.speedup:g}x{where}",
            (
                p.latency.rounds + p.latency.max_checks
                if target_backend is not None
                else p.iterative_steps
            ),
            quiet,
        )
        widths = counts.layer_widths(model)
        dense = copy.deepcopy(model) if p.round_to == "auto" else None
        res, calibration, interleave = _prune_timed(
            model, method, spec, task, cfg, bundle, steps, quiet, target_backend, tmp
        )
        auto, open_steps = None, True
        if dense is not None:  # prune.round_to: auto: the advisor on the pruned widths decides
            steps.close(f"{res.achieved_speedup:.3f}x in {res.steps} steps (unaligned)")
            open_steps = False
            auto = _advise_round_to(cfg, spec, model, widths, quiet)
            if auto.recommended is not None:
                aligned = cfg.model_copy(deep=True)  # (the record keeps the config as asked)
                aligned.prune.round_to = auto.recommended
                model = dense
                steps = Steps(
                    f"pruning {spec.name} again with prune.round_to={auto.recommended}",
                    steps.total,
                    quiet,
                )
                res, calibration, interleave = _prune_timed(
                    model, method, spec, task, aligned, bundle, steps, quiet, target_backend, tmp
                )
                open_steps = True
        alignment = counts.channel_alignment(widths, counts.layer_widths(model))
        lat = res.latency_run
        if open_steps:
            steps.close(
                f"{res.achieved_speedup:.3f}x in MACs, {lat.measured_speedup:.3f}x measured,"
                f" in {res.steps} steps"
                if lat is not None
                else f"{res.achieved_speedup:.3f}x in {res.steps} steps"
            )
        acc_pruned = scores(task, model, bundle, spec, cfg)
        checkpoint.save_model(model, spec, tmp / MODEL_FILES[PRUNED])
        rec = _record(
            plan,
            spec,
            task,
            method,
            res,
            calibration,
            interleave,
            alignment,
            bundle,
            weights,
            base_training,
            (acc_base, acc_pruned),
            tmp,
            env,
            task.notes(model, spec),
        )
        if auto is not None:
            rec.method.round_to, rec.method.round_to_auto = auto.recommended, auto
        clock.finish(rec, cfg, env, device=device.name(dev))
        record.write(tmp, rec)
        os.replace(tmp, plan.run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return rec


def _prune_timed(
    model: Any,
    method: Method,
    spec: ModelSpec,
    task: Task,
    cfg: config.Config,
    bundle: DataBundle | None,
    steps: Steps,
    quiet: bool,
    target_backend: Backend | None,
    tmp: Path,
) -> tuple[PruneResult, Calibration | None, dict[str, Any] | None]:
    """:func:`_prune`, with the latency table of a latency target built first and written."""
    timings = None if target_backend is None else _timings(cfg, target_backend, spec, quiet)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="torch_pruning")
            res, calibration, interleave = _prune(
                model, method, spec, task, cfg, bundle, steps, quiet, timings
            )
        if timings is not None and timings.table_built is not None:
            atomic_write_json(tmp / LATENCY_TABLE, timings.table_built.to_json())
            assert res.latency_run is not None
            res.latency_run.table.file = LATENCY_TABLE
    finally:
        if timings is not None:
            timings.close()
    return res, calibration, interleave


AUTO_ALIGN_LAYERS = 8  # prune.round_to: auto times this many of the largest pruned layers


def _advise_round_to(
    cfg: config.Config,
    spec: ModelSpec,
    pruned: Any,
    dense_widths: dict[str, tuple[int, int]],
    quiet: bool,
) -> record.Alignment:
    """``prune.round_to: auto``: the channel-alignment advisor (:mod:`pbkit.measure.align`) on
    the largest pruned layers, timed alone on ``prune.backend`` at their widths and the nearest
    multiples of 8/16/32/64; the ``round_to`` it recommends (None: under 5% gained there)."""
    p = cfg.prune
    be = backends.get(p.backend)
    if p.precision not in be.precisions:
        raise PbkitError(
            f"prune.round_to: auto times layers on prune.backend {be.name!r}, which runs"
            f" {', '.join(be.precisions)}, not prune.precision={p.precision}"
        )
    timings = _timings(cfg, be, spec, True)
    try:
        chosen = align.layers_that_matter(pruned, timings, None, AUTO_ALIGN_LAYERS, dense_widths)
        steps = Steps(
            f"prune.round_to: auto: timing {len(chosen)} layers at aligned widths on {be.name}",
            len(chosen),
            quiet,
        )
        out = align.advise(
            timings.time_layer, chosen, (be.name, p.precision, p.batch), steps.update
        )
    finally:
        timings.close()
    best = out.recommended
    steps.close(
        f"round_to={best} ({out.gain[str(best)]:.2f}x the output channels per ms)"
        if best is not None
        else "no round_to: aligning buys under 5% here"
    )
    return out


def _pruning_data(
    cfg: config.Config, bundle: DataBundle | None, spec: ModelSpec
) -> DataBundle | None:
    """Data for calibration and sparse training: prune.calibration.dataset, else the run's
    dataset."""
    name = cfg.prune.calibration.dataset
    if name is None or (bundle is not None and name == bundle.name):
        return bundle
    d = cfg.dataset
    other = load_data(
        name,
        root=d.root,
        image_size=spec.input_size,
        seed=cfg.prune.calibration.seed,
        download=d.download,
        num_classes=spec.num_classes,
    )
    if other.num_classes != spec.num_classes:
        raise PbkitError(
            f"calibration dataset {name} has {other.num_classes} classes, the model"
            f" {spec.num_classes}"
        )
    return other


def _latency_backend(cfg: config.Config) -> Backend | None:
    """The backend a latency target is measured on (available, and running the precision asked),
    or None for a MACs target."""
    p = cfg.prune
    if p.target != "latency":
        return None
    be = backends.get(p.backend)
    if p.precision not in be.precisions:
        raise PbkitError(
            f"prune.backend {be.name!r} runs {', '.join(be.precisions)}, not"
            f" prune.precision={p.precision}"
        )
    return be


def _timings(cfg: config.Config, be: Backend, spec: ModelSpec, quiet: bool) -> layers.Timings:
    p = cfg.prune
    return layers.Timings.of(cfg, be, p.precision, p.batch, spec.input_size, quiet)


def _prune(
    model: Any,
    method: Method,
    spec: ModelSpec,
    task: Task,
    cfg: config.Config,
    bundle: DataBundle | None,
    steps: Steps,
    quiet: bool,
    timings: layers.Timings | None = None,
) -> tuple[PruneResult, Calibration | None, dict[str, Any] | None]:
    """Prune to the target; the result, the calibration set it used and the training between
    steps (interleaved schedule) it did."""
    from pbkit.pruning import PruneHooks, Sparsified

    pdata = _pruning_data(cfg, bundle, spec) if method.needs_data else None
    calibration = (
        task.calibration(pdata, cfg.prune.calibration, spec)
        if method.collect is not None and pdata is not None
        else None
    )
    sparse_train = None
    if method.stage == "sparsify" and pdata is not None:
        sp = cfg.sparsify

        def sparse_train(pruner: Any) -> Sparsified:
            progress = Steps(
                f"sparse training {sp.epochs} epochs ({method.regularizer}, reg {sp.reg:g})",
                sp.epochs,
                quiet,
            )
            epoch_hook = getattr(pruner, method.per_epoch) if method.per_epoch else None
            request = TrainRequest(
                Recipe.of(sp, weight_decay=0.0),  # (the regularizer is the only penalty)
                eval_batch_size=cfg.dataset.eval_batch_size,
                evaluate_each_epoch=False,
                on_epoch=lambda e, row: progress.update(e, task.epoch_line(row)),
                regularize=lambda: pruner.regularize(model),
                after_epoch=epoch_hook,
            )
            result = task.train(model, pdata, spec, request)
            progress.close()
            model.eval()
            facts = {
                **result,
                "dataset": pdata.name,
                "reg": sp.reg,
                "delta_reg": sp.delta_reg,
                "regularizer": method.regularizer,
            }
            return Sparsified(time_s=result["time_s"], facts=facts)

    p = cfg.prune
    between, interleave = (
        _interleaved(model, spec, task, cfg, bundle, quiet)
        if p.schedule == "interleaved"
        else (None, None)
    )
    lat = (
        None
        if timings is None
        else LatencySettings(
            backend=p.backend,
            precision=p.precision,
            batch=p.batch,
            rounds=p.latency.rounds,
            step=p.latency.step,
            min_step=p.latency.min_step,
            max_checks=p.latency.max_checks,
            anchors=p.latency.anchors,
        )
    )
    settings = PruneSettings(
        speedup=p.speedup,
        scope=p.scope,
        iterative_steps=p.iterative_steps,
        round_to=p.round_to if isinstance(p.round_to, int) else None,
        seed=p.seed,
        reg=cfg.sparsify.reg,
        delta_reg=cfg.sparsify.delta_reg,
        max_memory_gib=p.max_memory_gib,
        max_graph_s=p.max_graph_s,
        latency=lat,
    )
    tools = None if timings is None else Tools(table=timings.table, measure=timings.pair)
    res = prune_to_target(
        model,
        method,
        settings,
        input_size=spec.input_size,
        num_classes=spec.num_classes,
        protected=task.protected(model, spec),
        calibration=calibration,
        hooks=PruneHooks(
            sparse_train=sparse_train,
            between_steps=between,
            on_step=lambda i, s: steps.update(i, f"{s:.3f}x"),
            on_text=steps.update,
            latency_tools=tools,
            name=spec.name,
        ),
    )
    if res.held_fixed:
        note(
            f"note: the dependency graph could not follow {len(res.held_fixed)} attention blocks of"
            f" {spec.name} ({type(model.get_submodule(res.held_fixed[0])).__name__}, ...): their"
            " output channels were kept (their input channels too, unless only their own"
            " projections read them), the rest pruned (method.held_fixed in the record)",
            quiet,
        )
    return res, calibration, interleave


def _interleaved(
    model: Any,
    spec: ModelSpec,
    task: Task,
    cfg: config.Config,
    bundle: DataBundle | None,
    quiet: bool,
) -> tuple[Callable[[int], float], dict[str, Any]]:
    """CPD's schedule: before every pruning step, ``prune.interleave_iters`` training iterations
    with the finetuning recipe at its base rate (constant; a fresh optimizer per step, since the
    shapes change) and its distillation from the dense model (a copy taken before pruning, or
    ``finetune.kd.teacher``). Returns the hook and the facts it fills in as it runs."""
    if bundle is None:
        raise PbkitError(
            "prune.schedule: interleaved trains between pruning steps: pass --dataset D"
        )
    ft, p = cfg.finetune, cfg.prune
    teacher = bases.teacher(
        cfg, lambda: copy.deepcopy(model), device.of(model)
    )  # the dense model, copied before pruning
    recipe = Recipe.of(ft, schedule="constant", epochs=p.interleave_iters)
    per_epoch = max(1, math.ceil(len(bundle.train) / ft.batch_size))  # type: ignore[arg-type]
    facts: dict[str, Any] = {
        "iters_per_step": p.interleave_iters,
        "steps_trained": 0,
        "iterations": 0,
        "epochs": 0,
        "time_s": 0.0,
        "kd": ft.kd.model_dump(),
        "dataset": bundle.name,
        "recipe": {
            k: recipe.as_record()[k]
            for k in (
                "optimizer",
                "lr",
                "momentum",
                "weight_decay",
                "batch_size",
                "label_smoothing",
                "schedule",
            )
        },
    }

    def between(step: int) -> float:
        t0 = time.perf_counter()
        request = TrainRequest(
            recipe.replace(seed=ft.seed + step),
            eval_batch_size=cfg.dataset.eval_batch_size,
            evaluate_each_epoch=False,
            teacher=teacher,
            kd=ft.kd if teacher is not None else None,
            max_iters=p.interleave_iters,
        )
        out = task.train(model, bundle, spec, request)
        model.eval()
        seconds = time.perf_counter() - t0
        iterations = facts["iterations"] + int(out["iterations"])
        facts.update(
            steps_trained=facts["steps_trained"] + 1,
            iterations=iterations,
            epochs=math.ceil(
                iterations / per_epoch
            ),  # as the scratch baseline and setups count them
            time_s=round(facts["time_s"] + seconds, 3),
            last_loss=out["history"][-1]["loss"],
        )
        return seconds

    note(
        f"interleaved schedule: {p.interleave_iters} training iterations before every pruning step"
        + (" with distillation" if teacher is not None else ""),
        quiet,
    )
    return between, facts


def _record(
    plan: Plan,
    spec: ModelSpec,
    task: Task,
    method: Method,
    res: PruneResult,
    calibration: Calibration | None,
    interleave: dict[str, Any] | None,
    alignment: dict[str, Any],
    bundle: DataBundle | None,
    weights: dict[str, Any],
    base_training: dict[str, Any] | None,
    measured: tuple[dict[str, float] | None, dict[str, float] | None],
    folder: Path,
    env: dict[str, Any],
    notes: dict[str, Any],
) -> record.Record:
    cfg = plan.cfg
    now = utc_now()
    return record.Record(
        schema_version=record.SCHEMA_VERSION,
        kit_version=__version__,
        git_revision=env["git_revision"],
        run_id=plan.run_id,
        created_utc=now,
        updated_utc=now,
        stages={},
        identity=plan.identity,
        model=record.ModelInfo(
            name=spec.name,
            source=spec.source,
            family=spec.family,
            input_size=spec.input_size,
            num_classes=spec.num_classes,
            kwargs=spec.kwargs,
            seed=cfg.model.seed,
            task=spec.task,
            notes=notes,
            origin=None if spec.origin is None else record.ModelOrigin(**spec.origin.to_dict()),
            **weights,
        ),
        method=record.MethodInfo(
            key=method.key,
            name=method.name,
            stage=method.stage,
            scope=cfg.prune.scope,
            target_speedup=cfg.prune.speedup,
            achieved_speedup=res.achieved_speedup,
            steps=res.steps,
            round_to=cfg.prune.round_to if isinstance(cfg.prune.round_to, int) else None,
            iterative_steps=cfg.prune.iterative_steps,
            max_pruning_ratio=res.max_pruning_ratio,
            seed=cfg.prune.seed,
            step_time_s=res.step_time_s,
            prune_time_s=res.total_time_s,
            ignored_layers=res.ignored_layers,
            held_fixed=res.held_fixed,
            data=method.data,
            regularizer=method.regularizer,
            calibration=calibration.info if calibration is not None else None,
            sparsify=res.sparsified.facts if res.sparsified else None,
            reg_time_s=res.sparsified.time_s if res.sparsified else None,
            schedule=cfg.prune.schedule,
            interleave=interleave,
            target=cfg.prune.target,
            latency=res.latency_run.to_json() if res.latency_run else None,
        ),
        counts=record.Counts(
            macs_base=res.macs_base,
            macs_pruned=res.macs_pruned,
            params_base=res.params_base,
            params_pruned=res.params_pruned,
            input_size=spec.input_size,
            counter=counts.COUNTER,
            channel_alignment=alignment,
        ),
        dataset=(
            None
            if bundle is None
            else record.DatasetInfo(
                name=bundle.name,
                image_size=bundle.image_size,
                num_classes=bundle.num_classes,
                train_size=bundle.info.get("train_size"),
                test_size=bundle.info.get("test_size"),
                task=bundle.task,
                yaml=bundle.info.get("yaml"),
            )
        ),
        accuracy=put_scores(
            put_scores(record.Accuracy(), task, "base", measured[0]), task, "pruned", measured[1]
        ),
        finetune={**cfg.finetune.model_dump(), "epochs_run": 0},
        base_training=base_training,
        artifacts={
            v: {"path": f, "sha256": sha256_file(folder / f)} for v, f in MODEL_FILES.items()
        },
        env=env,
        config=cfg.model_dump(mode="json"),
    )
