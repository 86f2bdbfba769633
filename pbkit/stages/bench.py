"""Stage 4, bench: dense and pruned latency, alternating, on every backend, precision and batch
size, with memory and parity against fp32 torch at each point (measurement.md). The machine that
measures is recorded in the bench stage's own entry; the prune stage keeps the one that pruned."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pbkit.core import config, record
from pbkit.core.console import Steps, note
from pbkit.core.errors import PbkitError
from pbkit.core.fileio import sha256_file
from pbkit.core.runtime import strict_fp32
from pbkit.export import parity
from pbkit.machine import cpustate, envinfo, gpumon
from pbkit.measure import backends, protocol, uncertainty
from pbkit.measure.memory import build_runner
from pbkit.measure.runner import Runner, RunSpec
from pbkit.models import checkpoint, counts
from pbkit.stages import export
from pbkit.stages.rundir import DENSE, ONNX_FILES, PRUNED, StageClock, model_file, utc_now
from pbkit.tasks import Task
from pbkit.tasks import get as get_task

VARIANTS = (DENSE, PRUNED)
SETTINGS_KEPT = (
    "warmup_s",
    "warmup_iters",
    "min_time_s",
    "min_iters",
    "gpu_min_time_s",
    "gpu_min_iters",
    "rounds",
    "cov_limit",
    "max_repeats",
    "channels_last",
    "compile_mode",
    "memory",
    "block_s",
    "ci_target",
    "confidence",
    "max_time_s",
    "gpu_max_time_s",
    "sessions",
    "session_warmup_iters",
)


def pairs(cfg: config.Config, quiet: bool = False) -> list[tuple[backends.Backend, str]]:
    """(backend, precision) pairs to measure; fails before anything is measured."""
    b = cfg.bench
    chosen = [backends.get(name) for name in b.backends]
    out, skipped = [], []
    for be in chosen:
        mine = [p for p in b.precisions if p in be.precisions]
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


def protocol_settings(cfg: config.Config, device: str) -> dict[str, Any]:
    """The measurement protocol's settings for a CPU or a GPU backend (bench.quick honoured)."""
    b = cfg.bench
    quick = protocol.QUICK if b.quick else {}
    if device == "cuda":
        return {
            **b.model_dump(),
            "min_time_s": b.gpu_min_time_s,
            "min_iters": b.gpu_min_iters,
            "max_time_s": b.gpu_max_time_s,
            **quick,
        }
    return {**b.model_dump(), **quick}


def _artifact(
    run_dir: Path, rec: record.Record, be: backends.Backend, variant: str, precision: str
) -> Path:
    if be.artifact == "model":
        return model_file(run_dir, rec, variant)
    if be.artifact == "onnx":
        return run_dir / ONNX_FILES[variant]
    return run_dir / export.engine_file(variant, precision)


def _ensure_artifacts(
    run_dir: Path,
    rec: record.Record,
    cfg: config.Config,
    todo: list[tuple[backends.Backend, str]],
    quiet: bool,
) -> record.Record:
    """Export what the chosen backends run and is missing: ONNX files, TensorRT engines."""
    if any(be.artifact != "model" for be, _ in todo) and not export.onnx_ready(run_dir):
        note("no ONNX files yet: exporting first", quiet)
        rec = export.to_onnx(run_dir, rec, cfg, quiet)
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
        self.memory: dict[str, Any] = {}
        self.warmed: dict[str, tuple[float, int]] = {}
        self.flags: dict[str, dict[str, Any]] = {}
        self.core: int | None = None  # the core the measuring thread was pinned to

    def build(
        self, variant: str, spec: RunSpec, settings: dict[str, Any], gpu: _Gpu, track: bool
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


def run(
    run_dir: Path, rec: record.Record, cfg: config.Config, quiet: bool = False
) -> record.Record:
    """Measure every (backend, precision, batch) point; replace those points in the record."""
    todo = pairs(cfg, quiet)
    rec = _ensure_artifacts(run_dir, rec, cfg, todo, quiet)
    clock = StageClock("bench")
    b = cfg.bench
    strict_fp32()  # the parity references are fp32 (the stage's isolated() scope restores it)
    cpu_settings, gpu_settings = protocol_settings(cfg, "cpu"), protocol_settings(cfg, "cuda")
    threads = b.threads or protocol.default_threads()
    env = envinfo.collect()  # the machine that measures, GPU state at the start
    cpu_before = cpustate.snapshot()
    gpu = _Gpu(env, b.device, any(be.device == "cuda" for be, _ in todo))
    task = get_task(rec.model.task)
    refs: dict[tuple[str, int], list[Any]] = {}
    ref_models = {v: checkpoint.load_model(model_file(run_dir, rec, v))[0] for v in VARIANTS}
    points: list[record.LatencyPoint] = []
    checks: list[record.Parity] = []

    def opener(point: _Point, settings: dict[str, Any]) -> protocol.Session:
        """Fresh runners for each session of a point; the first session's are also watched for
        memory and checked for parity against fp32 torch."""
        be, precision, batch = point.be, point.precision, point.batch
        # a later session re-warms for warmup_s and session_warmup_iters calls: what a fresh runner
        # needs (allocation, first-call effects), not the whole first warm-up again
        later = {
            **settings,
            "warmup_iters": min(int(settings["warmup_iters"]), b.session_warmup_iters),
        }

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
            settings = {**settings, "sessions": 1}
        point = _Point(
            be, precision, batch, counts.example_input(rec.model.input_size, batch=batch, seed=2)
        )

        def progress(
            k: int,
            r: dict[str, dict[str, Any]],
            i: int = i,
            label: str = f"{be.name}/{precision} b{batch}",
        ) -> None:
            steps.update(
                i,
                f"{label}: session {k}: {r[DENSE]['median_ms']:.3f} ->"
                f" {r[PRUNED]['median_ms']:.3f} ms",
            )

        res = protocol.measure_sessions(
            opener(point, settings),
            settings,
            monitor=gpu.monitor() if be.device == "cuda" else None,
            on_session=progress,
        )
        point.flags = {v: {**f, "pinned_core": point.core} for v, f in point.flags.items()}
        for v in VARIANTS:
            gpu.reasons.update(res[v]["throttle_reasons"])
            points.append(
                _latency(
                    point, v, res, run_dir, rec, threads if be.device == "cpu" else None, b.quick
                )
            )
        sp = res[DENSE]["median_ms"] / res[PRUNED]["median_ms"]
        ci = res[PRUNED].get("ci") or {}
        how = f"{ci['sessions']} sessions, " if ci.get("sessions") else ""
        steps.update(
            i + 1,
            f"{be.name}/{precision} b{batch}: {res[DENSE]['median_ms']:.3f} ->"
            f" {res[PRUNED]['median_ms']:.3f} ms"
            f" ({uncertainty.fmt(sp, res[PRUNED].get('speedup_ci'))}"
            + (f", {how}{ci['blocks']} block pairs, stopped by {ci['stop']}" if ci else "")
            + ")",
        )
    steps.close()

    def key(p: record.LatencyPoint) -> tuple[Any, ...]:
        return p.backend, p.precision, p.batch

    fresh = {key(p) for p in points}
    rec.latency = [p for p in rec.latency if key(p) not in fresh] + points
    export.merge_parity(rec, checks)
    if rec.counts.channel_alignment is None:  # records made before alignment was recorded
        rec.counts.channel_alignment = counts.channel_alignment(
            counts.layer_widths(ref_models[DENSE]), counts.layer_widths(ref_models[PRUNED])
        )
    gpu.finish(env)
    rec.bench = {k: v for k, v in cpu_settings.items() if k in SETTINGS_KEPT}
    rec.bench.update(
        quick=b.quick,
        threads=threads,
        measured_utc=utc_now(),
        host=env["host"],
        cpu_state=cpustate.between(cpu_before, cpustate.snapshot()),
        gpu=None if gpu.info is None else {k: gpu.info.get(k) for k in ("index", "name", "uuid")},
    )
    clock.finish(rec, cfg, env)
    record.write(run_dir, rec)
    return rec


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
        **parity.check(got, ref, e, precision, label),
    )


def _latency(
    point: _Point,
    v: str,
    res: dict[str, dict[str, Any]],
    run_dir: Path,
    rec: record.Record,
    threads: int | None,
    quick: bool,
) -> record.LatencyPoint:
    r = {
        k: x for k, x in res[v].items() if k != "speedup"
    }  # (the speed-up is the ratio of the medians below)
    be, batch, precision = point.be, point.batch, point.precision
    dense_gpu, mine_gpu = res[DENSE].get("gpu_compute"), r.get("gpu_compute")
    return record.LatencyPoint(
        backend=be.name,
        device=be.device,
        variant=v,
        batch=batch,
        precision=precision,
        threads=threads,
        throughput_ips=batch * r["n"] / r["duration_s"] if r["duration_s"] > 0 else 0.0,
        quick=quick,
        artifact_sha256=sha256_file(_artifact(run_dir, rec, be, v, precision)),
        speedup_vs_dense=(res[DENSE]["median_ms"] / r["median_ms"]) if v == PRUNED else None,
        gpu_speedup_vs_dense=(
            (dense_gpu["median_ms"] / mine_gpu["median_ms"])
            if v == PRUNED and dense_gpu and mine_gpu
            else None
        ),
        flags=point.flags[v],
        memory=point.memory.get(v),
        input_shape=list(point.x.shape),
        dtype=precision,
        **r,
    )
