"""The orchestrator: a configuration's stages in order, resumed from the first one not finished.

``run(cfg)`` names the run from its configuration (:mod:`pbkit.stages.rundir`), takes the run's
lock, and runs prune -> finetune -> export -> bench, skipping each stage the record shows as done
with the same configuration; a measuring (not quick) bench runs in a fresh process. ``export_run``
and ``bench_run`` run one stage on an existing run folder. Everything a stage sets process-wide is
restored when it returns (``isolated``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbkit.core import config, record
from pbkit.core.console import note
from pbkit.core.errors import PbkitError
from pbkit.core.runtime import isolated
from pbkit.stages import bench, explain, export, finetune, prune, rundir
from pbkit.stages.context import Context, Stage


@dataclass
class Outcome:
    run_dir: Path
    record: record.Record
    ran: list[str] = field(default_factory=list)  # the stages this call ran
    done_before: list[str] = field(default_factory=list)  # the stages the record already had


def run(
    cfg: config.Config, until: str = "bench", force: bool = False, quiet: bool = False
) -> Outcome:
    """Run (or continue) the configuration's run up to the stage ``until``; ``force`` starts it
    again from scratch."""
    wanted = rundir.wanted_stages(cfg, until)
    with isolated():
        if "bench" in wanted:
            bench.pairs(cfg, quiet=True)  # the whole plan is checked before the long work starts
        plan = rundir.plan(cfg)
        ctx = Context.of(plan, quiet)
        with rundir.locked(plan.run_dir, quiet):
            if force:
                plan.remove()
            rec = plan.existing()
            if rec is None:
                out = Outcome(plan.run_dir, STAGES["prune"](ctx, None), ran=["prune"])
            else:
                rundir.check_resumable(plan.run_dir, rec)
                out = Outcome(
                    plan.run_dir,
                    rec,
                    done_before=[s for s in wanted if _done(plan.run_dir, rec, s, cfg)],
                )
                rest = [s for s in wanted if s not in out.done_before]
                done = ", ".join(out.done_before)
                note(
                    f"run {plan.run_id}: "
                    + (
                        f"resuming ({done} done); running {', '.join(rest)}"
                        if rest
                        else f"complete ({done} done); nothing to run (--force starts it again)"
                    ),
                    quiet,
                )
            for stage in wanted[1:]:
                if not _done(plan.run_dir, out.record, stage, cfg):
                    out.record = STAGES[stage](ctx, out.record)
                    out.ran.append(stage)
    return out


def _bench(ctx: Context, rec: record.Record | None) -> record.Record:
    """The bench stage, ``bench.repeats`` times spaced in time (merged, with the drift between
    them kept for this machine), or once with each pruned point's interval widened by this
    machine's drift (:mod:`pbkit.measure.repeats`)."""
    from pbkit.machine import drift
    from pbkit.measure import repeats

    b = ctx.cfg.bench
    if b.drift == "auto" or b.repeats > 1:
        drift.check()  # a drift file that does not read is one line before the long work
    if b.repeats > 1:
        return _bench_repeats(ctx, rec)
    out = _bench_once(ctx, rec)
    fresh = bench.measured_keys(ctx.cfg)
    points = [p for p in out.latency if (p.backend, p.precision, p.batch) in fresh]
    repeats.attach(points, out.bench, b.drift, b.confidence, out.model.name)
    if any(p.repeat_ci for p in points):
        record.write(ctx.run_dir, out)
    elif b.drift == "auto" and not b.quick and any(p.speedup_ci for p in points):
        note(
            "each interval is this bench's, on this machine in its state; where a later bench"
            " lands is wider: `pbkit bench RUN --repeats 6` measures how far this machine drifts"
            " between benches, and every later bench then shows its repeat interval",
            ctx.quiet,
        )
    return out


def _bench_once(ctx: Context, rec: record.Record | None) -> record.Record:
    """Quick measurements in this process, real ones in a fresh one, or in ``bench.processes``
    fresh ones whose points are merged (:mod:`pbkit.measure.processes`)."""
    b = ctx.cfg.bench
    if b.quick:
        return bench.run(ctx, rec)
    if b.processes == 1:
        return _bench_in_fresh_process(ctx.run_dir, ctx.cfg, ctx.quiet)
    return _bench_in_processes(ctx.run_dir, ctx.cfg, ctx.quiet)


def _bench_repeats(ctx: Context, rec: record.Record | None) -> record.Record:
    """``bench.repeats`` benches of the same files, ``repeat_spacing_s`` apart, merged into one
    point per backend, precision, batch and variant; each pruned point's repeat interval is the
    t-interval over the benches' speed-ups, and the drift between them is kept for this machine
    (:mod:`pbkit.machine.drift`) unless the benches were quick. The run's configuration keeps
    ``bench.repeats: 1`` (the stage's own slice what it ran with): a later bench benches once."""
    import time

    from pbkit.core.clock import utc_now
    from pbkit.machine import drift
    from pbkit.measure import repeats

    cfg, b = ctx.cfg, ctx.cfg.bench
    once = cfg.model_copy(deep=True)
    once.bench.repeats, once.bench.drift = 1, 0.0
    fresh = bench.measured_keys(cfg)
    runs: list[list[record.LatencyPoint]] = []
    ended: list[str] = []
    seconds = 0.0
    out = rec
    for i in range(b.repeats):
        if i:
            note(
                f"bench {i + 1}/{b.repeats} in {b.repeat_spacing_s:g} s (repeats spaced in time"
                " show how far this machine drifts between benches)",
                ctx.quiet,
            )
            time.sleep(b.repeat_spacing_s)
        out = _bench_once(Context(ctx.run_dir, once, ctx.quiet), out)
        seconds += out.stages["bench"].seconds or 0.0
        runs.append([p for p in out.latency if (p.backend, p.precision, p.batch) in fresh])
        ended.append(utc_now())
        once.bench.engine_accuracy = "off"  # (evaluated once, by the first bench)
    assert out is not None
    merged, measured = repeats.combine(
        runs,
        ended,
        out.bench,
        confidence=b.confidence,
        target=b.ci_target,
        spacing_s=b.repeat_spacing_s,
        model=out.model.name,
        run_id=ctx.run_dir.name,
    )
    if out.bench is not None:
        out.bench.repeats, out.bench.repeat_spacing_s = b.repeats, b.repeat_spacing_s
        out.bench.drift = b.drift
    run_cfg = cfg.model_dump(mode="json")
    run_cfg["bench"]["repeats"] = 1  # an act, not a setting: a later bench benches once
    _keep_merged(ctx.run_dir, out, merged, cfg, seconds, run_cfg)
    for m in measured if not b.quick else []:
        kept = drift.save(m.machine, m.backend, m.precision, m.drift)
        note(
            f"{m.backend}/{m.precision}: this machine drifted {m.drift.sd:.1%} between"
            f" {m.drift.repeats} benches (kept in {kept} for later benches' repeat intervals)",
            ctx.quiet,
        )
    return out


def _bench_in_processes(run_dir: Path, cfg: config.Config, quiet: bool) -> record.Record:
    """The bench stage ``bench.processes`` times, each in a fresh interpreter with its share of
    the sessions and of the time budget (the first also evaluates the accuracy on the engine),
    then one point per backend, precision, batch and variant from theirs."""
    from pbkit.measure import processes

    b, n = cfg.bench, cfg.bench.processes
    part = cfg.model_copy(deep=True)
    pb = part.bench
    pb.sessions = processes.share(b.sessions, n)
    pb.min_time_s, pb.max_time_s = b.min_time_s / n, b.max_time_s / n
    pb.gpu_min_time_s, pb.gpu_max_time_s = b.gpu_min_time_s / n, b.gpu_max_time_s / n
    pb.min_iters, pb.gpu_min_iters = max(1, b.min_iters // n), max(1, b.gpu_min_iters // n)
    before = record.read(run_dir).latency if (run_dir / record.RECORD_NAME).is_file() else []
    old = [p.model_dump_json() for p in before]  # points an earlier bench measured
    runs: list[list[record.LatencyPoint]] = []
    seconds = 0.0
    for i in range(n):
        note(f"bench process {i + 1}/{n} ({pb.sessions} sessions per point)", quiet)
        rec = _bench_in_fresh_process(run_dir, part, quiet)
        seconds += rec.stages["bench"].seconds or 0.0
        runs.append([p for p in rec.latency if p.model_dump_json() not in old])
        old += [p.model_dump_json() for p in runs[-1]]
        pb.engine_accuracy = "off"  # (evaluated once, by the first process)
    merged = processes.merge(runs, b.confidence, b.ci_target)
    if rec.bench is not None:
        rec.bench.processes = n
        rec.bench.sessions = b.sessions
        rec.bench.min_time_s, rec.bench.max_time_s = b.min_time_s, b.max_time_s
    _keep_merged(run_dir, rec, merged, cfg, seconds)
    return rec


def _keep_merged(
    run_dir: Path,
    rec: record.Record,
    merged: list[record.LatencyPoint],
    cfg: config.Config,
    seconds: float,
    kept: dict[str, Any] | None = None,
) -> None:
    """Points merged from several processes or benches replace the ones they pool, the latency
    target is judged on them (not on the last one's), and the stage says what it ran with and how
    long; the run's configuration becomes ``kept`` (default: ``cfg``)."""
    done = {(p.backend, p.precision, p.batch) for p in merged}
    rec.latency = [p for p in rec.latency if (p.backend, p.precision, p.batch) not in done] + merged
    bench.judge_latency_target(rec, merged, True)
    rec.stages["bench"].config = rundir.section_slice(cfg, "bench")
    rec.stages["bench"].seconds = round(seconds, 3)
    rec.config = kept if kept is not None else cfg.model_dump(mode="json")
    record.write(run_dir, rec)


def _bench_in_fresh_process(run_dir: Path, cfg: config.Config, quiet: bool) -> record.Record:
    """The bench stage in a new Python interpreter: it measures the same whatever this process did
    before (measured on a 2-core VM: torch-cpu's dense model ran 20.4 ms after pruning and
    exporting in the same process and 18.5 ms in a fresh one, the speed-up 1.60x against 1.47x).

    A plain ``python -m pbkit.stages.fresh`` rather than a multiprocessing spawn: a spawned child
    imports the caller's ``__main__`` again, which re-runs a user's script that calls
    :func:`pbkit.prune` without an ``if __name__ == "__main__"`` guard."""
    import subprocess
    import sys
    import tempfile

    import torch

    if torch.cuda.is_initialized():
        # what this process still holds on the GPU is not the models' to carry
        torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory(prefix="pbkit-bench-") as tmp:
        job, answer = Path(tmp) / "job.json", Path(tmp) / "answer.txt"
        payload = {"run_dir": str(run_dir), "config": cfg.model_dump(mode="json"), "quiet": quiet}
        job.write_text(json.dumps(payload), encoding="utf-8")
        cmd = [sys.executable, "-m", "pbkit.stages.fresh", str(job), str(answer)]
        code = subprocess.run(cmd, stdin=subprocess.DEVNULL, check=False).returncode
        message = answer.read_text(encoding="utf-8").strip() if answer.is_file() else ""
    if message or code != 0:  # (ended without a word: killed; its exit code says how)
        raise PbkitError(message or f"the bench process ended with exit code {code}")
    return record.read(run_dir)


def _done(run_dir: Path, rec: record.Record, stage: str, cfg: config.Config) -> bool:
    """Whether ``stage`` is done as ``cfg`` asks, on the files the record names: an export whose
    files are gone or changed is not, nor a bench that measured files exported again since."""
    if stage == "export" and (
        not export.onnx_ready(run_dir) or rundir.onnx_changed(run_dir, rec) is not None
    ):
        return False
    if stage == "bench" and bench.stale(run_dir, rec) is not None:
        return False
    return rundir.stage_done(rec, stage, cfg)


# every stage, one signature (:data:`pbkit.stages.context.Stage`)
STAGES: dict[str, Stage] = {
    "prune": prune.run,
    "finetune": finetune.run,
    "export": export.run,
    "bench": _bench,
}


def _on_run_folder(
    stage: str,
    run_dir: str | Path,
    overrides: list[str] | tuple[str, ...],
    values: dict[str, Any] | None,
    quiet: bool,
    trust: bool = False,
) -> record.Record:
    return _in_run_folder(STAGES[stage], run_dir, overrides, values, quiet, trust)


def _in_run_folder(
    stage: Stage,
    run_dir: str | Path,
    overrides: list[str] | tuple[str, ...],
    values: dict[str, Any] | None,
    quiet: bool,
    trust: bool,
) -> record.Record:
    run_dir = Path(run_dir)
    if not (run_dir / record.RECORD_NAME).is_file():
        raise PbkitError(
            f"{str(run_dir)!r} is not a run folder (no record.json); make one with `pbkit prune` "
            "or `pbkit run`"
        )
    with isolated(), rundir.locked(run_dir, quiet):
        rec = record.read(run_dir)
        # trust is this command's to give: a record that says its run trusted a pickle grants none
        cfg = rundir.run_config(rec, overrides, {"model.trust_checkpoint": trust, **(values or {})})
        return stage(Context(run_dir, cfg, quiet), rec)


def export_run(
    run_dir: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
    quiet: bool = False,
    trust: bool = False,
) -> record.Record:
    """Export an existing run (``export.*`` from its config, with these overrides); ``trust``: its
    model files may hold a pickled model (a user's pickled module), which runs code to load."""
    return _on_run_folder("export", run_dir, overrides, values, quiet, trust)


def bench_run(
    run_dir: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
    quiet: bool = False,
    trust: bool = False,
) -> record.Record:
    """Measure an existing run (``bench.*`` from its config, with these overrides); ``trust`` as
    for :func:`export_run`."""
    return _on_run_folder("bench", run_dir, overrides, values, quiet, trust)


def explain_run(
    run_dir: str | Path,
    settings: explain.ExplainSettings,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
    quiet: bool = False,
    trust: bool = False,
) -> record.Record:
    """Per-layer latency of an existing run's dense and pruned models (``pbkit explain``)."""
    explain.check(settings)  # before the lock and the export: a bad option is one line at once

    def stage(ctx: Context, rec: record.Record | None) -> record.Record:
        return explain.run(ctx, rec, settings)

    return _in_run_folder(stage, run_dir, overrides, values, quiet, trust)
