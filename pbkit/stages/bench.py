"""Stage 4, bench: dense and pruned latency, alternating, on every backend, precision and batch
size, with memory and parity against fp32 torch at each point (measurement.md). The machine that
measures is recorded in the bench stage's own entry; the prune stage keeps the one that pruned.

INT8 points run the quantized models the export stage makes (``export.int8``: one calibration for
dense and pruned); where the run has a dataset, the task's metric is evaluated through each
point's runner on the test split (``bench.engine_accuracy``), next to PyTorch's on the same
images: that, not an element-wise gate, says whether INT8 kept the model's accuracy."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pbkit.core import config, intervals, record
from pbkit.core.clock import utc_now
from pbkit.core.console import Steps, note
from pbkit.core.errors import PbkitError
from pbkit.core.fileio import sha256_file
from pbkit.core.runtime import strict_fp32
from pbkit.export import parity
from pbkit.machine import cpustate, envinfo, gpumon
from pbkit.measure import backends, protocol
from pbkit.measure.memory import MemoryFigures, build_runner
from pbkit.measure.results import PointResult, RunnerResult
from pbkit.measure.runner import Runner, RunSpec
from pbkit.measure.settings import BenchSettings, for_device
from pbkit.models import checkpoint, counts
from pbkit.stages import export
from pbkit.stages.context import Context, budgeted, dataset, need
from pbkit.stages.rundir import (
    DENSE,
    PRUNED,
    StageClock,
    inside,
    model_file,
    onnx_file,
    verified,
)
from pbkit.tasks import Task
from pbkit.tasks import get as get_task

VARIANTS = (DENSE, PRUNED)


def pairs(cfg: config.Config, quiet: bool = False) -> list[tuple[backends.Backend, str]]:
    """(backend, precision) pairs to measure; fails before anything is measured."""
    b = cfg.bench
    chosen = [backends.get(name) for name in b.backends]
    out: list[tuple[backends.Backend, str]] = []
    skipped: list[str] = []
    for be in chosen:
        mine = [p for p in b.precisions if p in be.precisions]
        if not mine and "int8" in b.precisions and be.int8 is None:
            raise backends.no_int8(be.name)
        if not mine:
            raise PbkitError(
                f"backend {be.name!r} runs {', '.join(be.precisions)}; bench.precisions asks for "
                f"{', '.join(b.precisions)}"
            )
        out += [(be, p) for p in mine]
        skipped += [f"{be.name}/{p}" for p in b.precisions if p not in be.precisions]
    if skipped:
        note(f"not measured (precision not supported by the backend): {', '.join(skipped)}", quiet)
    return out


def measured_keys(cfg: config.Config) -> set[tuple[str, str, int]]:
    """The (backend, precision, batch) points a bench of ``cfg`` measures."""
    return {(be.name, p, n) for be, p in pairs(cfg, quiet=True) for n in cfg.bench.batches}


def _artifact(
    run_dir: Path, rec: record.Record, be: backends.Backend, variant: str, precision: str
) -> Path:
    if be.artifact == "model":
        return model_file(run_dir, rec, variant)
    if precision == "int8" and be.artifact == "onnx" and be.int8 is not None:
        art = export.int8_artifact(rec, be.int8, variant)
        if art is None or art.status != "ok" or not art.path:
            raise PbkitError(
                f"no INT8 {variant} model for {be.name}"
                + (f": {art.reason}" if art is not None and art.reason else "")
                + f" (`pbkit export {run_dir} --precision int8` makes it)"
            )
        path = inside(run_dir, art.path, f"its {variant} INT8 model")
        if art.weights_path:
            verified(
                inside(run_dir, art.weights_path, f"its {variant} INT8 weights"),
                art.weights_sha256,
                f"`pbkit export {run_dir} --precision int8` again",
            )
        return verified(path, art.sha256, f"`pbkit export {run_dir} --precision int8` again")
    if be.artifact == "onnx":
        return onnx_file(run_dir, rec, variant)
    info = ((rec.artifacts.get("tensorrt") or {}).get(precision) or {}).get(variant) or {}
    name = str(info.get("path") or export.engine_file(variant, precision))
    path = inside(run_dir, name, f"its {variant} {precision} engine")
    return verified(path, info.get("sha256"), f"`pbkit export {run_dir} --format tensorrt` again")


def stale(run_dir: Path, rec: record.Record) -> str | None:
    """Why the record's measurements are not of the run's files as the record names them now (a
    point measured a file that has been exported again since), if they are not."""
    for p in rec.latency:
        if p.artifact_sha256 is None or p.backend not in backends.BACKENDS:
            continue
        be = backends.BACKENDS[p.backend]
        kind = be.artifact
        if p.precision == "int8" and kind == "onnx" and be.int8 is not None:
            q = export.int8_artifact(rec, be.int8, p.variant)
            if q is not None and q.sha256 and q.sha256 != p.artifact_sha256:
                return f"{p.backend}/{p.variant} int8 was measured on a model quantized again since"
            continue
        if kind == "model":
            art = rec.artifacts.get(p.variant) or {}
        elif kind == "onnx":
            art = (rec.artifacts.get("onnx") or {}).get(p.variant) or {}
        else:
            art = ((rec.artifacts.get("tensorrt") or {}).get(p.precision) or {}).get(
                p.variant
            ) or {}
        sha = art.get("sha256") if isinstance(art, dict) else None
        if sha and sha != p.artifact_sha256:
            return f"{p.backend}/{p.variant} was measured on a file exported again since"
    return None


def _ensure_artifacts(
    run_dir: Path,
    rec: record.Record,
    cfg: config.Config,
    todo: list[tuple[backends.Backend, str]],
    quiet: bool,
) -> record.Record:
    """Export what the chosen backends run and is missing: ONNX files, TensorRT engines."""
    if any(be.artifact != "model" for be, _ in todo):
        rec = export.onnx_current(run_dir, rec, cfg, quiet)
    families = list(
        dict.fromkeys(
            be.int8 for be, p in todo if p == "int8" and be.artifact == "onnx" and be.int8
        )
    )
    if families:
        rec = export.to_int8(run_dir, rec, cfg, families, quiet)
    for precision in dict.fromkeys(p for be, p in todo if be.artifact == "engine"):
        if not export.engines_ready(rec, run_dir, precision, cfg.bench.batches):
            note(
                f"no TensorRT {precision} engines for batches {cfg.bench.batches} yet: building"
                " them first",
                quiet,
            )
            rec = export.to_tensorrt(run_dir, rec, cfg, [precision], cfg.bench.batches, quiet)
    return rec


class _Gpu:
    """The GPU a bench measures on: its record entry and NVML handle (none for CPU-only benches)."""

    def __init__(self, env: dict[str, Any], device: int, used: bool) -> None:
        self.info: dict[str, Any] | None = None
        self.handle: Any = None
        self.reasons: set[str] = set()
        if not used:
            return
        self.info = next((g for g in env["gpus"] if g.get("index") == device), None)
        if self.info is None:
            raise PbkitError(
                f"bench.device={device}: no such CUDA device (found {len(env['gpus'])})"
            )
        self.handle = gpumon.handle_for(self.info.get("uuid"), device, env["unavailable"])

    def monitor(self) -> protocol.Monitor | None:
        handle = self.handle
        return (lambda: gpumon.Sampler(handle, 0.1)) if handle is not None else None

    def finish(self, env: dict[str, Any]) -> None:
        if self.info is not None:
            self.info["state_end"] = (
                gpumon.state(self.handle, env["unavailable"], "gpu.state_end")
                if self.handle is not None
                else None
            )
            self.info["throttle_reasons_seen"] = sorted(self.reasons)


class _Point:
    """One (backend, precision, batch) point: both models built, checked and measured together."""

    def __init__(self, be: backends.Backend, precision: str, batch: int, x: torch.Tensor) -> None:
        self.be, self.precision, self.batch, self.x = be, precision, batch, x
        self.runners: dict[str, Runner] = {}
        self.memory: dict[str, MemoryFigures | None] = {}
        self.warmed: dict[str, tuple[float, int]] = {}
        self.flags: dict[str, dict[str, Any]] = {}  # per variant: the runner's flags
        self.core: int | None = None  # the core the measuring thread was pinned to

    def build(
        self, variant: str, spec: RunSpec, settings: BenchSettings, gpu: _Gpu, track: bool
    ) -> Runner:
        runner, mem, warm = build_runner(self.be, spec, settings, gpu.handle, track)
        self.runners[variant], self.warmed[variant] = runner, warm
        if track:  # memory is recorded while the first session's runners are built
            self.memory[variant] = mem
        self.flags[variant] = dict(runner.flags)
        return runner

    def close(self) -> None:
        for r in self.runners.values():
            r.close()
        self.runners.clear()
        if self.be.device == "cuda":
            torch.cuda.empty_cache()


def run(ctx: Context, rec: record.Record | None) -> record.Record:
    """Measure every (backend, precision, batch) point; replace those points in the record (under
    the stage's memory and time budgets: ``limits``)."""
    with budgeted(ctx, "the bench"):
        return _run(ctx, need(rec, "bench"))


def _run(ctx: Context, rec: record.Record) -> record.Record:
    run_dir, cfg, quiet = ctx.run_dir, ctx.cfg, ctx.quiet
    todo = pairs(cfg, quiet)
    rec = _ensure_artifacts(run_dir, rec, cfg, todo, quiet)
    todo, unquantized = _quantized_pairs(rec, todo, quiet)
    clock = StageClock("bench")
    b = cfg.bench
    strict_fp32()  # the parity references are fp32 (the stage's isolated() scope restores it)
    cpu_settings, gpu_settings = for_device(b, "cpu"), for_device(b, "cuda")
    threads = b.threads or protocol.default_threads()
    env = envinfo.collect()  # the machine that measures, GPU state at the start
    cpu_before = cpustate.snapshot()
    gpu = _Gpu(env, b.device, any(be.device == "cuda" for be, _ in todo))
    task = get_task(rec.model.task)
    refs: dict[tuple[str, int], list[Any]] = {}
    trust = cfg.model.trust_checkpoint
    ref_models = {v: checkpoint.load_model(model_file(run_dir, rec, v), trust)[0] for v in VARIANTS}
    points: list[record.LatencyPoint] = []
    checks: list[record.Parity] = []

    def opener(point: _Point, settings: BenchSettings) -> protocol.Session:
        """Fresh runners for each session of a point; the first session's are also watched for
        memory and checked for parity against fp32 torch."""
        be, precision, batch = point.be, point.precision, point.batch
        later = settings.later_session()  # re-warmed briefly: what a fresh runner needs

        @contextlib.contextmanager
        def session(
            k: int,
        ) -> Iterator[tuple[dict[str, protocol.Runner], dict[str, tuple[float, int]] | None]]:
            # pinned from the start: built and warmed up on the core it is measured on (a thread
            # moved to another core after its warm-up runs its first blocks on cold caches)
            with protocol.pinned(threads if be.device == "cpu" else 0) as point.core:
                try:
                    for v in VARIANTS:
                        spec = RunSpec(
                            path=_artifact(run_dir, rec, be, v, precision),
                            x=point.x,
                            precision=precision,
                            threads=threads,
                            channels_last=b.channels_last,
                            compile_mode=b.compile_mode,
                            cache_dir=run_dir / "trt-cache",
                            device_index=b.device,
                            trust=trust,
                        )
                        runner = point.build(
                            v, spec, settings if k == 0 else later, gpu, b.memory and k == 0
                        )
                        if k == 0:
                            if (v, batch) not in refs:
                                refs[(v, batch)] = parity.reference_outputs(ref_models[v], point.x)
                            checks.append(
                                _parity(
                                    task,
                                    runner,
                                    refs[(v, batch)],
                                    cfg.export,
                                    be.name,
                                    v,
                                    precision,
                                    batch,
                                )
                            )
                    yield dict[str, protocol.Runner](point.runners), dict(point.warmed)
                finally:
                    point.close()

        return session

    grid = [(be, precision, batch) for be, precision in todo for batch in b.batches]
    steps = Steps("measuring latency (dense and pruned alternate)", len(grid), quiet)
    for i, (be, precision, batch) in enumerate(grid):
        settings = gpu_settings if be.device == "cuda" else cpu_settings
        if not be.fresh_sessions:
            settings = dataclasses.replace(settings, sessions=1)
        point = _Point(
            be, precision, batch, counts.example_input(rec.model.input_size, batch=batch, seed=2)
        )

        def progress(
            k: int,
            r: PointResult,
            i: int = i,
            label: str = f"{be.name}/{precision} b{batch}",
        ) -> None:
            steps.update(
                i,
                f"{label}: session {k}: {r[DENSE].median_ms:.3f} -> {r[PRUNED].median_ms:.3f} ms",
            )

        res = protocol.measure_sessions(
            opener(point, settings),
            settings,
            monitor=gpu.monitor() if be.device == "cuda" else None,
            on_session=progress,
        )
        point.flags = {
            v: {
                **f,
                "pinned_core": point.core,
                **({"quantized": be.int8} if precision == "int8" else {}),
            }
            for v, f in point.flags.items()
        }
        for v in VARIANTS:
            gpu.reasons.update(res[v].throttle_reasons)
            points.append(
                _latency(
                    point, v, res, run_dir, rec, threads if be.device == "cpu" else None, b.quick
                )
            )
        steps.update(i + 1, f"{be.name}/{precision} b{batch}: {_summary(res)}")
    steps.close()

    def key(p: record.LatencyPoint) -> tuple[Any, ...]:
        return p.backend, p.precision, p.batch

    fresh = {key(p) for p in points}
    rec.latency = [p for p in rec.latency if key(p) not in fresh] + points
    export.merge_parity(rec, checks)
    scored = _engine_accuracy(ctx, rec, todo, ref_models, threads)
    if scored:
        done = {(a.backend, a.precision, a.variant) for a in scored}
        rec.engine_accuracy = [
            a for a in rec.engine_accuracy if (a.backend, a.precision, a.variant) not in done
        ] + scored
    if rec.counts.channel_alignment is None:  # records made before alignment was recorded
        rec.counts.channel_alignment = counts.channel_alignment(
            counts.layer_widths(ref_models[DENSE]), counts.layer_widths(ref_models[PRUNED])
        )
    gpu.finish(env)
    cpu_state = cpustate.between(cpu_before, cpustate.snapshot())
    _mark_busy(points, cpu_state)
    judge_latency_target(rec, points, ctx.quiet)
    cs, gs = cpu_settings, gpu_settings
    rec.bench = record.BenchInfo(
        channels_last=b.channels_last,
        compile_mode=b.compile_mode,
        memory=b.memory,
        warmup_s=cs.warmup_s,
        warmup_iters=cs.warmup_iters,
        min_time_s=cs.min_time_s,
        min_iters=cs.min_iters,
        gpu_min_time_s=gs.min_time_s,
        gpu_min_iters=gs.min_iters,
        sessions=cs.sessions,
        session_warmup_iters=b.session_warmup_iters,
        rounds=cs.rounds,
        cov_limit=cs.cov_limit,
        max_repeats=cs.max_repeats,
        block_s=cs.block_s,
        ci_target=cs.ci_target,
        confidence=cs.confidence,
        max_time_s=cs.max_time_s,
        gpu_max_time_s=b.gpu_max_time_s,  # as configured (bench.quick's budget is the CPU's)
        quick=b.quick,
        drift=b.drift,
        threads=threads,
        measured_utc=utc_now(),
        host=env["host"],
        cpu_state=cpu_state,
        gpu=(
            None
            if gpu.info is None
            else record.BenchGpu(**{k: gpu.info.get(k) for k in ("index", "name", "uuid")})
        ),
    )
    clock.finish(rec, cfg, env)
    record.write(run_dir, rec)
    if unquantized:
        raise PbkitError(
            f"INT8 quantization failed, not measured: {'; '.join(unquantized)} (the other points"
            " are recorded)"
        )
    return rec


def _quantized_pairs(
    rec: record.Record, todo: list[tuple[backends.Backend, str]], quiet: bool
) -> tuple[list[tuple[backends.Backend, str]], list[str]]:
    """The pairs whose models are there: an INT8 point whose quantization failed is left out (its
    reason is in the record), the others are measured."""
    keep, dropped = [], []
    for be, precision in todo:
        if precision == "int8" and be.artifact == "onnx" and be.int8 is not None:
            arts = [export.int8_artifact(rec, be.int8, v) for v in VARIANTS]
            bad = [a for a in arts if a is None or a.status != "ok"]
            if bad:
                why = bad[0].reason if bad[0] is not None else "no INT8 model"
                note(f"{be.name}/int8 is not measured: {why}", quiet)
                dropped.append(f"{be.name}/int8 ({why})")
                continue
        keep.append((be, precision))
    return keep, dropped


def _engine_accuracy(
    ctx: Context,
    rec: record.Record,
    todo: list[tuple[backends.Backend, str]],
    ref_models: dict[str, Any],
    threads: int,
) -> list[record.EngineAccuracy]:
    """The task's metric on the test split through each chosen point's runner, dense and pruned,
    with PyTorch's on the same images (``bench.engine_accuracy``: int8 points and the fp32 points
    of the same backends, or every CPU point); a model that cannot be evaluated there is recorded
    with the reason."""
    cfg, quiet = ctx.cfg, ctx.quiet
    mode = cfg.bench.engine_accuracy
    int8_backends = {be.name for be, p in todo if p == "int8"}
    chosen = [
        (be, p)
        for be, p in todo
        if mode == "all" or (mode == "int8" and be.name in int8_backends and p in ("int8", "fp32"))
    ]
    if mode == "off" or not chosen:
        return []
    if not cfg.dataset.name:
        note("accuracy on the engine: the run has no dataset (no test split to evaluate on)", quiet)
        return []
    bundle = dataset(cfg)
    assert bundle is not None
    task = get_task(rec.model.task)
    spec = checkpoint.load_model(model_file(ctx.run_dir, rec, DENSE), cfg.model.trust_checkpoint)[1]
    batch = cfg.dataset.eval_batch_size
    out: list[record.EngineAccuracy] = []
    steps = Steps("accuracy on the engine (test split)", len(chosen) * len(VARIANTS), quiet)
    for be, precision in chosen:
        for v in VARIANTS:
            t0 = time.perf_counter()
            base = dict(backend=be.name, precision=precision, variant=v, split="test")
            try:
                if be.device == "cuda":
                    raise PbkitError(f"{be.name} runners measure one fixed input only")
                runner = be.make(
                    RunSpec(
                        path=_artifact(ctx.run_dir, rec, be, v, precision),
                        x=counts.example_input(rec.model.input_size, batch=1, seed=2),
                        precision=precision,
                        threads=threads,
                        trust=cfg.model.trust_checkpoint,
                    )
                )
                try:
                    s = task.engine_score(runner.predict, ref_models[v], bundle, spec, batch)
                finally:
                    runner.close()
                entry = record.EngineAccuracy(
                    **base,
                    status="ok",
                    metric=s.metric,
                    value=round(s.value, 4),
                    torch_value=round(s.torch_value, 4),
                    agreement=None if s.agreement is None else round(s.agreement, 4),
                    images=s.images,
                    batch_size=batch,
                    seconds=round(time.perf_counter() - t0, 3),
                )
                info = f"{s.metric} {s.value:.2f} (torch {s.torch_value:.2f})"
            except PbkitError as e:
                entry = record.EngineAccuracy(**base, status="failed", reason=str(e))
                info = f"not evaluated: {e}"
            out.append(entry)
            steps.update(len(out), f"{be.name}/{precision} {v}: {info}")
    steps.close()
    return out


def _parity(
    task: Task,
    runner: Runner,
    ref: list[Any],
    e: config.ExportCfg,
    backend: str,
    variant: str,
    precision: str,
    batch: int,
) -> record.Parity:
    got, label = task.parity_outputs(runner.outputs())
    ref, _ = task.parity_outputs(ref)
    return record.Parity(
        backend=backend,
        variant=variant,
        precision=precision,
        batch=batch,
        **parity.check(got, ref, e, precision, label, what=f"the {variant} model on {backend}"),
    )


def _mark_busy(points: list[record.LatencyPoint], cpu_state: dict[str, Any]) -> None:
    """A measurement taken while other processes used the CPUs is not a quiet machine's: each of
    its CPU points is marked unstable with how busy the machine was (every view shows the mark)."""
    if not cpu_state.get("busy"):
        return
    why = (
        f"machine busy: other processes used {cpu_state['others_share']:.0%} of the CPU time"
        " while measuring"
    )
    for p in points:
        if p.device == "cpu" and why not in p.unstable_reasons:
            p.stable = False
            p.unstable_reasons = [*p.unstable_reasons, why]


def judge_latency_target(
    rec: record.Record, points: list[record.LatencyPoint], quiet: bool
) -> None:
    """A latency-targeted run is judged on the bench: the pruning loop's own last check stays in
    ``method.latency`` (``measured_speedup``), and the bench's re-measurement of the same backend,
    precision and batch, in this fresh process with the bench protocol, is kept beside it as
    ``method.latency.bench`` with the verdict (met: the bench's speed-up reaches the target;
    within_10pct: and stays under 1.1x the target)."""
    lt, m = rec.method.latency, rec.method
    if m.target != "latency" or not lt:
        return
    want = (lt.get("backend"), lt.get("precision", "fp32"), lt.get("batch", 1))
    p = next(
        (
            q
            for q in points
            if q.variant == PRUNED
            and (q.backend, q.precision, q.batch) == want
            and q.speedup_vs_dense is not None
        ),
        None,
    )
    if p is None or p.speedup_vs_dense is None:
        return
    target, got = m.target_speedup, p.speedup_vs_dense
    loop = lt.get("measured_speedup")
    lt["bench"] = {
        "speedup": round(got, 4),
        "ci": [round(c, 4) for c in p.speedup_ci] if p.speedup_ci else None,
        "stable": p.stable,
        "unstable_reasons": list(p.unstable_reasons),
        "met": got >= target,
        "within_10pct": target <= got <= 1.1 * target,
        "vs_loop": round(got / loop, 4) if loop else None,
        "measured_utc": utc_now(),
    }
    lt["judged_on"] = "bench"
    said = f"; the pruning loop's last check said {loop:.3f}x" if loop else ""
    note(
        f"latency target {target:g}x on {want[0]}: {'met' if got >= target else 'NOT met'} by"
        f" the bench's re-measurement ({intervals.fmt(got, p.speedup_ci, 3)}{said})",
        quiet,
    )


def _summary(res: PointResult) -> str:
    """``2.345 -> 1.234 ms (1.90x [1.88, 1.92], 5 sessions, 24 block pairs, stopped by ci)``."""
    sp = res[DENSE].median_ms / res[PRUNED].median_ms
    ci = res.speedup.ci if res.speedup else None
    how = res.speedup.how if res.speedup else None
    sessions = f"{how.sessions} sessions, " if how and how.sessions else ""
    return (
        f"{res[DENSE].median_ms:.3f} -> {res[PRUNED].median_ms:.3f} ms"
        f" ({intervals.fmt(sp, ci)}"
        + (f", {sessions}{how.blocks} block pairs, stopped by {how.stop}" if how else "")
        + ")"
    )


def _latency(
    point: _Point,
    v: str,
    res: PointResult,
    run_dir: Path,
    rec: record.Record,
    threads: int | None,
    quick: bool,
) -> record.LatencyPoint:
    """One variant's figures at a point, as the record holds them: its statistics and how they
    were measured; the pruned point also its speed-up's interval and how that was made (the
    speed-up itself is the ratio of the two medians)."""
    r: RunnerResult = res[v]
    be, batch, precision = point.be, point.batch, point.precision
    dense_gpu, mine_gpu = res[DENSE].gpu_compute, r.gpu_compute
    mem = point.memory.get(v)
    pruned = v == PRUNED and res.speedup is not None
    return record.LatencyPoint(
        backend=be.name,
        device=be.device,
        variant=v,
        batch=batch,
        precision=precision,
        threads=threads,
        throughput_ips=batch * r.n / r.duration_s if r.duration_s > 0 else 0.0,
        quick=quick,
        artifact_sha256=sha256_file(_artifact(run_dir, rec, be, v, precision)),
        speedup_vs_dense=(res[DENSE].median_ms / r.median_ms) if v == PRUNED else None,
        gpu_speedup_vs_dense=(
            (dense_gpu.median_ms / mine_gpu.median_ms)
            if v == PRUNED and dense_gpu and mine_gpu
            else None
        ),
        flags=record.Flags(**point.flags[v]),
        memory=None if mem is None else record.Memory(**mem.as_dict()),
        input_shape=list(point.x.shape),
        dtype=precision,
        median_ms=r.median_ms,
        mean_ms=r.mean_ms,
        min_ms=r.min_ms,
        p90_ms=r.p90_ms,
        p95_ms=r.p95_ms,
        p99_ms=r.p99_ms,
        max_ms=r.max_ms,
        std_ms=r.std_ms,
        cov=r.cov,
        n=r.n,
        first_call_ms=r.first_call_ms,
        warmup_n=r.warmup_n,
        duration_s=r.duration_s,
        stable=r.stable,
        unstable_reasons=r.unstable_reasons,
        attempts=r.attempts,
        medians_ms=r.medians_ms,
        spread_ms=r.spread_ms,
        gpu_compute=None if r.gpu_compute is None else record.GpuCompute(**r.gpu_compute.as_dict()),
        throttle_reasons=r.throttle_reasons,
        speedup_ci=res.speedup.ci if pruned and res.speedup else None,
        median_ci=r.median_ci,
        ci=record.CiInfo(**res.speedup.how.as_dict()) if pruned and res.speedup else None,
        outliers=r.outliers,
        blocks=r.blocks,
        pooled_median_ms=r.pooled_median_ms,
        session_medians_ms=r.session_medians_ms,
        sessions=r.sessions,
    )
