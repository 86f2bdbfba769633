"""Stage 3, export: dense and pruned models to ONNX (parity against fp32 torch on ONNX Runtime, on
the outputs the task compares), to INT8 models (post-training static quantization of those ONNX
files, calibrated on the same images for both: ``export.int8``) and to TensorRT engines (built from
the ONNX files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pbkit.core import config, record
from pbkit.core.console import Steps, note
from pbkit.core.errors import PbkitError
from pbkit.core.runtime import strict_fp32
from pbkit.export import onnx, parity, quantize
from pbkit.machine import envinfo
from pbkit.measure.backends import cuda_reason
from pbkit.measure.protocol import default_threads
from pbkit.measure.runner import ort_feed, ort_session
from pbkit.models import checkpoint, counts
from pbkit.stages.context import Context, budgeted, dataset, need
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
        if "onnx" in cfg.export.formats and "int8" in cfg.export.precisions:
            rec = to_int8(run_dir, rec, cfg, int8_families(), quiet)
            fail_on_quantizer(rec, int8_families())
        if "tensorrt" in cfg.export.formats:
            precisions = cfg.export.tensorrt.precisions
            rec = to_tensorrt(run_dir, rec, cfg, precisions, cfg.bench.batches, quiet)
    return rec


def onnx_current(
    run_dir: Path, rec: record.Record, cfg: config.Config, quiet: bool
) -> record.Record:
    """The run's ONNX files as its record names them: exported first where there are none or
    they changed since (what a stage that runs them needs before it measures or profiles)."""
    why = "no ONNX files yet" if not onnx_ready(run_dir) else onnx_changed(run_dir, rec)
    if why is None:
        return rec
    note(f"{why}: exporting first", quiet)
    return to_onnx(run_dir, rec, cfg, quiet, redone_because=why)


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


def int8_families() -> list[str]:
    """The INT8 models `pbkit export --precision int8` writes: those of the CPU runtimes that are
    installed (ONNX Runtime's QDQ model; OpenVINO's NNCF IR)."""
    import importlib.util

    out = ["ort"]
    if all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf")):
        out.append("ov")
    return out


def calibration_set(
    run_dir: Path, rec: record.Record, cfg: config.Config
) -> quantize.CalibrationSet:
    """The images every INT8 model of the run is calibrated on: the dataset's training split, or
    seeded N(0, 1) images where ``export.int8.calibration`` says ``synthetic``. A model without a
    dataset is refused unless that is said: its INT8 accuracy would mean nothing."""
    q = cfg.export.int8
    if q.calibration == "synthetic":
        return quantize.synthetic(q.images, rec.model.input_size, q.seed)
    if not cfg.dataset.name:
        raise PbkitError(
            f"int8 needs calibration images and this run of {rec.model.name} has no dataset"
            " (dataset.name is null): pass --calibration synthetic (seeded N(0,1) images: the"
            " latency is measured, the accuracy is not) or prune with a dataset"
        )
    bundle = dataset(cfg)
    assert bundle is not None
    _, spec, _ = checkpoint.load_model(model_file(run_dir, rec, DENSE), cfg.model.trust_checkpoint)
    images = get_task(rec.model.task).calibration_images(bundle, spec, q.images, q.seed)
    return quantize.CalibrationSet(images, bundle.name, "train", q.seed)


def _quantized(rec: record.Record) -> list[record.QuantArtifact]:
    return list((rec.quantization.artifacts or []) if rec.quantization else [])


def int8_artifact(rec: record.Record, family: str, variant: str) -> record.QuantArtifact | None:
    """The record's entry of a variant's INT8 model for a family (ok or failed), if any."""
    for a in _quantized(rec):
        if a.family == family and a.variant == variant:
            return a
    return None


def int8_ready(run_dir: Path, rec: record.Record, cfg: config.Config, family: str) -> bool:
    """Both INT8 models of ``family`` are there, quantized from the current ONNX files with the
    current calibration settings (a failed one counts as done: its reason is recorded)."""
    cal = rec.quantization.calibration if rec.quantization else None
    q = cfg.export.int8
    if cal is None or (cal.method, cal.per_channel, cal.seed, cal.images) != (
        q.method,
        q.per_channel,
        q.seed,
        q.images,
    ):
        return False
    if (cal.source == "synthetic") != (q.calibration == "synthetic"):
        return False
    for v in VARIANTS:
        a = int8_artifact(rec, family, v)
        src = (rec.artifacts.get("onnx") or {}).get(v) or {}
        if a is None or a.source_sha256 != src.get("sha256"):
            return False
        if a.status == "ok" and not quantize.have(run_dir, a):
            return False
    return True


def to_int8(
    run_dir: Path,
    rec: record.Record,
    cfg: config.Config,
    families: Sequence[str],
    quiet: bool,
) -> record.Record:
    """Quantize the dense and the pruned ONNX for each of ``families`` (ort | ov | trt) on one
    calibration set; a quantizer failure is recorded with its reason (the fp32 files and results
    stay), the others go on."""
    todo = [f for f in families if not int8_ready(run_dir, rec, cfg, f)]
    if not todo:
        return rec
    q = cfg.export.int8
    calib = calibration_set(run_dir, rec, cfg)
    described = calib.describe(q)
    kept = [a for a in _quantized(rec) if a.family not in todo]
    old = rec.quantization.calibration if rec.quantization else None
    if old is not None and old.model_dump() != described.model_dump():
        kept = []  # INT8 models of other calibration settings are not kept beside these
    steps = Steps(
        f"quantizing to INT8 ({described.images} {described.split} images, {q.method}"
        f"{', per-channel' if q.per_channel else ''})",
        len(todo) * len(VARIANTS),
        quiet,
    )
    fresh: list[record.QuantArtifact] = []
    for family in todo:
        for variant in VARIANTS:
            src = onnx_file(run_dir, rec, variant)
            dst = run_dir / quantize.file_name(variant, family)
            try:
                art = quantize.quantize(family, variant, src, dst, calib, q)
            except quantize.QuantizeError as e:
                quantize.remove(run_dir, dst.name)
                art = quantize.failed(family, variant, src, str(e))
            fresh.append(art)
            steps.update(
                len(fresh),
                f"{family} {variant}: "
                + (f"{art.seconds:.1f} s" if art.status == "ok" else f"FAILED: {art.reason}"),
            )
    steps.close()
    rec.quantization = record.Quantization(calibration=described, artifacts=kept + fresh)
    record.write(run_dir, rec)
    return rec


def fail_on_quantizer(rec: record.Record, families: Sequence[str]) -> None:
    """One line (exit 2) for the INT8 models that could not be made; the record keeps why."""
    bad = [a for a in _quantized(rec) if a.family in families and a.status == "failed"]
    if bad:
        raise PbkitError(
            f"INT8 quantization failed for {len(bad)} model(s) (the fp32 files and results are"
            f" kept; the record says why): {bad[0].reason}"
        )


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
    if "int8" in precisions:  # explicit quantization: built from the symmetric QDQ models
        rec = to_int8(run_dir, rec, cfg, ["trt"], quiet)
        fail_on_quantizer(rec, ["trt"])
    for precision in precisions:
        for variant in VARIANTS:
            onnx_path = onnx_file(run_dir, rec, variant)
            if precision == "int8":
                art = int8_artifact(rec, "trt", variant)
                assert art is not None and art.path
                onnx_path = run_dir / art.path
            elif tensorrt.needs_fp16_onnx(
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
