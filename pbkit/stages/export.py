"""Stage 3, export: dense and pruned models to ONNX (parity against fp32 torch on ONNX Runtime, on
the outputs the task compares) and to TensorRT engines (built from the ONNX files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pbkit.core import config, record
from pbkit.core.console import Steps, note
from pbkit.core.errors import PbkitError
from pbkit.core.runtime import strict_fp32
from pbkit.export import onnx, parity
from pbkit.machine import envinfo
from pbkit.measure.backends import cuda_reason
from pbkit.measure.protocol import default_threads
from pbkit.measure.runner import ort_feed, ort_session
from pbkit.models import checkpoint, counts
from pbkit.stages.context import Context, budgeted, need
from pbkit.stages.rundir import (
    DENSE,
    ONNX_FILES,
    PRUNED,
    StageClock,
    model_file,
    onnx_changed,
    onnx_file,
)
from pbkit.tasks import get as get_task

VARIANTS = (DENSE, PRUNED)


def onnx_ready(run_dir: Path) -> bool:
    return all((run_dir / f).is_file() for f in ONNX_FILES.values())


def engine_file(variant: str, precision: str) -> str:
    return f"{variant}.{precision}.plan"


def merge_parity(rec: record.Record, fresh: list[record.Parity]) -> None:
    """Replace the parity entries of the same (backend, variant, precision, batch), keep the
    rest."""

    def key(p: record.Parity) -> tuple[Any, ...]:
        return p.backend, p.variant, p.precision, p.batch

    keep = {key(p) for p in fresh}
    rec.parity = [p for p in rec.parity if key(p) not in keep] + fresh


def run(ctx: Context, rec: record.Record | None) -> record.Record:
    """Export to each format of ``export.formats`` (ONNX always first when its files are missing
    or are not the ones the record names)."""
    run_dir, cfg, quiet, rec = ctx.run_dir, ctx.cfg, ctx.quiet, need(rec, "export")
    changed = onnx_changed(run_dir, rec) if onnx_ready(run_dir) else None
    with budgeted(ctx, "the export"):
        if "onnx" in cfg.export.formats or not onnx_ready(run_dir) or changed is not None:
            if changed is not None:
                note(f"{changed}: exporting it again", quiet)
            rec = to_onnx(run_dir, rec, cfg, quiet, redone_because=changed)
        if "tensorrt" in cfg.export.formats:
            precisions = cfg.export.tensorrt.precisions
            rec = to_tensorrt(run_dir, rec, cfg, precisions, cfg.bench.batches, quiet)
    return rec


def to_onnx(
    run_dir: Path,
    rec: record.Record,
    cfg: config.Config,
    quiet: bool,
    redone_because: str | None = None,
) -> record.Record:
    """Export dense and pruned to ONNX and check parity on ONNX Runtime; ``redone_because``: why
    files that were there are made again (kept in the stage's record entry)."""
    clock = StageClock("export")
    e = cfg.export
    task = get_task(rec.model.task)
    strict_fp32()  # the reference outputs are fp32 (the stage's isolated() scope restores it)
    onnx_info: dict[str, Any] = {}
    checks: list[record.Parity] = []
    steps = Steps("exporting to ONNX", len(VARIANTS), quiet)
    for i, variant in enumerate(VARIANTS):
        model, spec, _ = checkpoint.load_model(
            model_file(run_dir, rec, variant), cfg.model.trust_checkpoint
        )
        onnx_info[variant] = onnx.to_onnx(
            model, spec.input_size, run_dir / ONNX_FILES[variant], e.opset, e.exporter
        )
        x = counts.example_input(spec.input_size, batch=e.parity_batch, seed=2)
        ref, label = task.parity_outputs(parity.reference_outputs(model, x))
        path = run_dir / ONNX_FILES[variant]
        sess = ort_session(path, cfg.bench.threads or default_threads())
        got, _ = task.parity_outputs(list(sess.run(None, ort_feed(sess, x.numpy(), path))))
        checks.append(
            record.Parity(
                backend="ort-cpu",
                variant=variant,
                precision="fp32",
                batch=e.parity_batch,
                **parity.check(got, ref, e, "fp32", label, what=ONNX_FILES[variant]),
            )
        )
        steps.update(i + 1, variant)
    steps.close()
    rec.artifacts["onnx"] = onnx_info
    rec.artifacts["onnx_sha256"] = onnx_info[PRUNED]["sha256"]
    merge_parity(rec, checks)
    clock.finish(rec, cfg, envinfo.collect())
    if redone_because is not None:
        rec.stages["export"].redone_because = redone_because
    record.write(run_dir, rec)
    return rec


def to_tensorrt(
    run_dir: Path,
    rec: record.Record,
    cfg: config.Config,
    precisions: Sequence[str],
    batches: list[int],
    quiet: bool,
) -> record.Record:
    """Build a TensorRT engine per model and precision, one optimisation profile per batch."""
    from pbkit.export import tensorrt

    version = tensorrt.version()
    if cuda_reason():
        raise PbkitError(f"building TensorRT engines needs an NVIDIA GPU: {cuda_reason()}")
    clock = StageClock("export-tensorrt")
    t = cfg.export.tensorrt
    info: dict[str, Any] = dict(rec.artifacts.get("tensorrt") or {})
    steps = Steps(
        f"building TensorRT {version} engines (batches {', '.join(map(str, batches))})",
        len(VARIANTS) * len(precisions),
        quiet,
    )
    done = 0
    for precision in precisions:
        for variant in VARIANTS:
            onnx_path = onnx_file(run_dir, rec, variant)
            if tensorrt.needs_fp16_onnx(
                precision, version
            ):  # TensorRT 11: a strongly typed fp16 model
                model, spec, _ = checkpoint.load_model(
                    model_file(run_dir, rec, variant), cfg.model.trust_checkpoint
                )
                onnx_path = run_dir / f"{variant}.fp16.onnx"
                onnx.to_onnx(
                    model.half(),
                    spec.input_size,
                    onnx_path,
                    cfg.export.opset,
                    cfg.export.exporter,
                    dtype=torch.float16,
                )
            opts = tensorrt.BuildOptions(
                precision=precision,
                batches=tuple(sorted(set(batches))),
                workspace_bytes=int(t.workspace_gib * (1 << 30)),
                optimization_level=t.optimization_level,
                timing_cache=run_dir / "trt-cache" / "timing.cache" if t.timing_cache else None,
            )
            if opts.timing_cache is not None:
                opts.timing_cache.parent.mkdir(exist_ok=True)
            built = tensorrt.build_engine(
                onnx_path, run_dir / engine_file(variant, precision), opts
            )
            info.setdefault(precision, {})[variant] = built
            done += 1
            steps.update(
                done,
                f"{variant} {precision}: {built['bytes'] / 1e6:.1f} MB in {built['build_s']:.0f} s",
            )
    steps.close()
    rec.artifacts["tensorrt"] = info
    clock.finish(rec, cfg, envinfo.collect())
    record.write(run_dir, rec)
    return rec


def engines_ready(rec: record.Record, run_dir: Path, precision: str, batches: list[int]) -> bool:
    built = (rec.artifacts.get("tensorrt") or {}).get(precision, {})
    return all(
        v in built
        and (run_dir / built[v]["path"]).is_file()
        and set(batches) <= set(built[v]["profiles"])
        for v in VARIANTS
    )
