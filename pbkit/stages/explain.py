"""``pbkit explain``: per-layer latency of dense and pruned on one backend, from its own profiler,
mapped back to the model's modules, each layer's measured ratio set against its MACs ratio; the
summary goes into the record (``explain``), the table and plot come from it (pbkit.report).

It exports first where the backend runs the ONNX file and the run has none (as the bench does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import nn

from pbkit.core import record
from pbkit.core.console import Steps
from pbkit.core.errors import PbkitError
from pbkit.core.runtime import strict_fp32
from pbkit.measure import align, backends, protocol
from pbkit.measure import explain as profiling
from pbkit.measure.layers import Timings
from pbkit.models import checkpoint, counts
from pbkit.stages import export
from pbkit.stages.context import Context, budgeted, need
from pbkit.stages.rundir import DENSE, PRUNED, model_file, onnx_file

MAX_RUNS = 10_000
MAX_ALIGN = 64  # layers the advisor times (5 widths each)


@dataclass(frozen=True)
class ExplainSettings:
    backend: str = "ort-cpu"
    precision: str = "fp32"
    batch: int = 1
    runs: int = 50  # profiled forward passes per model, after a warm-up
    align: int = 0  # >0: the channel-alignment advisor on this many of the slowest pruned layers

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.precision}/b{self.batch}"


def check(s: ExplainSettings) -> backends.Backend:
    """The backend, once it is seen to have a profiler pbkit maps back, and the settings sane."""
    be = backends.get(s.backend)
    if s.backend not in profiling.PROFILERS:
        raise PbkitError(
            f"pbkit explain profiles {', '.join(sorted(profiling.PROFILERS))} here; {s.backend!r}"
            " has no per-layer profiler pbkit maps back (TensorRT's is written for the GPU image)"
        )
    if s.precision not in be.precisions:
        raise PbkitError(
            f"backend {s.backend!r} runs {', '.join(be.precisions)}, not {s.precision}"
        )
    if s.precision != "fp32":
        raise PbkitError(f"pbkit explain profiles fp32 models; {s.precision} is not explained yet")
    if not 1 <= s.batch <= 4096:
        raise PbkitError(f"--batch {s.batch}: between 1 and 4096")
    if not 1 <= s.runs <= MAX_RUNS:
        raise PbkitError(f"--runs {s.runs}: between 1 and {MAX_RUNS}")
    if not 0 <= s.align <= MAX_ALIGN:
        raise PbkitError(f"--align {s.align}: between 0 (off) and {MAX_ALIGN} layers")
    return be


def run(ctx: Context, rec: record.Record | None, s: ExplainSettings) -> record.Record:
    rec = need(rec, "explain")
    be = check(s)
    with budgeted(ctx, "explain"):
        if be.artifact == "onnx":
            rec = export.onnx_current(ctx.run_dir, rec, ctx.cfg, ctx.quiet)
        trust = ctx.trust
        models = tuple(
            checkpoint.load_model(model_file(ctx.run_dir, rec, v), trust)[0]
            for v in (DENSE, PRUNED)
        )
        onnx = tuple(
            onnx_file(ctx.run_dir, rec, v) if be.artifact == "onnx" else None
            for v in (DENSE, PRUNED)
        )
        x = counts.example_input(rec.model.input_size, batch=s.batch, seed=2)
        steps = Steps(f"profiling layers on {s.key}", 2, ctx.quiet)
        strict_fp32()  # (the stage's isolated() scope restores it)
        load_before = os.getloadavg()[0]
        result = profiling.explain(
            _stepping(profiling.PROFILERS[s.backend], steps),
            (models[0], models[1]),
            (onnx[0], onnx[1]),
            x,
            rec.model.input_size,
            ctx.cfg.bench.threads or protocol.default_threads(),
            s.runs,
            (s.backend, s.precision, s.batch),
        )
        steps.close()
        result.loadavg = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        rec.explain[s.key] = result
        if s.align:
            rec.alignment[s.key] = _align(ctx, rec, be, s, (models[0], models[1]), result)
    record.write(ctx.run_dir, rec)
    return rec


def _stepping(profiler: profiling.Profiler, steps: Steps) -> profiling.Profiler:
    done = [0]

    def profile(*args):  # type: ignore[no-untyped-def]
        out = profiler(*args)
        done[0] += 1
        steps.update(done[0], (DENSE, PRUNED)[min(done[0], 2) - 1])
        return out

    return profile


def _align(
    ctx: Context,
    rec: record.Record,
    be: backends.Backend,
    s: ExplainSettings,
    models: tuple[nn.Module, nn.Module],
    explained: record.Explained,
) -> record.Alignment:
    """The advisor on the ``s.align`` slowest layers pruning narrowed (dense, pruned models)."""
    dense, pruned = models
    timings = Timings.of(ctx.cfg, be, s.precision, s.batch, rec.model.input_size, True)
    try:
        chosen = align.layers_that_matter(
            pruned, timings, explained, s.align, counts.layer_widths(dense)
        )
        steps = Steps(f"timing {len(chosen)} layers at aligned widths", len(chosen), ctx.quiet)
        load_before = os.getloadavg()[0]
        out = align.advise(
            timings.time_layer, chosen, (s.backend, s.precision, s.batch), steps.update
        )
        steps.close()
        out.loadavg = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        return out
    finally:
        timings.close()
