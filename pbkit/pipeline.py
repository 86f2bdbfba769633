"""The stages, in the one direction data flows: config -> model -> prune -> finetune -> export ->
measure -> record. Each stage reads the run folder and rewrites its record atomically.

A run folder (``<out>/<run_id>/``) holds ``record.json`` plus the heavy artifacts
(``dense.pt``, ``pruned.pt``, ``dense.onnx``, ``pruned.onnx``). The prune stage builds the folder
under a temporary name and renames it when complete: an interrupted run leaves no half-made run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbkit import (
    __version__,
    backends,
    checkpoint,
    config,
    counts,
    data,
    envinfo,
    export,
    gpumon,
    measure,
    methods,
    models,
    record,
    yolo,
)
from pbkit.console import Steps, note
from pbkit.errors import PbkitError
from pbkit.fileio import ensure_writable_dir, sha256_file

DENSE, PRUNED = "dense", "pruned"
MODEL_FILES = {DENSE: "dense.pt", PRUNED: "pruned.pt"}
ONNX_FILES = {DENSE: "dense.onnx", PRUNED: "pruned.onnx"}


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_run_id(cfg: config.Config) -> str:
    if cfg.run_id:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", cfg.run_id):
            raise PbkitError(f"run_id {cfg.run_id!r} may hold only letters, digits, '.', '_' and '-'")
        return cfg.run_id
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    model = re.sub(r"[^A-Za-z0-9]+", "-", cfg.model.name).strip("-")
    return f"{model}-{cfg.prune.method}-{cfg.prune.scope}-{cfg.prune.speedup:g}x-{stamp}"


def _stage(name: str) -> dict[str, Any]:
    return {"name": name, "utc": utc_now(), "kit_version": __version__}


def _recipe(r: config.RecipeCfg) -> dict[str, Any]:
    return r.model_dump()


# --------------------------------------------------------------------------------------------
# model + base weights


def _load_dataset(cfg: config.Config) -> data.DataBundle | None:
    d = cfg.dataset
    if not d.name:
        return None
    return data.load(d.name, root=d.root, image_size=d.image_size, seed=d.seed, train_limit=d.train_limit,
                     test_limit=d.test_limit, download=d.download, num_classes=cfg.model.num_classes)


def resolve_spec(cfg: config.Config, bundle: data.DataBundle | None) -> models.ModelSpec:
    spec = models.resolve(cfg.model.name, num_classes=cfg.model.num_classes or (bundle.num_classes if bundle else None),
                          input_size=cfg.model.input_size or (bundle.image_size if bundle else None),
                          kwargs=cfg.model.kwargs)
    if bundle is not None and spec.num_classes != bundle.num_classes:
        raise PbkitError(f"model.num_classes={spec.num_classes} but dataset {bundle.name} has {bundle.num_classes} classes")
    return spec


def obtain_base(cfg: config.Config, spec: models.ModelSpec, bundle: data.DataBundle | None, bases_dir: Path,
                quiet: bool = False) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any] | None]:
    """The dense base model and how its weights came to be (same base for every method)."""
    m = cfg.model
    if m.weights == "checkpoint":
        if not m.checkpoint:
            raise PbkitError("model.weights is 'checkpoint' but model.checkpoint (a file path) is not set")
        model = checkpoint.load_base(spec, m.checkpoint, trust=m.trust_checkpoint, seed=m.seed)
        path = str(Path(m.checkpoint).expanduser().resolve())
        return model, {"weights": "checkpoint", "weights_path": path, "weights_sha256": sha256_file(path)}, None
    if m.weights == "pretrained":
        model = models.build(spec, pretrained=True, seed=m.seed)
        return model, {"weights": "pretrained", "weights_path": None,
                       "weights_sha256": checkpoint.state_sha256(model)}, None
    model = models.build(spec, seed=m.seed)
    if bundle is None or cfg.base.epochs == 0:
        return model, {"weights": "random", "weights_path": None, "weights_sha256": checkpoint.state_sha256(model)}, None
    # Train a base once per (architecture, dataset, recipe); every method then prunes that same file.
    key = json.dumps({"spec": spec.to_dict(), "seed": m.seed, "dataset": cfg.dataset.model_dump(exclude={"root"}),
                      "recipe": _recipe(cfg.base)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9]+", "-", spec.name).strip("-")
    path = bases_dir / f"{name}__{bundle.name}__{digest}.pt"
    if path.is_file():
        note(f"reusing base model {path}", quiet)
        model, _, extra = checkpoint.load_model(path)
        return model, {"weights": "trained", "weights_path": str(path), "weights_sha256": sha256_file(path)}, extra.get("training")
    steps = Steps(f"training base {spec.name} on {bundle.name}", cfg.base.epochs, quiet)
    history = train_model(model, bundle, cfg, cfg.base, steps, spec.input_size)
    ensure_writable_dir(bases_dir)
    checkpoint.save_model(model, spec, path, extra={"training": history})
    return model, {"weights": "trained", "weights_path": str(path), "weights_sha256": sha256_file(path)}, history


def train_model(model: torch.nn.Module, bundle: data.DataBundle, cfg: config.Config, recipe: config.RecipeCfg,
                steps: Steps, input_size: int = 32) -> dict[str, Any]:
    from pbkit import train

    r = _recipe(recipe)
    if bundle.task == "detect":  # the ultralytics trainer, on this very object
        from pbkit import yolo

        result = yolo.finetune(model, bundle.info["yaml"], input_size, r,
                               on_epoch=lambda e, row: steps.update(e, f"mAP50-95 {row['mAP50-95']:.2f}"))
        steps.close()
        return result
    loader = bundle.loader("train", r["batch_size"], seed=r["seed"])
    test = bundle.loader("test", cfg.dataset.eval_batch_size)
    result = train.fit(model, loader, test, r,
                       on_epoch=lambda e, row: steps.update(e, f"loss {row['loss']:.3f} acc {row.get('accuracy', 0):.2f}"))
    steps.close(f"acc {result['history'][-1].get('accuracy', float('nan')):.2f}" if result["history"] else "")
    return result


def _accuracy(model: torch.nn.Module, bundle: data.DataBundle | None, cfg: config.Config,
              input_size: int = 32) -> float | None:
    """Top-1 (classification) or mAP50-95 (detection), in percent; None without a dataset."""
    if bundle is None:
        return None
    if bundle.task == "detect":
        from pbkit import yolo

        return yolo.evaluate(model, bundle.info["yaml"], input_size, batch=cfg.dataset.eval_batch_size)
    from pbkit import train

    return train.evaluate(model, bundle.loader("test", cfg.dataset.eval_batch_size))


# --------------------------------------------------------------------------------------------
# stage 1: prune (+ finetune)


def prune_stage(cfg: config.Config, quiet: bool = False) -> Path:
    """Build the base, prune it to the target, finetune, save both models and the record."""
    methods.get(cfg.prune.method)  # fail fast on a typo, before any data is loaded
    out_root = ensure_writable_dir(cfg.out)
    run_id = make_run_id(cfg)
    final = out_root / run_id
    if final.exists():
        raise PbkitError(f"run folder {str(final)!r} already exists; choose another run_id")
    bundle = _load_dataset(cfg)
    spec = resolve_spec(cfg, bundle)
    method = methods.get(cfg.prune.method, spec.family)
    env = envinfo.collect()
    model, weights, base_training = obtain_base(cfg, spec, bundle, out_root.parent / "bases", quiet)
    tmp = out_root / f".tmp-{run_id}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        acc_base = _accuracy(model, bundle, cfg, spec.input_size)
        checkpoint.save_model(model, spec, tmp / MODEL_FILES[DENSE])
        steps = Steps(f"pruning {spec.name} ({method.key}, {cfg.prune.scope}) to {cfg.prune.speedup:g}x",
                      cfg.prune.iterative_steps, quiet)
        widths = counts.layer_widths(model)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="torch_pruning")
            res, calib_info = _prune(model, method, spec, cfg, steps, bundle, quiet)
        alignment = counts.channel_alignment(widths, counts.layer_widths(model))
        steps.close(f"{res.achieved_speedup:.3f}x in {res.steps} steps")
        acc_pruned = _accuracy(model, bundle, cfg, spec.input_size)
        finetune = None
        acc_ft = None
        if bundle is not None and cfg.finetune.epochs > 0:
            ft_steps = Steps(f"finetuning {cfg.finetune.epochs} epochs", cfg.finetune.epochs, quiet)
            finetune = train_model(model, bundle, cfg, cfg.finetune, ft_steps, spec.input_size)
            acc_ft = _accuracy(model, bundle, cfg, spec.input_size)
        checkpoint.save_model(model, spec, tmp / MODEL_FILES[PRUNED])
        now = utc_now()
        rec = record.Record(
            schema_version=record.SCHEMA_VERSION, kit_version=__version__, git_revision=env["git_revision"],
            run_id=run_id, created_utc=now, updated_utc=now, stages=[_stage("prune")],
            model=record.ModelInfo(name=spec.name, source=spec.source, family=spec.family, input_size=spec.input_size,
                                   num_classes=spec.num_classes, kwargs=spec.kwargs, seed=cfg.model.seed, **weights),
            method=record.MethodInfo(key=method.key, name=method.name, stage=method.stage, scope=cfg.prune.scope,
                                     target_speedup=cfg.prune.speedup, achieved_speedup=res.achieved_speedup,
                                     steps=res.steps, round_to=cfg.prune.round_to,
                                     iterative_steps=cfg.prune.iterative_steps,
                                     max_pruning_ratio=res.max_pruning_ratio,
                                     seed=cfg.prune.seed, step_time_s=res.step_time_s, prune_time_s=res.total_time_s,
                                     ignored_layers=res.ignored_layers, data=method.data,
                                     regularizer=method.regularizer, calibration=calib_info,
                                     sparsify=res.sparsify,
                                     reg_time_s=res.sparsify["time_s"] if res.sparsify else None),
            counts=record.Counts(macs_base=res.macs_base, macs_pruned=res.macs_pruned, params_base=res.params_base,
                                 params_pruned=res.params_pruned, input_size=spec.input_size, counter=counts.COUNTER,
                                 channel_alignment=alignment),
            dataset=None if bundle is None else record.DatasetInfo(
                name=bundle.name, image_size=bundle.image_size, num_classes=bundle.num_classes,
                train_size=bundle.info.get("train_size"), test_size=bundle.info.get("test_size"),
                task=bundle.task, yaml=bundle.info.get("yaml")),
            accuracy=record.Accuracy(metric=None if bundle is None else ("mAP50-95" if bundle.task == "detect" else "top1"),
                                     base=acc_base, pruned=acc_pruned, finetuned=acc_ft),
            finetune=finetune if finetune is not None else {**_recipe(cfg.finetune), "epochs_run": 0},
            base_training=base_training,
            artifacts={v: {"path": f, "sha256": sha256_file(tmp / f)} for v, f in MODEL_FILES.items()},
            env=env,
            config=cfg.model_dump(mode="json"),
        )
        record.write(tmp, rec)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def calibration_batches(bundle: data.DataBundle, batches: int, batch_size: int, seed: int) -> list[Any]:
    """The pinned calibration set: the same seed gives the same images and labels."""
    torch.manual_seed(seed)  # augmentations draw from torch's generator
    out = []
    for x, y in bundle.loader("train", batch_size, seed=seed, shuffle=True):
        out.append((x, y))
        if len(out) == batches:
            break
    return out


def _pruning_data(cfg: config.Config, bundle: data.DataBundle | None,
                  spec: models.ModelSpec) -> data.DataBundle | None:
    """Data for calibration and sparse training: prune.calibration.dataset, else the run's dataset."""
    name = cfg.prune.calibration.dataset
    if name is None or (bundle is not None and name == bundle.name):
        return bundle
    d = cfg.dataset
    other = data.load(name, root=d.root, image_size=spec.input_size, seed=cfg.prune.calibration.seed,
                      download=d.download, num_classes=spec.num_classes)
    if other.num_classes != spec.num_classes:
        raise PbkitError(f"calibration dataset {name} has {other.num_classes} classes, the model {spec.num_classes}")
    return other


def _prune(model: torch.nn.Module, method: methods.Method, spec: models.ModelSpec, cfg: config.Config,
           steps: Steps, bundle: data.DataBundle | None, quiet: bool) -> tuple[Any, dict[str, Any] | None]:
    from pbkit import train
    from pbkit.prune import prune_to_target

    pdata = _pruning_data(cfg, bundle, spec) if method.needs_data else None
    cal = cfg.prune.calibration
    batches, calib_info = None, None
    if method.collect is not None and pdata is not None:
        if pdata.task == "detect":
            batches = yolo.calibration_batches(pdata.info["yaml"], spec.input_size, cal.batches, cal.batch_size, cal.seed)
        else:
            batches = calibration_batches(pdata, cal.batches, cal.batch_size, cal.seed)
        calib_info = {"dataset": pdata.name, "batches": len(batches), "batch_size": cal.batch_size,
                      "seed": cal.seed, "samples": sum(len(y) for _, y in batches)}
    sparse_train = None
    if method.stage == "sparsify" and pdata is not None:
        sp = cfg.sparsify

        def sparse_train(pruner: Any) -> dict[str, Any]:
            recipe = {**sp.model_dump(exclude={"reg", "delta_reg"}), "weight_decay": 0.0}
            progress = Steps(f"sparse training {sp.epochs} epochs ({method.regularizer}, reg {sp.reg:g})",
                             sp.epochs, quiet)
            epoch_hook = getattr(pruner, method.per_epoch) if method.per_epoch else None
            if pdata.task == "detect":  # the ultralytics trainer, the penalty before every optimizer step
                result = yolo.finetune(model, pdata.info["yaml"], spec.input_size, recipe,
                                       on_epoch=lambda e, row: progress.update(e),
                                       regularize=lambda: pruner.regularize(model), after_epoch=epoch_hook)
            elif spec.family == "yolo":
                raise PbkitError(f"sparse training of a detector needs a detection dataset (--dataset <data.yaml> "
                                 f"or prune.calibration.dataset=<data.yaml>), not {pdata.name}")
            else:
                result = train.fit(model, pdata.loader("train", sp.batch_size, seed=sp.seed), None, recipe,
                                   on_epoch=lambda e, row: progress.update(e, f"loss {row['loss']:.3f}"),
                                   after_backward=lambda: pruner.regularize(model), after_epoch=epoch_hook)
            progress.close()
            model.eval()
            return {**result, "dataset": pdata.name, "reg": sp.reg, "delta_reg": sp.delta_reg,
                    "regularizer": method.regularizer}

    res = prune_to_target(model, method=method, scope=cfg.prune.scope, target_speedup=cfg.prune.speedup,
                          input_size=spec.input_size, num_classes=spec.num_classes,
                          iterative_steps=cfg.prune.iterative_steps, round_to=cfg.prune.round_to,
                          seed=cfg.prune.seed, family=spec.family, on_step=lambda i, s: steps.update(i, f"{s:.3f}x"),
                          calibration=batches, sparse_train=sparse_train, reg=cfg.sparsify.reg,
                          delta_reg=cfg.sparsify.delta_reg)
    return res, calib_info


# --------------------------------------------------------------------------------------------
# stage 2: export


def _run_config(rec: record.Record, overrides: list[str] | tuple[str, ...] = ()) -> config.Config:
    data_ = dict(rec.config)
    for item in overrides:
        data_ = config.apply_override(data_, item)
    return config.validate(data_, f"run {rec.run_id} config")


def export_stage(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), quiet: bool = False) -> record.Record:
    """Export dense and pruned models to each format of ``export.formats``: ONNX (parity vs fp32
    torch on ONNX Runtime) and TensorRT engines (built from the ONNX files)."""
    run_dir = Path(run_dir)
    rec = record.read(run_dir)
    cfg = _run_config(rec, overrides)
    if "onnx" in cfg.export.formats or not _onnx_ready(run_dir):
        rec = _export_onnx(run_dir, rec, cfg, quiet)
    if "tensorrt" in cfg.export.formats:
        rec = _export_tensorrt(run_dir, rec, cfg, cfg.export.tensorrt.precisions, cfg.bench.batches, quiet)
    return rec


def _onnx_ready(run_dir: Path) -> bool:
    return all((run_dir / f).is_file() for f in ONNX_FILES.values())


def compare_outputs(family: str, got: list[Any], ref: list[Any], e: config.ExportCfg, precision: str) -> dict[str, Any]:
    """Parity against fp32 torch: the fp32 gate (rtol/atol), or for fp16 cosine >= fp16_cosine.
    A detector is compared on its raw head outputs (box distributions, class logits)."""
    label = "all outputs"
    if family == "yolo" and len(ref) > max(yolo.RAW_HEAD):
        ref, got, label = [ref[i] for i in yolo.RAW_HEAD], [got[i] for i in yolo.RAW_HEAD], yolo.RAW_HEAD_LABEL
    cmp = export.compare(got, ref, e.rtol, e.atol)
    out = {**cmp, "rtol": e.rtol, "atol": e.atol, "outputs": label, "gate": precision}
    if precision == "fp16":
        out.update(passed=bool(np.isfinite(cmp["cosine"]) and cmp["cosine"] >= e.fp16_cosine and
                               cmp["max_abs"] != float("inf")), cosine_min=e.fp16_cosine)
    return out


def _export_onnx(run_dir: Path, rec: record.Record, cfg: config.Config, quiet: bool) -> record.Record:
    e = cfg.export
    onnx_info: dict[str, Any] = {}
    parity: list[record.Parity] = []
    steps = Steps("exporting to ONNX", 2, quiet)
    for i, variant in enumerate((DENSE, PRUNED)):
        model, spec, _ = checkpoint.load_model(run_dir / MODEL_FILES[variant])
        onnx_info[variant] = export.to_onnx(model, spec.input_size, run_dir / ONNX_FILES[variant], e.opset, e.exporter)
        x = counts.example_input(spec.input_size, batch=e.parity_batch, seed=2)
        ref = export.reference_outputs(model, x)
        sess = backends.ort_session(run_dir / ONNX_FILES[variant], measure.cores())
        got = list(sess.run(None, {sess.get_inputs()[0].name: x.numpy()}))
        cmp = compare_outputs(spec.family, got, ref, e, "fp32")
        parity.append(record.Parity(backend="ort-cpu", variant=variant, precision="fp32", batch=e.parity_batch, **cmp))
        steps.update(i + 1, variant)
    steps.close()
    rec.artifacts["onnx"] = onnx_info
    rec.artifacts["onnx_sha256"] = onnx_info[PRUNED]["sha256"]
    _merge_parity(rec, parity)
    rec.config = cfg.model_dump(mode="json")
    _touch(rec, "export")
    record.write(run_dir, rec)
    return rec


def _merge_parity(rec: record.Record, parity: list[record.Parity]) -> None:
    def key(p: record.Parity) -> tuple[Any, ...]:
        return p.backend, p.variant, p.precision, p.batch

    keep = {key(p) for p in parity}
    rec.parity = [p for p in rec.parity if key(p) not in keep] + parity


def engine_file(variant: str, precision: str) -> str:
    return f"{variant}.{precision}.plan"


def _export_tensorrt(run_dir: Path, rec: record.Record, cfg: config.Config, precisions: list[str],
                     batches: list[int], quiet: bool) -> record.Record:
    """Build a TensorRT engine per model and precision, one optimisation profile per batch."""
    from pbkit import trt

    version = trt.version()
    if backends.cuda_reason():
        raise PbkitError(f"building TensorRT engines needs an NVIDIA GPU: {backends.cuda_reason()}")
    t = cfg.export.tensorrt
    info: dict[str, Any] = dict(rec.artifacts.get("tensorrt") or {})
    steps = Steps(f"building TensorRT {version} engines (batches {', '.join(map(str, batches))})",
                  2 * len(precisions), quiet)
    done = 0
    for precision in precisions:
        for variant in (DENSE, PRUNED):
            onnx_path = run_dir / ONNX_FILES[variant]
            if trt.needs_fp16_onnx(precision, version):  # TensorRT 11: a strongly typed fp16 model
                model, spec, _ = checkpoint.load_model(run_dir / MODEL_FILES[variant])
                onnx_path = run_dir / f"{variant}.fp16.onnx"
                export.to_onnx(model.half(), spec.input_size, onnx_path, cfg.export.opset, cfg.export.exporter,
                               dtype=torch.float16)
            opts = trt.BuildOptions(precision=precision, batches=tuple(sorted(set(batches))),
                                    workspace_bytes=int(t.workspace_gib * (1 << 30)),
                                    optimization_level=t.optimization_level,
                                    timing_cache=run_dir / "trt-cache" / "timing.cache" if t.timing_cache else None)
            if opts.timing_cache is not None:
                opts.timing_cache.parent.mkdir(exist_ok=True)
            built = trt.build_engine(onnx_path, run_dir / engine_file(variant, precision), opts)
            info.setdefault(precision, {})[variant] = built
            done += 1
            steps.update(done, f"{variant} {precision}: {built['bytes'] / 1e6:.1f} MB in {built['build_s']:.0f} s")
    steps.close()
    rec.artifacts["tensorrt"] = info
    rec.config = cfg.model_dump(mode="json")
    _touch(rec, "export-tensorrt")
    record.write(run_dir, rec)
    return rec


def _touch(rec: record.Record, stage: str) -> None:
    rec.stages.append(_stage(stage))
    rec.updated_utc = utc_now()


def parity_failures(rec: record.Record) -> list[record.Parity]:
    return [p for p in rec.parity if not p.passed]


# --------------------------------------------------------------------------------------------
# stage 3: measure


def _artifact(run_dir: Path, be: backends.Backend, variant: str, precision: str) -> Path:
    if be.artifact == "model":
        return run_dir / MODEL_FILES[variant]
    if be.artifact == "onnx":
        return run_dir / ONNX_FILES[variant]
    return run_dir / engine_file(variant, precision)


def _plan(cfg: config.Config, quiet: bool) -> list[tuple[backends.Backend, str]]:
    """(backend, precision) pairs to measure; fails before anything is measured."""
    b = cfg.bench
    chosen = [backends.get(name) for name in b.backends]
    pairs, skipped = [], []
    for be in chosen:
        mine = [p for p in b.precisions if p in be.precisions]
        if not mine:
            raise PbkitError(f"backend {be.name!r} runs {', '.join(be.precisions)}; bench.precisions asks for "
                             f"{', '.join(b.precisions)}")
        pairs += [(be, p) for p in mine]
        skipped += [f"{be.name}/{p}" for p in b.precisions if p not in be.precisions]
    if skipped:
        note(f"not measured (precision not supported by the backend): {', '.join(skipped)}", quiet)
    return pairs


def _engines_ready(rec: record.Record, run_dir: Path, precision: str, batches: list[int]) -> bool:
    built = (rec.artifacts.get("tensorrt") or {}).get(precision, {})
    return all(v in built and (run_dir / built[v]["path"]).is_file() and set(batches) <= set(built[v]["profiles"])
               for v in (DENSE, PRUNED))


def _build_runner(be: backends.Backend, spec: backends.RunSpec, settings: dict[str, Any], handle: Any,
                  track: bool) -> tuple[backends.Runner, dict[str, Any] | None, tuple[float, int]]:
    """Make a runner and warm it up (the first call timed apart), measuring memory meanwhile:
    NVML used memory before / peak (sampled) / after, torch peak allocated and reserved, RSS."""
    cuda = be.device == "cuda"
    if not track:
        runner = be.make(spec)
        return runner, None, measure.warm_up(runner, float(settings["warmup_s"]), int(settings["warmup_iters"]))
    import psutil

    proc = psutil.Process()
    mem: dict[str, Any] = {"rss_before_bytes": proc.memory_info().rss}
    if cuda:
        torch.cuda.synchronize(spec.device_index)
        torch.cuda.reset_peak_memory_stats(spec.device_index)
        mem.update(nvml_used_before_bytes=gpumon.used_memory(handle),
                   torch_allocated_before_bytes=torch.cuda.memory_allocated(spec.device_index))
    with gpumon.Sampler(handle if cuda else None, 0.005) as sampler:
        runner = be.make(spec)
        warm = measure.warm_up(runner, float(settings["warmup_s"]), int(settings["warmup_iters"]))
    mem.update(rss_peak_bytes=sampler.rss_peak, rss_after_bytes=proc.memory_info().rss, samples=sampler.samples)
    if cuda:
        torch.cuda.synchronize(spec.device_index)
        mem.update(nvml_used_peak_bytes=sampler.nvml_peak, nvml_used_after_bytes=gpumon.used_memory(handle),
                   torch_peak_allocated_bytes=torch.cuda.max_memory_allocated(spec.device_index),
                   torch_peak_reserved_bytes=torch.cuda.max_memory_reserved(spec.device_index))
        if handle is None:
            mem["nvml"] = "unavailable (no NVML handle; see env.unavailable)"
    mem.update(runner.memory())
    return runner, mem, warm


def bench_stage(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), quiet: bool = False) -> record.Record:
    """Measure dense and pruned latency, alternating, on every backend, precision and batch size,
    with memory and parity against fp32 torch at each point."""
    run_dir = Path(run_dir)
    rec = record.read(run_dir)
    cfg = _run_config(rec, overrides)
    b = cfg.bench
    pairs = _plan(cfg, quiet)
    if any(be.artifact != "model" for be, _ in pairs) and not _onnx_ready(run_dir):
        note("no ONNX files yet: exporting first", quiet)
        rec = _export_onnx(run_dir, rec, cfg, quiet)
    for precision in dict.fromkeys(p for be, p in pairs if be.artifact == "engine"):
        if not _engines_ready(rec, run_dir, precision, b.batches):
            note(f"no TensorRT {precision} engines for batches {b.batches} yet: building them first", quiet)
            rec = _export_tensorrt(run_dir, rec, cfg, [precision], b.batches, quiet)
    quick = measure.QUICK if b.quick else {}
    cpu_settings = {**b.model_dump(), **quick}
    gpu_settings = {**b.model_dump(), "min_time_s": b.gpu_min_time_s, "min_iters": b.gpu_min_iters, **quick}
    threads = b.threads or measure.default_threads()
    env = envinfo.collect()  # the machine that measures, GPU state at the start
    uses_gpu = any(be.device == "cuda" for be, _ in pairs)
    handle, gpu = None, None
    if uses_gpu:
        gpu = next((g for g in env["gpus"] if g.get("index") == b.device), None)
        if gpu is None:
            raise PbkitError(f"bench.device={b.device}: no such CUDA device (found {len(env['gpus'])})")
        handle = gpumon.handle_for(gpu.get("uuid"), b.device, env["unavailable"])
    size = rec.model.input_size
    refs: dict[tuple[str, int], list[Any]] = {}
    ref_models = {v: checkpoint.load_model(run_dir / MODEL_FILES[v])[0] for v in (DENSE, PRUNED)}
    points: list[record.LatencyPoint] = []
    parity: list[record.Parity] = []
    seen_reasons: set[str] = set()
    steps = Steps("measuring latency (dense and pruned alternate)", len(pairs) * len(b.batches), quiet)
    done = 0
    for be, precision in pairs:
        settings = gpu_settings if be.device == "cuda" else cpu_settings
        for batch in b.batches:
            x = counts.example_input(size, batch=batch, seed=2)  # the fixed batch, also for parity
            runners: dict[str, backends.Runner] = {}
            mem: dict[str, Any] = {}
            warmed: dict[str, tuple[float, int]] = {}
            flags: dict[str, dict[str, Any]] = {}
            try:
                for v in (DENSE, PRUNED):
                    spec = backends.RunSpec(path=_artifact(run_dir, be, v, precision), x=x, precision=precision,
                                            threads=threads, channels_last=b.channels_last,
                                            compile_mode=b.compile_mode, cache_dir=run_dir / "trt-cache",
                                            device_index=b.device)
                    runners[v], mem[v], warmed[v] = _build_runner(be, spec, settings, handle, b.memory)
                    flags[v] = dict(runners[v].flags)
                    if (v, batch) not in refs:
                        refs[(v, batch)] = export.reference_outputs(ref_models[v], x)
                    cmp = compare_outputs(rec.model.family, runners[v].outputs(), refs[(v, batch)], cfg.export,
                                          precision)
                    parity.append(record.Parity(backend=be.name, variant=v, precision=precision, batch=batch, **cmp))
                monitor = (lambda: gpumon.Sampler(handle, 0.1)) if be.device == "cuda" and handle is not None else None
                res = measure.measure_point(runners, settings, monitor=monitor, warmed=warmed)
            finally:
                for r in runners.values():
                    r.close()
                runners.clear()
                if be.device == "cuda":
                    torch.cuda.empty_cache()
            for v in (DENSE, PRUNED):
                r = res[v]
                seen_reasons.update(r["throttle_reasons"])
                dense_gpu, mine_gpu = res[DENSE].get("gpu_compute"), r.get("gpu_compute")
                points.append(record.LatencyPoint(
                    backend=be.name, device=be.device, variant=v, batch=batch, precision=precision,
                    threads=threads if be.device == "cpu" else None,
                    throughput_ips=batch * r["n"] / r["duration_s"] if r["duration_s"] > 0 else 0.0,
                    quick=b.quick, artifact_sha256=sha256_file(_artifact(run_dir, be, v, precision)),
                    speedup_vs_dense=(res[DENSE]["median_ms"] / r["median_ms"]) if v == PRUNED else None,
                    gpu_speedup_vs_dense=(dense_gpu["median_ms"] / mine_gpu["median_ms"])
                    if v == PRUNED and dense_gpu and mine_gpu else None,
                    flags=flags[v], memory=mem.get(v), input_shape=list(x.shape), dtype=precision, **r))
            done += 1
            sp = res[DENSE]["median_ms"] / res[PRUNED]["median_ms"]
            steps.update(done, f"{be.name}/{precision} b{batch}: {res[DENSE]['median_ms']:.3f} -> "
                               f"{res[PRUNED]['median_ms']:.3f} ms ({sp:.2f}x)")
    steps.close()

    def key(p: record.LatencyPoint) -> tuple[Any, ...]:
        return p.backend, p.precision, p.batch

    keep = {key(p) for p in points}
    rec.latency = [p for p in rec.latency if key(p) not in keep] + points
    _merge_parity(rec, parity)
    if rec.counts.channel_alignment is None:  # records made before alignment was recorded
        rec.counts.channel_alignment = counts.channel_alignment(counts.layer_widths(ref_models[DENSE]),
                                                                counts.layer_widths(ref_models[PRUNED]))
    if gpu is not None:
        gpu["state_end"] = gpumon.state(handle, env["unavailable"], "gpu.state_end") if handle is not None else None
        gpu["throttle_reasons_seen"] = sorted(seen_reasons)
    rec.env = env
    rec.bench = {k: settings_value for k, settings_value in cpu_settings.items()
                 if k in ("warmup_s", "warmup_iters", "min_time_s", "min_iters", "gpu_min_time_s", "gpu_min_iters",
                          "rounds", "cov_limit", "max_repeats", "channels_last", "compile_mode", "memory")}
    rec.bench.update(quick=b.quick, threads=threads, measured_utc=utc_now(), host=env["host"],
                     gpu=None if gpu is None else {k: gpu.get(k) for k in ("index", "name", "uuid")})
    rec.config = cfg.model_dump(mode="json")
    _touch(rec, "bench")
    record.write(run_dir, rec)
    return rec


def run_all(cfg: config.Config, quiet: bool = False) -> tuple[Path, record.Record]:
    _plan(cfg, quiet=True)  # check the whole plan before the long work starts
    run_dir = prune_stage(cfg, quiet)
    export_stage(run_dir, quiet=quiet)
    rec = bench_stage(run_dir, quiet=quiet)
    return run_dir, rec
