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

import torch

from pbkit import (
    __version__,
    checkpoint,
    config,
    counts,
    data,
    envinfo,
    export,
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
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="torch_pruning")
            res, calib_info = _prune(model, method, spec, cfg, steps, bundle, quiet)
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
                                 params_pruned=res.params_pruned, input_size=spec.input_size, counter=counts.COUNTER),
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
    """Export dense and pruned models to ONNX and record parity vs fp32 torch on ONNX Runtime."""
    run_dir = Path(run_dir)
    rec = record.read(run_dir)
    cfg = _run_config(rec, overrides)
    e = cfg.export
    onnx_info: dict[str, Any] = {}
    parity: list[record.Parity] = []
    steps = Steps("exporting to ONNX", 2, quiet)
    for i, variant in enumerate((DENSE, PRUNED)):
        model, spec, _ = checkpoint.load_model(run_dir / MODEL_FILES[variant])
        onnx_info[variant] = export.to_onnx(model, spec.input_size, run_dir / ONNX_FILES[variant], e.opset, e.exporter)
        x = counts.example_input(spec.input_size, batch=e.parity_batch, seed=2)
        ref = export.reference_outputs(model, x)
        sess = measure.ort_session(run_dir / ONNX_FILES[variant], measure.cores())
        got = list(sess.run(None, {sess.get_inputs()[0].name: x.numpy()}))
        label = "all outputs"
        if spec.family == "yolo" and len(ref) > max(yolo.RAW_HEAD):
            ref, got, label = [ref[i] for i in yolo.RAW_HEAD], [got[i] for i in yolo.RAW_HEAD], yolo.RAW_HEAD_LABEL
        cmp = export.compare(got, ref, e.rtol, e.atol)
        parity.append(record.Parity(backend="ort-cpu", variant=variant, precision="fp32", batch=e.parity_batch,
                                    rtol=e.rtol, atol=e.atol, outputs=label, **cmp))
        steps.update(i + 1, variant)
    steps.close()
    rec.artifacts["onnx"] = onnx_info
    rec.artifacts["onnx_sha256"] = onnx_info[PRUNED]["sha256"]
    keep = {(p.backend, p.variant) for p in parity}
    rec.parity = [p for p in rec.parity if (p.backend, p.variant) not in keep] + parity
    rec.config = cfg.model_dump(mode="json")
    _touch(rec, "export")
    record.write(run_dir, rec)
    return rec


def _touch(rec: record.Record, stage: str) -> None:
    rec.stages.append(_stage(stage))
    rec.updated_utc = utc_now()


def parity_failures(rec: record.Record) -> list[record.Parity]:
    return [p for p in rec.parity if not p.passed]


# --------------------------------------------------------------------------------------------
# stage 3: measure


def bench_stage(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), quiet: bool = False) -> record.Record:
    """Measure dense and pruned latency, alternating, on every backend and batch size."""
    run_dir = Path(run_dir)
    rec = record.read(run_dir)
    cfg = _run_config(rec, overrides)
    b = cfg.bench
    backends = [measure.get(name) for name in b.backends]  # fail before measuring anything
    if any(be.artifact == "onnx" for be in backends) and not all((run_dir / f).is_file() for f in ONNX_FILES.values()):
        note("no ONNX files yet: exporting first", quiet)
        rec = export_stage(run_dir, overrides, quiet)
    settings = {**b.model_dump(), **(measure.QUICK if b.quick else {})}
    threads = b.threads or measure.default_threads()
    points: list[record.LatencyPoint] = []
    total = len(backends) * len(b.batches)
    steps = Steps("measuring latency (dense and pruned alternate)", total, quiet)
    done = 0
    for be in backends:
        for batch in b.batches:
            files = MODEL_FILES if be.artifact == "model" else ONNX_FILES
            runners = {v: be.make(run_dir / files[v], rec.model.input_size, batch, threads) for v in (DENSE, PRUNED)}
            res = measure.measure_point(runners, settings)
            for v in (DENSE, PRUNED):
                r = res[v]
                points.append(record.LatencyPoint(
                    backend=be.name, device=be.device, variant=v, batch=batch, precision=be.precision, threads=threads,
                    throughput_ips=batch * r["n"] / r["duration_s"] if r["duration_s"] > 0 else 0.0,
                    quick=b.quick, artifact_sha256=sha256_file(run_dir / files[v]),
                    speedup_vs_dense=(res[DENSE]["median_ms"] / r["median_ms"]) if v == PRUNED else None, **r))
            done += 1
            sp = res[DENSE]["median_ms"] / res[PRUNED]["median_ms"]
            steps.update(done, f"{be.name} b{batch}: {res[DENSE]['median_ms']:.3f} -> {res[PRUNED]['median_ms']:.3f} ms ({sp:.2f}x)")
    steps.close()
    keep = {(p.backend, p.batch) for p in points}
    rec.latency = [p for p in rec.latency if (p.backend, p.batch) not in keep] + points
    rec.bench = {k: settings[k] for k in ("warmup_s", "warmup_iters", "min_time_s", "min_iters", "rounds", "cov_limit",
                                          "max_repeats")}
    rec.env = envinfo.collect()  # the machine that measured
    rec.bench.update(quick=b.quick, threads=threads, measured_utc=utc_now(), host=rec.env["host"])
    rec.config = cfg.model_dump(mode="json")
    _touch(rec, "bench")
    record.write(run_dir, rec)
    return rec


def run_all(cfg: config.Config, quiet: bool = False) -> tuple[Path, record.Record]:
    for name in cfg.bench.backends:  # check the whole plan before the long work starts
        measure.get(name)
    run_dir = prune_stage(cfg, quiet)
    export_stage(run_dir, quiet=quiet)
    rec = bench_stage(run_dir, quiet=quiet)
    return run_dir, rec
