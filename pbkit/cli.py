"""The ``pbkit`` command line: one verb per mode, defaults in one YAML, ``key=value`` overrides.

Exit codes: 0 ok, 2 bad input (one line on stderr), 3 an ONNX parity check failed (everything
was still written), 1 an internal error, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pbkit.core import signals
from pbkit.core.errors import PbkitError, first_line
from pbkit.report.safe import visible

EXIT_PARITY = 3
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def _print(renderable: Any) -> None:
    from pbkit.core.console import out

    out.print(renderable)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="pbkit", prog_name="pbkit")
def cli() -> None:
    """pbkit: prune vision models, export them, and measure real speed-ups.

    \b
    Typical session:
      pbkit list models
      pbkit prune --model resnet18_cifar --method l1 --speedup 2
      pbkit export results/runs/<run_id>
      pbkit bench results/runs/<run_id> --backend torch-cpu --backend ort-cpu
      pbkit run configs/bench/resnet18_cifar.yaml --set prune.method=fpgm
      pbkit report results/runs
    """


# ------------------------------------------------------------------------------------------ list


@cli.command("list", context_settings=CONTEXT)
@click.argument("what", type=click.Choice(["models", "methods", "backends", "datasets", "scopes"]))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def list_cmd(what: str, as_json: bool) -> None:
    """List what can be named: models, methods, backends, datasets, scopes.

    \b
    Example:
      pbkit list methods
      pbkit list models --json | jq '.prefixes["timm:"].names | length'
    """
    _LISTS[what](as_json)


def _list_models(as_json: bool) -> None:
    """Every model name and source: the registry, the hubs' prefixes, the user's own, and the
    names the zoo found not to prune."""
    from rich.table import Table

    rows: list[dict[str, Any]] = []
    from pbkit import models

    rows = [
        dict(
            name=e.name,
            family=e.family,
            task=e.task,
            source=e.source,
            input_size=e.input_size,
            num_classes=e.num_classes,
            description=e.description,
        )
        for e in models.MODELS.values()
    ]
    rows += [
        dict(
            name=n,
            family="yolo",
            task="detect",
            source="ultralytics",
            input_size=640,
            num_classes=80,
            description=d,
        )
        for n, d in models.YOLO_MODELS.items()
    ]
    from pbkit.models import segment

    seg_names = ["tv:" + n for n in segment.torchvision_names()]
    known = {
        n: why
        for n in ("tv:" + m for m in models.torchvision_names())
        if (why := models.known_failure(n)) is not None
    }
    known_timm = {
        n: why
        for n in ("timm:" + m for m in models.timm_names())
        if (why := models.known_failure(n)) is not None
    }
    if as_json:
        _emit_json(
            {
                "models": rows,
                "prefixes": {
                    "tv:": {
                        "description": models.PREFIXES["tv:"],
                        "names": models.torchvision_names(),
                        "segmentation": seg_names,
                        "known_not_to_prune": known,
                    },
                    "timm:": {
                        "description": models.PREFIXES["timm:"],
                        "names": models.timm_names(),
                        "known_not_to_prune": known_timm,
                    },
                    "timmseg:": {
                        "description": models.PREFIXES["timmseg:"],
                        "names": [n for n in models.timm_names() if n.startswith("vit_")],
                    },
                },
                "yours": models.USER_PATTERNS,
            }
        )
        return
    t = Table(title="models")
    for c in ("name", "family", "task", "source", "input", "classes", "description"):
        t.add_column(c)
    for r in rows:
        t.add_row(
            r["name"],
            r["family"],
            r["task"],
            r["source"],
            str(r["input_size"]),
            str(r["num_classes"]),
            r["description"],
        )
    t.add_row(
        "tv:<name>",
        "cnn/vit",
        "classify",
        "torchvision",
        "per model",
        "1000",
        f"{models.PREFIXES['tv:']} [{len(models.torchvision_names())} names]",
    )
    t.add_row(
        "timm:<name>",
        "cnn/vit",
        "classify",
        "timm",
        "per model",
        "1000",
        f"{models.PREFIXES['timm:']} [{len(models.timm_names())} names]",
    )
    t.add_row(
        "tv:<seg name>",
        "cnn",
        "segment",
        "torchvision",
        "520",
        "21",
        "torchvision's segmentation models, the main head's logits (aux head dropped): "
        f"{', '.join(seg_names)}",
    )
    t.add_row(
        "timmseg:<vit>",
        "vit",
        "segment",
        "timm",
        "per model",
        "21",
        models.PREFIXES["timmseg:"],
    )
    for shape, meaning in models.USER_PATTERNS.items():
        t.add_row(shape, "cnn/vit", "--task", "yours", "--imgsz", "its own", meaning)
    for pattern, tried, reason in models.KNOWN_FAILURES:
        family = sorted(n for n in {**known, **known_timm} if pattern.match(n))
        t.add_row(
            ", ".join(family),
            "-",
            "classify",
            "torchvision" if tried.startswith("tv:") else "timm",
            "-",
            "-",
            f"[bold]known not to prune here[/bold] ({tried} tried): {reason}",
        )
    _print(t)


def _list_methods(as_json: bool) -> None:
    """The method keys and what each needs."""
    from rich.table import Table

    rows: list[dict[str, Any]] = []
    from pbkit.pruning import methods

    rows = [m.describe() for m in methods.METHODS.values()]
    if as_json:
        _emit_json({"methods": rows})
        return
    t = Table(title="methods (12 criteria; 4 regularizers in 5 combinations)")
    for c in ("key", "name", "paper", "stage", "regularizer", "data", "families"):
        t.add_column(c)
    for r in rows:
        t.add_row(
            r["key"],
            r["name"],
            r["paper"],
            r["stage"],
            r["regularizer"] or "-",
            r["data"],
            ", ".join(r["families"]),
        )
    _print(t)


def _list_scopes(as_json: bool) -> None:
    """The pruning scopes."""
    from rich.table import Table

    from pbkit.pruning import methods

    if as_json:
        _emit_json({"scopes": methods.SCOPES})
        return
    t = Table(title="scopes")
    t.add_column("scope")
    t.add_column("meaning")
    for k, v in methods.SCOPES.items():
        t.add_row(k, v)
    _print(t)


def _list_backends(as_json: bool) -> None:
    """Every backend, available here or not (and why not)."""
    from rich.table import Table

    rows: list[dict[str, Any]] = []
    from pbkit.measure import backends

    rows = []
    for b in backends.BACKENDS.values():
        unavailable = b.check()
        rows.append(
            dict(
                name=b.name,
                device=b.device,
                precisions=list(b.precisions),
                artifact=b.artifact,
                description=b.description,
                available=unavailable is None,
                reason=unavailable,
                install=None if unavailable is None else b.install_hint,
            )
        )
    if as_json:
        _emit_json({"backends": rows})
        return
    t = Table(title="backends")
    for c in ("name", "device", "precisions", "runs", "available", "description"):
        t.add_column(c)
    for r in rows:
        t.add_row(
            r["name"],
            r["device"],
            ", ".join(r["precisions"]),
            r["artifact"],
            "yes" if r["available"] else f"no: {r['reason']}; to use it: {r['install']}",
            r["description"],
        )
    _print(t)


def _list_datasets(as_json: bool) -> None:
    """The datasets by name."""
    from rich.table import Table

    rows: list[dict[str, Any]] = []
    from pbkit import data

    rows = [
        dict(
            name=e.name,
            num_classes=e.num_classes,
            image_size=e.image_size,
            needs=e.needs,
            description=e.description,
        )
        for e in data.DATASETS.values()
    ]
    if as_json:
        _emit_json({"datasets": rows, "default_root": data.DEFAULT_ROOT})
        return
    t = Table(title=f"datasets (default root {data.DEFAULT_ROOT})")
    for c in ("name", "classes", "size", "needs", "description"):
        t.add_column(c)
    for r in rows:
        t.add_row(
            r["name"], str(r["num_classes"]), str(r["image_size"]), r["needs"], r["description"]
        )
    _print(t)


_LISTS: dict[str, Callable[[bool], None]] = {
    "models": _list_models,
    "methods": _list_methods,
    "scopes": _list_scopes,
    "backends": _list_backends,
    "datasets": _list_datasets,
}


# ------------------------------------------------------------------------------------------- env


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def env(as_json: bool) -> None:
    """Show the machine record embedded in every result record.

    \b
    Example:
      pbkit env --json > machine.json
    """
    from pbkit.machine import envinfo

    info = envinfo.collect()
    if as_json:
        _emit_json(info)
        return
    from rich.table import Table

    t = Table(title="environment", show_header=False)
    t.add_column("key")
    t.add_column("value")
    for section in ("host", "software", "container", "lock_sha256"):
        for k, v in info[section].items():
            t.add_row(f"{section}.{k}", str(v))
    for gpu in info["gpus"]:
        for k, v in gpu.items():
            t.add_row(
                f"gpu{gpu.get('index', '')}.{k}",
                ", ".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict) else str(v),
            )
    if not info["gpus"]:
        t.add_row("gpus", "none")
    t.add_row("onnxruntime providers", ", ".join(info["onnxruntime_providers"]))
    t.add_row("kit", f"{info['kit_version']} ({info['git_revision']})")
    for k, why in info["unavailable"].items():
        t.add_row(f"[dim]null: {k}[/]", f"[dim]{why}[/]")
    _print(t)


# -------------------------------------------------------------------------------- prune / run


def _finish(run: Any, as_json: bool, stages: bool = False) -> int:
    """Print a run (:class:`pbkit.api.Run`) as its table, or as one JSON object (``stages``: with
    the stages this command ran and those its record already had); exit 3 on a parity failure."""
    from pbkit.core import record

    rec = run.record
    if as_json:
        payload: dict[str, Any] = {
            "run_dir": str(run.run_dir),
            "record": rec.model_dump(mode="json"),
        }
        if stages:
            payload.update(stages_run=run.ran, stages_done_before=run.done_before)
        _emit_json(payload)
    else:
        _print(run.table())
        _print(f"run: {rec.run_id}\nrecord: {run.run_dir / record.RECORD_NAME}")
    failed = run.parity_failures
    if failed:
        from pbkit.core.console import err

        worst = max(failed, key=lambda p: p.error)
        err.print(
            "[bold red]error: ONNX parity FAILED[/] for"
            f" {', '.join(f'{p.backend}/{p.variant}' for p in failed)} (max abs"
            f" {worst.error_text}, cosine {worst.cosine:.6f}); results were recorded"
        )
        return EXIT_PARITY
    return 0


TRUST_HELP = (
    "Allow loading pickles: a whole pickled module or an ultralytics checkpoint given as --model "
    "or --checkpoint, and run folders whose model files hold a pickled module. Unpickling runs "
    "code from the file: only for files you trust (model.trust_checkpoint)."
)
FORCE_HELP = (
    "Start the run again from scratch when its folder exists (default: continue it from the first "
    "unfinished stage, or report it when complete)."
)


@cli.command(context_settings=CONTEXT)
@click.option("--model", "model", required=True, help="Model name (`pbkit list models`).")
@click.option("--method", required=True, help="Pruning method key (`pbkit list methods`).")
@click.option(
    "--speedup",
    type=float,
    required=True,
    help=(
        "Target speed-up, > 1: base MACs / pruned MACs, or with --target latency the measured one."
    ),
)
@click.option(
    "--target",
    default=None,
    help=(
        "macs (default) | latency: prune until the pruned model measures "
        "--speedup times faster on --backend."
    ),
)
@click.option(
    "--backend",
    default=None,
    help="Latency target: where it is measured (`pbkit list backends`; default ort-cpu).",
)
@click.option("--batch", type=int, default=None, help="Latency target: the batch size (default 1).")
@click.option("--precision", default=None, help="Latency target: fp32 (default) | fp16.")
@click.option("--scope", default=None, help="local | global | protected (default: protected).")
@click.option(
    "--round-to",
    default=None,
    metavar="N|auto",
    help="Keep channel counts multiples of N; auto: the channel-alignment advisor picks N on"
    " --backend (default ort-cpu), none where aligning buys under 5% there.",
)
@click.option(
    "--dataset",
    default=None,
    help="Dataset (`pbkit list datasets`); none: data-free, accuracy null.",
)
@click.option(
    "--data-root",
    type=click.Path(),
    default=None,
    help="Where datasets live (default $PBKIT_DATA or ~/.cache/pbkit/data).",
)
@click.option(
    "--checkpoint",
    type=click.Path(),
    default=None,
    help="Base weights file (state dict or pbkit model file).",
)
@click.option(
    "--pretrained", is_flag=True, help="Use the hub's pretrained weights (needs the network)."
)
@click.option(
    "--out", type=click.Path(), default=None, help="Folder for run folders (default results/runs)."
)
@click.option(
    "--run-id",
    default=None,
    help="Name the run folder (default: <model>-<method>-<scope>-<x>x-<config hash>).",
)
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.option(
    "--task",
    type=click.Choice(["classify", "detect", "segment"]),
    default=None,
    help="What the model is for (default: the model's own; one from a file or pickle: classify).",
)
@click.option(
    "--imgsz",
    type=int,
    default=None,
    help="Input size N (N x N RGB images; default: the model's, else the dataset's).",
)
@click.option("--trust", is_flag=True, help=TRUST_HELP)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any config key, e.g. finetune.epochs=5.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def prune(
    model: str,
    method: str,
    speedup: float,
    target: str | None,
    backend: str | None,
    batch: int | None,
    precision: str | None,
    scope: str | None,
    round_to: str | None,
    dataset: str | None,
    data_root: str | None,
    checkpoint: str | None,
    pretrained: bool,
    out: str | None,
    run_id: str | None,
    force: bool,
    task: str | None,
    imgsz: int | None,
    trust: bool,
    overrides: tuple[str, ...],
    as_json: bool,
) -> int:
    """Prune a model to a speed-up target, in MACs or measured on a backend (and finetune, if a
    dataset and epochs are given).

    MODEL is a name (`pbkit list models`) or your own: a function in a Python file that returns
    the model (net.py:build; pbkit runs that file, so name only files you trust), a function named
    by an import path (my_pkg.models:build), a whole pickled module (model.pt, with --trust), or a
    checkpoint `yolo train` wrote (best.pt, with --trust). model.kwargs are the function's
    arguments; --imgsz gives the input size where the model cannot.

    Writes a run folder with dense.pt, pruned.pt (finetuned.pt) and record.json, and prints its
    summary. The same configuration again continues or reports that run; --force starts it again.

    \b
    Example:
      pbkit prune --model resnet56_cifar --method fpgm --speedup 2 --scope local
      pbkit prune --model resnet20_cifar --method l1 --speedup 2 --dataset digits \\
          --set base.epochs=10 --set finetune.epochs=5
      pbkit prune --model resnet18_cifar --method l2 --speedup 2 --target latency --backend ort-cpu
      pbkit prune --model path/to/net.py:build --method l2 --speedup 2 --imgsz 32
      pbkit prune --model runs/detect/train/weights/best.pt --trust --dataset my.yaml \\
          --method l1 --speedup 2
    """
    from pbkit import api

    run = api.prune(
        model,
        method=method,
        speedup=speedup,
        target=target,
        backend=backend,
        batch=batch,
        precision=precision,
        scope=scope,
        round_to=round_to,
        dataset=dataset,
        data_root=data_root,
        checkpoint=checkpoint,
        pretrained=pretrained,
        out=out,
        run_id=run_id,
        force=force,
        set=list(overrides),
        task=task,
        imgsz=imgsz,
        trust=trust,
    )
    return _finish(run, as_json, stages=True)


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "tensorrt"]),
    default="onnx",
    show_default=True,
    help="tensorrt: engines built from the ONNX files (exported first if missing).",
)
@click.option(
    "--precision",
    "precisions",
    type=click.Choice(["fp32", "fp16", "int8"]),
    multiple=True,
    help="int8: also the INT8 models (ONNX Runtime QDQ, OpenVINO NNCF; with --format tensorrt"
    " an engine from a QDQ model); tensorrt: the engine precision (repeatable; default fp32).",
)
@click.option(
    "--calibration",
    type=click.Choice(["dataset", "synthetic"]),
    default=None,
    help="INT8 calibration images: the dataset's training split (default), or synthetic (seeded"
    " N(0,1) images: what a model without a dataset needs; latency only).",
)
@click.option(
    "--batch",
    "batches",
    type=int,
    multiple=True,
    help="TensorRT: one optimisation profile per batch size (default: the run's bench.batches).",
)
@click.option(
    "--opset", type=int, default=None, help="ONNX opset (>= 17; default from the run's config: 18)."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any export.* key, e.g. export.tensorrt.workspace_gib=8.",
)
@click.option("--trust", is_flag=True, help=TRUST_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def export(
    run_dir: str,
    fmt: str,
    precisions: tuple[str, ...],
    calibration: str | None,
    batches: tuple[int, ...],
    opset: int | None,
    overrides: tuple[str, ...],
    trust: bool,
    as_json: bool,
) -> int:
    """Export a run's dense and pruned models to ONNX (parity checked against torch) or to
    TensorRT engines (sha256 recorded; parity is checked when they are benchmarked).

    \b
    Example:
      pbkit export results/runs/resnet18-cifar-l1-protected-2x-3f9a1c2b7d
      pbkit export results/runs/<run_id> --format tensorrt --precision fp16 --batch 1 8 32
      pbkit export results/runs/<run_id> --precision int8 --calibration synthetic
    """
    from pbkit import api

    run = api.Run.load(run_dir, trust=trust).export(
        fmt,
        precision=list(precisions),
        batch=list(batches),
        opset=opset,
        calibration=calibration,
        set=list(overrides),
    )
    return _finish(run, as_json)


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option(
    "--backend",
    "backends",
    multiple=True,
    help="Backend (repeatable, or several after one flag; `pbkit list backends`).",
)
@click.option(
    "--batch",
    "batches",
    type=int,
    multiple=True,
    help="Batch size of the sweep (repeatable, or several after one flag: --batch 1 8 32).",
)
@click.option(
    "--precision",
    "precisions",
    type=click.Choice(["fp32", "fp16", "int8"]),
    multiple=True,
    help="fp32 | fp16 | int8 (repeatable, or several after one flag), on backends that run it.",
)
@click.option(
    "--calibration",
    type=click.Choice(["dataset", "synthetic"]),
    default=None,
    help="int8: calibrate on the dataset's training split (default) or on synthetic images.",
)
@click.option(
    "--channels-last", is_flag=True, default=None, help="torch backends: NHWC memory format."
)
@click.option(
    "--quick", is_flag=True, help="Short warm-up and measurement (flagged in the record)."
)
@click.option("--threads", type=int, default=None, help="CPU threads (default: all cores but one).")
@click.option(
    "--repeats",
    type=click.IntRange(1),
    default=None,
    help="Bench the same files N times, --spacing apart: the repeat interval over them, and how"
    " far this machine drifts between benches, kept for later benches (bench.repeats).",
)
@click.option(
    "--spacing",
    type=click.FloatRange(0),
    default=None,
    metavar="SECONDS",
    help="Seconds between repeats (bench.repeat_spacing_s, default 60).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any bench.* key, e.g. bench.min_time_s=10.",
)
@click.option("--trust", is_flag=True, help=TRUST_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def bench(
    run_dir: str,
    backends: tuple[str, ...],
    batches: tuple[int, ...],
    precisions: tuple[str, ...],
    calibration: str | None,
    channels_last: bool | None,
    quick: bool,
    threads: int | None,
    repeats: int | None,
    spacing: float | None,
    overrides: tuple[str, ...],
    trust: bool,
    as_json: bool,
) -> int:
    """Measure dense and pruned latency, alternating, on each backend, precision and batch size,
    with memory and parity against fp32 torch at every point. Each point is measured over fresh
    sessions (--set bench.sessions=N, 5 by default) until its speed-up's 95% interval is within
    bench.ci_target, in a process of its own (--quick: one short session, in this process).

    That interval holds the noise of the minute it measured, not this machine drifting between
    benches minutes apart: --repeats N benches N times --spacing apart and keeps that drift for
    this machine; every later bench's pruned point then also has a repeat interval (its interval
    widened by the drift: where a later bench here lands).

    \b
    Example:
      pbkit bench results/runs/<run_id> --backend torch-cpu --backend ort-cpu --batch 1 8
      pbkit bench results/runs/<run_id> --backend torch-cuda --backend tensorrt \\
          --precision fp32 fp16 --batch 1 32
      pbkit bench results/runs/<run_id> --backend ort-cpu ov-cpu --precision fp32 int8
      pbkit bench results/runs/<run_id> --backend ort-cpu --repeats 6 --spacing 60
    """
    from pbkit import api

    result = api.Run.load(run_dir, trust=trust).bench(
        list(backends),
        batch=list(batches),
        precision=list(precisions),
        channels_last=channels_last,
        quick=quick,
        threads=threads,
        repeats=repeats,
        spacing=spacing,
        calibration=calibration,
        set=list(overrides),
    )
    return _finish(result.run, as_json)


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option(
    "--backend",
    default="ort-cpu",
    show_default=True,
    help="Whose profiler: ort-cpu (ONNX Runtime's), ov-cpu (OpenVINO's per-layer counters) or"
    " torch-cpu (the PyTorch profiler).",
)
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size profiled.")
@click.option(
    "--runs",
    type=int,
    default=50,
    show_default=True,
    help="Profiled forward passes per model, after a warm-up; per-layer medians over them.",
)
@click.option("--top", type=int, default=15, show_default=True, help="Layers shown.")
@click.option(
    "--align",
    type=int,
    default=0,
    metavar="N",
    help="Also the channel-alignment advisor: the N slowest pruned layers timed alone at their"
    " width and the nearest multiples of 8/16/32/64, and the prune.round_to it recommends.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(),
    default=None,
    help="Also write the plot here (default: explain-<backend>-b<batch>.png in the run folder).",
)
@click.option("--threads", type=int, default=None, help="CPU threads (default: all cores but one).")
@click.option("--trust", is_flag=True, help=TRUST_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON on stdout.")
def explain(
    run_dir: str,
    backend: str,
    batch: int,
    runs: int,
    top: int,
    align: int,
    plot_path: str | None,
    threads: int | None,
    trust: bool,
    as_json: bool,
) -> int:
    """Why the pruned model is (or is not) faster: per-layer latency of dense and pruned from the
    backend's own profiler, mapped back to the model's modules; per layer the MACs ratio, the
    measured ratio and their quotient (realisation), the layers where pruning bought least first.
    Exports first where the backend runs the ONNX file; the summary goes into the record.

    \b
    Example:
      pbkit explain results/runs/<run_id>
      pbkit explain results/runs/<run_id> --backend torch-cpu --top 20
      pbkit explain results/runs/<run_id> --align 8
    """
    from pbkit import api
    from pbkit.report import explain as views

    if top < 1:
        raise click.BadParameter("--top must be at least 1", param_hint="--top")
    run = api.Run.load(run_dir, trust=trust)
    e = run.explain(backend, batch=batch, runs=runs, threads=threads, align=align)
    target = Path(plot_path) if plot_path else run.run_dir / f"explain-{backend}-b{batch}.png"
    views.plot(e, target, top)
    advice = run.record.alignment.get(f"{backend}/fp32/b{batch}") if align else None
    if as_json:
        out = e.model_dump(mode="json")
        if advice is not None:
            out["alignment"] = advice.model_dump(mode="json")
        _emit_json(out)
    else:
        _print(views.table(e, top))
        if advice is not None:
            _print(views.alignment_table(advice))
        from pbkit.core.console import note

        note(f"plot: {target}")
    return 0


NPROC_HELP = (
    "Train (base, finetune) across N processes on this machine, one per GPU (DDP via torchrun)."
)


@cli.command(context_settings=CONTEXT)
@click.argument("config_file", type=click.Path())
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.option("--nproc-per-node", type=int, default=None, metavar="N", help=NPROC_HELP)
@click.option(
    "--nnodes",
    type=int,
    default=None,
    metavar="M",
    help="Machines training together; the others run `pbkit join` (needs --rdzv-endpoint).",
)
@click.option(
    "--rdzv-endpoint", default=None, metavar="HOST:PORT", help="Rendezvous every machine reaches."
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any config key."
)
@click.option("--trust", is_flag=True, help=TRUST_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def run(
    config_file: str,
    force: bool,
    nproc_per_node: int | None,
    nnodes: int | None,
    rdzv_endpoint: str | None,
    overrides: tuple[str, ...],
    trust: bool,
    as_json: bool,
) -> int:
    """Run every step from a YAML config: base, prune, finetune, export, measure, record.

    A configuration that already has a run folder continues it from the first stage not finished
    (prune -> finetune -> export -> bench), or reports it when complete; --force starts it again.
    With --nproc-per-node N, base training and finetuning run across N processes
    (DistributedDataParallel; batch_size is the global batch); pruning runs once, here.

    \b
    Example:
      pbkit run configs/bench/resnet18_cifar.yaml
      pbkit run configs/bench/resnet18_cifar.yaml --set prune.method=lamp --set prune.speedup=4
      pbkit run configs/study/cifar100-resnet18.yaml --nproc-per-node 8
    """
    from pbkit import api

    overrides = (*overrides, "model.trust_checkpoint=true") if trust else overrides
    run = api.run(
        config_file,
        force=force,
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
        rdzv_endpoint=rdzv_endpoint,
        set=list(overrides),
    )
    return _finish(run, as_json, stages=True)


@cli.command(context_settings=CONTEXT)
@click.argument("rdzv_endpoint", metavar="HOST:PORT")
@click.option(
    "--nnodes", type=int, required=True, metavar="M", help="Machines in the job, this one included."
)
@click.option(
    "--nproc-per-node", type=int, default=1, show_default=True, metavar="N", help=NPROC_HELP
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "gloo", "nccl"]),
    default="auto",
    show_default=True,
    help="auto: nccl where CUDA is visible, else gloo (every machine must agree).",
)
@click.option(
    "--timeout-s",
    type=float,
    default=1800.0,
    show_default=True,
    help="A collective waiting longer than this fails the job.",
)
def join(
    rdzv_endpoint: str, nnodes: int, nproc_per_node: int, backend: str, timeout_s: float
) -> int:
    """Lend this machine's processes to a distributed training that `pbkit run --nnodes M
    --rdzv-endpoint HOST:PORT` started elsewhere: they receive the model, recipe and configuration
    from the run's machine (no shared storage needed; the dataset must be readable here). Ends when
    that training stage ends; run it once per training stage.

    \b
    Example (machine 2 of 2, while machine 1 runs `pbkit run CFG --nnodes 2 --rdzv-endpoint
    node1:29400`):
      pbkit join node1:29400 --nnodes 2 --nproc-per-node 8
    """
    import tempfile

    import torch
    from pydantic import ValidationError

    from pbkit.core import config
    from pbkit.core.console import note
    from pbkit.core.errors import PbkitError
    from pbkit.stages import distributed

    try:
        d = config.DistributedCfg(
            nproc_per_node=nproc_per_node,
            nnodes=nnodes,
            rdzv_endpoint=rdzv_endpoint,
            backend=backend,
            timeout_s=timeout_s,
        )
    except ValidationError as e:
        raise PbkitError(f"join: {config.one_line(e)}") from None
    chosen = backend if backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
    note(f"joining {rdzv_endpoint} with {nproc_per_node} process(es) ({chosen})")
    with tempfile.TemporaryDirectory(
        prefix="pbkit-join-"
    ) as tmp:  # what torchrun leaves goes with it
        code, error, tail = distributed.run_torchrun(
            distributed.launch_command(d, chosen, None, "auto"), nproc_per_node, None, tmp=Path(tmp)
        )
    if code != 0:
        raise PbkitError(
            f"joining {rdzv_endpoint} failed:"
            f" {error or (tail[-1] if tail else f'exit code {code}')}"
        )
    note("the training this machine joined has finished")
    return 0


# ------------------------------------------------------------------------------------- study

EXIT_TRIALS_FAILED = 4


@cli.group(context_settings=CONTEXT)
def study() -> None:
    """Run a grid of runs from one study file, on Ray (local or a cluster), resumably.

    \b
    Example:
      pbkit study run configs/study/digits-reference.study.yaml
      pbkit study status results/studies/digits-reference
    """


@study.command("run", context_settings=CONTEXT)
@click.argument("study_file", type=click.Path())
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a key of the config every trial shares (not a grid axis).",
)
@click.option(
    "--address",
    default=None,
    help=(
        "A Ray cluster: auto, ray://HOST:10001 (default: the study's address, $RAY_ADDRESS, else a "
        "local Ray started for the study)."
    ),
)
@click.option(
    "--executor",
    type=click.Choice(["ray", "local"]),
    default="ray",
    show_default=True,
    help="local: the trials one by one in this process (debugging).",
)
@click.option(
    "--max-parallel",
    type=int,
    default=None,
    help="At most N trials at once (default: as resources fit).",
)
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    help="The study folder (default results/studies/<name>).",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Run the failed trials again (finished ones are never rerun).",
)
@click.option(
    "--push",
    "push_url",
    default=None,
    metavar="URL",
    help="Push each trial's record and the study's progress to a pbkit serve as it finishes.",
)
@click.option(
    "--token",
    default=None,
    help="The push token for --push (default: $PBKIT_TOKEN).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def study_run(
    study_file: str,
    overrides: tuple[str, ...],
    address: str | None,
    executor: str,
    max_parallel: int | None,
    out: str | None,
    retry_failed: bool,
    push_url: str | None,
    token: str | None,
    as_json: bool,
) -> int:
    """Expand a study's grid and run its trials; finished trials are skipped (by their hash).

    Writes <out>/study.json (every trial's hash, status, run id, error, wall time, node) and each
    trial's record under <out>/runs/. Exit code 4 when some trials failed (listed at the end).

    \b
    Example:
      pbkit study run configs/study/digits-reference.study.yaml --max-parallel 2
      pbkit study run my.study.yaml --address ray://head:10001 --set finetune.epochs=30
      pbkit study run my.study.yaml --executor local --retry-failed
      pbkit study run my.study.yaml --push http://127.0.0.1:8000
    """
    from pbkit.study import runner, spec

    if max_parallel is not None and max_parallel < 1:
        raise PbkitError("--max-parallel must be >= 1")
    st = spec.read(study_file, overrides)
    pusher = _study_pusher(st, push_url, token) if push_url else None
    summary = runner.run(st, out, executor, address, max_parallel, retry_failed, on_trial=pusher)
    if pusher is not None:
        _push_study_end(pusher, summary.study_dir)
    c = summary.counts
    if as_json:
        _emit_json(summary.as_json())
    else:
        _print(
            f"study {st.name}: {c['done']} done, {c['failed']} failed, {c['skipped']} skipped,"
            f" {c['pending']} pending ({summary.ran} run now, executor"
            f" {summary.executor}{', ' + summary.address if summary.address else ''})\nstudy"
            f" folder: {summary.study_dir}"
        )
    if summary.failures:
        from pbkit.core.console import err

        for f in summary.failures:
            err.print(f"[bold red]failed[/] {f['run_id']} {f['params']}: {f['error']}")
        err.print(
            f"error: {len(summary.failures)} trial(s) failed; `pbkit study run {study_file}"
            " --retry-failed` runs them again"
        )
        return EXIT_TRIALS_FAILED
    return 0


@study.command("status", context_settings=CONTEXT)
@click.argument("study_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def study_status(study_dir: str, as_json: bool) -> None:
    """List a study's trials: done, failed (with the error), skipped and pending.

    \b
    Example:
      pbkit study status results/studies/digits-reference --json
    """
    from rich.table import Table

    from pbkit.study import state

    doc = state.read(study_dir)
    counts = state.counts(doc["trials"])
    if as_json:
        _emit_json(
            {
                "study_dir": study_dir,
                "name": doc["name"],
                "executor": doc.get("executor"),
                "address": doc.get("address"),
                **counts,
                "trials": doc["trials"],
            }
        )
        return
    t = Table(
        title=(
            f"study {doc['name']}: {counts['done']} done, {counts['failed']} failed,"
            f" {counts['skipped']} skipped, {counts['pending']} pending"
        ),
        title_justify="left",
    )
    for c in ("status", "run", "grid point", "wall s", "node", "error / note"):
        t.add_column(c)
    for e in doc["trials"]:
        t.add_row(
            e["status"],
            e.get("run_id") or "-",
            ", ".join(f"{k}={v}" for k, v in e["params"].items()),
            f"{e['wall_s']:.0f}" if e.get("wall_s") is not None else "-",
            (e.get("node_id") or "-")[:12],
            e.get("error") or e.get("note") or "",
        )
    _print(t)


# ------------------------------------------------------------------------------------- serve


def _study_pusher(st: Any, url: str, token: str | None) -> Any:
    """The hook that pushes each finished trial of ``st`` (and the study's progress) to ``url``."""
    from pbkit.core.console import note
    from pbkit.serve import client

    c = client.Client(url, client.token_from(token), on_retry=lambda m: note(f"push: {m}"))
    pusher = client.StudyPusher(c, note)
    runnable = sum(1 for t in st.trials if t.skip is None)
    try:  # the study shows on the service before its first trial ends
        c.progress(st.name, {"counts": {"pending": runnable}, "running": 0, "eta_s": None})
    except PbkitError as e:
        note(f"push to {url} failed: {e} (pushed again at the end)")
    return pusher


def _push_study_end(pusher: Any, study_dir: Path) -> None:
    """Push the whole study folder once more (records already there are unchanged)."""
    from pbkit.core.console import note
    from pbkit.serve import client

    try:
        rep = client.push_folder(pusher.client, study_dir)
        c = rep.counts()
        note(
            f"pushed to {pusher.client.url}: " + ", ".join(f"{n} {k}" for k, n in sorted(c.items()))
        )
    except PbkitError as e:
        note(f"push to {pusher.client.url} failed: {e}; `pbkit push {study_dir} --to URL` later")
    finally:
        pusher.client.close()


class _ServeGroup(click.Group):
    """``pbkit serve [OPTIONS]`` is ``pbkit serve start [OPTIONS]``; ``pbkit serve token ...``
    manages the store's tokens."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@cli.group("serve", cls=_ServeGroup, context_settings=CONTEXT)
def serve() -> None:
    """One place for a team's results: the live HTML report, a JSON API that machines push
    records to, and studies submitted to run on Ray (`pbkit serve [OPTIONS]`: see serve start).

    \b
    Example:
      pbkit serve token create a100 --role push
      pbkit serve --store sqlite:///results/pbkit.db --port 8000
    """


@serve.command("start", context_settings=CONTEXT)
@click.option(
    "--store",
    default="sqlite:///results/pbkit.db",
    show_default=True,
    help="Where records live: sqlite:///FILE, or postgresql://USER@HOST/DB for a team.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to bind.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--anonymous-read",
    is_flag=True,
    help="Let anyone who reaches the service read the page and the records (off by default).",
)
@click.option(
    "--jobs",
    type=click.Choice(["local", "ray", "none"]),
    default=None,
    help=(
        "Where submitted studies run: ray (Ray's job submission to the cluster at"
        " --ray-address), local (a driver process here, its trials on a local Ray), none (no"
        " submissions). Default: ray where --ray-address is given, else local."
    ),
)
@click.option(
    "--ray-address",
    default=None,
    metavar="URL",
    help="--jobs ray: the Ray cluster's dashboard (http://HEAD:8265).",
)
@click.option(
    "--allow-user-code",
    is_flag=True,
    help="Let submitted studies name models from Python files, import paths or pickles.",
)
@click.option(
    "--work",
    type=click.Path(file_okay=False),
    default="results/serve",
    show_default=True,
    help="Where submitted studies' folders, driver logs and pushed ONNX files go.",
)
@click.option(
    "--public-url",
    default=None,
    metavar="URL",
    help="The URL a study's driver pushes back to (default: http://HOST:PORT).",
)
@click.option(
    "--max-record-mib",
    type=float,
    default=8.0,
    show_default=True,
    help="The largest record a push may send.",
)
@click.option(
    "--max-artifact-mib",
    type=float,
    default=256.0,
    show_default=True,
    help="The largest ONNX file `pbkit push --artifacts` may send (0: no artifacts).",
)
def serve_start(
    store: str,
    host: str,
    port: int,
    anonymous_read: bool,
    jobs: str | None,
    ray_address: str | None,
    allow_user_code: bool,
    work: str,
    public_url: str | None,
    max_record_mib: float,
    max_artifact_mib: float,
) -> None:
    """Start the service (also `pbkit serve [OPTIONS]`): the live HTML report, a JSON API that
    machines push records to, and studies submitted to run on Ray.

    Binds 127.0.0.1 unless --host says otherwise. Every request needs a token (roles: read,
    push, submit; `pbkit serve token create`); the page asks for one once and keeps it in a
    cookie that only reads; its study form (/submit) asks for a submit token and keeps it in the
    tab. Every push, submission and refusal is logged with its token's name.

    \b
    Example:
      pbkit serve token create a100 --role push
      pbkit serve --store sqlite:///results/pbkit.db --port 8000
      pbkit serve --store postgresql://pbkit@db/pbkit --host 0.0.0.0 \
        --ray-address http://head:8265
    """
    from pbkit.serve import app
    from pbkit.serve import jobs as serve_jobs

    if not 0 < port < 65536:
        raise PbkitError(f"--port {port}: a TCP port (1 to 65535)")
    if max_record_mib <= 0:
        raise PbkitError("--max-record-mib must be > 0")
    if max_artifact_mib < 0:
        raise PbkitError("--max-artifact-mib must be >= 0 (0: no artifacts)")
    jobs = jobs or serve_jobs.default_runner(ray_address)
    if ray_address and jobs != "ray":
        raise PbkitError(f"--ray-address is where --jobs ray submits; --jobs {jobs} uses none")
    why = serve_jobs.unavailable(jobs, ray_address) if jobs == "ray" else None
    if why:
        raise PbkitError(why)
    app.serve(
        app.Settings(
            store=store,
            host=host,
            port=port,
            anonymous_read=anonymous_read,
            max_record_bytes=int(max_record_mib * (1 << 20)),
            max_artifact_bytes=int(max_artifact_mib * (1 << 20)),
            jobs=jobs,
            ray_address=ray_address,
            allow_user_code=allow_user_code,
            work=work,
            public_url=public_url,
        )
    )


@serve.group("token", context_settings=CONTEXT)
def serve_token() -> None:
    """Tokens of a store: create (printed once), list, revoke."""


STORE_OPTION = click.option(
    "--store",
    default="sqlite:///results/pbkit.db",
    show_default=True,
    help="The service's store (as pbkit serve --store).",
)


@serve_token.command("create", context_settings=CONTEXT)
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["read", "push", "submit"]),
    required=True,
    help="read: the page and the API; push: records and progress; submit: studies.",
)
@STORE_OPTION
def serve_token_create(name: str, role: str, store: str) -> None:
    """Make a token NAME (a machine or a person) with ROLE; it is printed once, on stdout, and
    the store keeps only its sha256.

    \b
    Example:
      pbkit serve token create h100-box --role push --store sqlite:///results/pbkit.db
    """
    from pbkit.core.console import note
    from pbkit.serve.store import Store

    s = Store(store)
    try:
        secret = s.create_token(name, role)
    finally:
        s.close()
    click.echo(secret)
    note(f"token {name!r} ({role}) made in {s.shown}; it is shown this once")


@serve_token.command("list", context_settings=CONTEXT)
@STORE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def serve_token_list(store: str, as_json: bool) -> None:
    """The tokens of a store: name, role, when made, whether revoked (never the tokens).

    \b
    Example:
      pbkit serve token list --store sqlite:///results/pbkit.db
    """
    import dataclasses

    from rich.table import Table

    from pbkit.serve.store import Store

    s = Store(store)
    try:
        tokens = s.tokens()
    finally:
        s.close()
    if as_json:
        _emit_json({"tokens": [dataclasses.asdict(t) for t in tokens]})
        return
    t = Table(title=f"tokens in {s.shown}", title_justify="left")
    for c in ("name", "role", "created", "revoked"):
        t.add_column(c)
    for tok in tokens:
        t.add_row(tok.name, tok.role, tok.created_utc, tok.revoked_utc or "-")
    _print(t)


@serve_token.command("revoke", context_settings=CONTEXT)
@click.argument("name")
@STORE_OPTION
def serve_token_revoke(name: str, store: str) -> None:
    """Revoke the token NAME: the service refuses it from the next request on.

    \b
    Example:
      pbkit serve token revoke h100-box --store sqlite:///results/pbkit.db
    """
    from pbkit.core.console import note
    from pbkit.serve.store import Store

    s = Store(store)
    try:
        if not s.revoke_token(name):
            raise PbkitError(f"no token {name!r} to revoke in {s.shown}")
    finally:
        s.close()
    note(f"token {name!r} revoked")


TO_OPTION = click.option(
    "--to", "url", required=True, metavar="URL", help="The service (http://HOST:PORT)."
)
TOKEN_OPTION = click.option("--token", default=None, help="The token (default: $PBKIT_TOKEN).")


@cli.command(context_settings=CONTEXT)
@click.argument("folders", nargs=-1, required=True, type=click.Path())
@TO_OPTION
@TOKEN_OPTION
@click.option(
    "--retries",
    type=int,
    default=8,
    show_default=True,
    help="Tries again this many times, 0.5 s to 10 s apart, where the service does not answer.",
)
@click.option(
    "--artifacts",
    is_flag=True,
    help=(
        "Also push each record's ONNX files (those it lists, from its run folder), up to the"
        " service's size limit; each is sent once."
    ),
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def push(
    folders: tuple[str, ...],
    url: str,
    token: str | None,
    retries: int,
    artifacts: bool,
    as_json: bool,
) -> None:
    """Push the records of run folders or study folders to a pbkit serve.

    Each record is stored once per identity (its run, its identity hash and the machine that
    measured it): pushing again stores nothing twice, and a record that changed (a later stage,
    a new bench) replaces its older copy. A study folder's records are filed under its study,
    with its progress. With --artifacts the ONNX files each record lists follow it, to download
    from its run's page. Exit code 2 when a record or an ONNX file was refused (each is listed
    with why).

    \b
    Example:
      pbkit push results/runs/resnet18-cifar-l1-protected-2x-7de44d78c9 --to http://127.0.0.1:8000
      pbkit push results/studies/digits-reference --to http://team-box:8000 --token T
      pbkit push results/runs/resnet18-cifar-l1-protected-2x-7de44d78c9 --to URL --artifacts
    """
    from pbkit.core.console import note
    from pbkit.report.safe import term
    from pbkit.serve import client

    if retries < 0:
        raise PbkitError("--retries must be >= 0")
    total = client.PushReport()
    with client.Client(
        url, client.token_from(token), retries=retries, on_retry=lambda m: note(f"push: {m}")
    ) as c:
        for folder in folders:
            rep = client.push_folder(
                c,
                Path(folder),
                on_each=None
                if as_json
                else lambda p: _print(
                    term(
                        f"{p.outcome:<9} {p.run_id} ({p.machine or p.path})"
                        + (f": {p.message}" if p.message else "")
                    )
                ),
                artifacts=artifacts,
                on_artifact=None
                if as_json
                else lambda a: _print(
                    term(
                        f"  {a.outcome:<9} {a.name} ({a.size / 1e6:.1f} MB)"
                        + (f": {a.message}" if a.message else "")
                    )
                ),
            )
            total.pushed += rep.pushed
            total.artifacts += rep.artifacts
    counts = total.counts()
    art_counts = total.artifact_counts()
    if as_json:
        extra = {"artifacts": [vars(a) for a in total.artifacts]} if artifacts else {}
        _emit_json({"to": url, **counts, "pushed": [vars(p) for p in total.pushed], **extra})
    else:
        note(f"{url}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        if artifacts:
            note(
                "ONNX files: "
                + (", ".join(f"{n} {k}" for k, n in sorted(art_counts.items())) or "none listed")
            )
    if total.refused:
        raise PbkitError(f"{len(total.refused)} of {len(total.pushed)} record(s) refused by {url}")
    if total.refused_artifacts:
        raise PbkitError(
            f"{len(total.refused_artifacts)} of {len(total.artifacts)} ONNX file(s) refused by"
            f" {url}"
        )


@cli.command(context_settings=CONTEXT)
@click.argument("study_file", type=click.Path())
@TO_OPTION
@TOKEN_OPTION
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a key of the config every trial shares (not a grid axis).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def submit(
    study_file: str, url: str, token: str | None, overrides: tuple[str, ...], as_json: bool
) -> None:
    """Submit a study to a pbkit serve, which runs it on its Ray cluster; the trials' records
    fill its page as they finish (progress at URL/studies).

    The study is checked here as `pbkit study run` would read it, and what it `extends` is
    inlined: the service gets the study's settings only, and refuses models that are code (a
    Python file, an import path, a pickle) unless its operator allows them.

    \b
    Example:
      pbkit submit configs/study/digits-reference.study.yaml --to http://127.0.0.1:8000
    """
    from pbkit.core import config
    from pbkit.serve import client
    from pbkit.study import spec

    path = Path(study_file).expanduser()
    spec.read(path, overrides)  # every error, here and in one line, before anything is sent
    doc = config.read_yaml(path)
    shared = dict(doc.get("config") or {})
    if doc.get("extends"):
        shared = config.merge(config.read_yaml(path.parent / str(doc["extends"])), shared)
    for item in overrides:
        shared = config.apply_override(shared, item)
    for key in ("out", "run_id"):
        shared.pop(key, None)
    doc = {k: v for k, v in doc.items() if k != "extends"} | {"config": shared}
    with client.Client(url, client.token_from(token)) as c:
        got = c.submit(doc)
    if as_json:
        _emit_json(got)
    else:
        _print(
            f"study {got['study']} submitted to {url} as #{got['id']} ({got['trials']} trials,"
            f" runner {got['runner']}); progress: {url.rstrip('/')}/studies"
        )


# ------------------------------------------------------------------------------------ report


@cli.command(context_settings=CONTEXT)
@click.argument("folders", nargs=-1, type=click.Path())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "md", "csv", "json", "html"]),
    default="table",
    show_default=True,
    help="html: one self-contained page (leaderboards, plots, machines, runs).",
)
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False),
    default=None,
    help=(
        "Write the report to this file (atomically) instead of standard output (md, csv, json,"
        " html)."
    ),
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(),
    default=None,
    help="Also write a PNG: MACs vs measured speed-up.",
)
@click.option(
    "--accuracy-plot",
    "accuracy_plot",
    type=click.Path(),
    default=None,
    help=(
        "Also write a PNG: accuracy (mean ± std over seeds) per method, recipe and the scratch"
        " baseline."
    ),
)
@click.option(
    "--pareto-plot",
    "pareto_plot",
    type=click.Path(),
    default=None,
    help=(
        "Also write a PNG: accuracy on the engine against measured latency, one series per"
        " backend and precision (fp32, int8), dense and pruned."
    ),
)
@click.option(
    "--across-machines",
    is_flag=True,
    help=(
        "Compare each pruned model's measured speed-up across the machines (GPUs, CPUs) of the"
        " records (the HTML page always has this view)."
    ),
)
def report(
    folders: tuple[str, ...],
    fmt: str,
    output: str | None,
    plot_path: str | None,
    accuracy_plot: str | None,
    pareto_plot: str | None,
    across_machines: bool,
) -> None:
    """Leaderboards from records, grouped by model, dataset, scope and target.

    FOLDERS: runs folders, study folders or record files (default: results/runs); several are
    read together.

    Runs that differ only in their seeds are one row (mean ± std, n). Rows are ranked only
    against rows that share the setup S3.2 (the same bases, finetuning epochs and recipe, KD
    included); each group states its setup, and neighbours within the noise share a rank (=k).
    With several finetuning recipes: the cross-finetuning matrix and its verdict, and what one
    recipe change (LR, KD) did; scratch rows (init: scratch) are set beside the pruned ones. With
    --across-machines: one row per measured point, one column per machine (e.g. records measured
    on an H100 and an L4 put together in one folder). --format html writes all of it as one page
    that needs no network: sortable and filterable leaderboards, accuracy against measured
    speed-up, the machines side by side, a page per run, and the records it was built from.

    \b
    Example:
      pbkit report results/runs --format md > LEADERBOARD.md
      pbkit report results/studies/digits-fairness --format html -o report.html
      pbkit report results/runs --plot speedups.png
      pbkit report results/studies/digits-fairness --format md --accuracy-plot accuracy.png
      pbkit report results/h100 results/l4 --across-machines --format md --plot across.png
      pbkit report results/reference/int8 --format md --pareto-plot pareto.png
    """
    from pbkit.core import fileio
    from pbkit.report import leaderboard as rep

    if output and fmt == "table":
        raise PbkitError(
            "-o writes md, csv, json or html (--format); the table is for the terminal"
        )
    sources = list(folders) or ["results/runs"]
    records = rep.find_records(*sources)
    where = ", ".join(repr(s) for s in sources)
    if not records:
        raise PbkitError(f"no records (record.json) under {where}")
    # what it writes never replaces what it reads (its records), nor anything but a file
    with fileio.reading(path for path, _ in records):
        for target in (output, plot_path, accuracy_plot, pareto_plot):
            if target:
                fileio.check_target(Path(target))
        _report(records, sources, where, fmt, output, plot_path, accuracy_plot, across_machines)
        if pareto_plot:
            from pbkit.core.console import note
            from pbkit.report import plots

            shown = [r for _, r in records]
            note(f"plot written to {plots.plot_deployed(shown, pareto_plot)}")


def _report(
    records: list[Any],
    sources: list[str],
    where: str,
    fmt: str,
    output: str | None,
    plot_path: str | None,
    accuracy_plot: str | None,
    across_machines: bool,
) -> None:
    from pbkit.core.console import note
    from pbkit.core.fileio import atomic_write_text
    from pbkit.report import leaderboard as rep
    from pbkit.report import machines, plots

    def emit(text: str) -> None:
        if output:
            note(f"{fmt} report written to {atomic_write_text(output, text)}")
        else:
            click.echo(text, nl=not text.endswith("\n"))

    if across_machines and fmt != "html":
        mrows = machines.machine_rows(records)
        if not mrows:
            raise PbkitError(
                f"no latency measurements in the records under {where} (run `pbkit bench` first)"
            )
        shown = machines.render_machines(mrows, fmt)
        if isinstance(shown, str):
            emit(shown)
        else:
            _print(shown)
        if plot_path:
            note(f"plot written to {plots.plot_machines(mrows, plot_path)}")
        return
    rs = rep.rows(records)
    waiting = sum(1 for _, r in records if rep.unfinished(r))
    if waiting:
        note(
            f"{waiting} record(s) whose finetuning has not run yet (a study still running?) are"
            " left out"
        )
    if not rs:
        raise PbkitError(f"no finished runs under {where}")
    if fmt == "html":
        from pbkit.report import html

        emit(html.page(records, sources))
    elif fmt == "md":
        emit(rep.markdown(rs) + "\n")
    elif fmt in ("csv", "json"):
        emit(str(rep.render(rs, fmt)))
    else:
        for t in rep.render(rs, "table"):
            _print(t)
    if plot_path:
        note(f"plot written to {plots.plot(rs, plot_path)}")
    if accuracy_plot:
        note(f"plot written to {plots.plot_accuracy(rep.leaderboard(rs), accuracy_plot)}")


@cli.command(context_settings=CONTEXT)
def schema() -> None:
    """Print the JSON Schema of the result record.

    \b
    Example:
      pbkit schema > record.schema.json
    """
    from pbkit.core import record

    _emit_json(record.json_schema())


# ------------------------------------------------------------------------------------- entry


def _is_backend(tok: str) -> bool:
    from pbkit.measure.backends import BACKENDS

    return tok in BACKENDS


GREEDY = {
    "--batch": str.isdigit,
    "--precision": {"fp32", "fp16", "int8"}.__contains__,
    "--backend": _is_backend,
}


def expand_greedy(argv: list[str]) -> list[str]:
    """``--batch 1 8 32`` -> ``--batch 1 --batch 8 --batch 32`` (also ``--precision fp32 fp16``,
    ``--backend torch-cpu ort-cpu``): values that follow one of these flags and are among its
    values belong to it."""
    out: list[str] = []
    flag, first = None, False
    for tok in argv:
        if tok in GREEDY:
            flag, first = tok, True
        elif flag is not None and first:
            first = False  # the flag's own value, as click reads it
        elif flag is not None and GREEDY[flag](tok):
            out.append(flag)  # a further value of the same flag
        else:
            flag = None
        out.append(tok)
    return out


def _invoke(args: list[str]) -> object:
    """Run the command group without click's own interrupt handling (which prints a blank
    line and turns SIGTERM into a generic abort)."""
    try:
        with cli.make_context("pbkit", args) as ctx:
            return cli.invoke(ctx)
    except click.exceptions.Exit as e:
        return e.exit_code


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every failure is one line on stderr and a non-zero exit."""
    args = expand_greedy(list(sys.argv[1:] if argv is None else argv))
    warnings_env = os.environ.get("PYTHONWARNINGS")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # for child processes (compiler workers)
    try:
        with signals.handled():
            rv = _invoke(args)
    except signals.Terminated:
        click.echo("error: terminated (SIGTERM)", err=True)
        sys.exit(143)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        if type(e).__name__.startswith("NoArgsIsHelp") and getattr(e, "ctx", None) is not None:
            click.echo(e.ctx.get_help())  # type: ignore[attr-defined]
            sys.exit(0)
        click.echo(f"error: {visible(e.format_message())}", err=True)
        sys.exit(e.exit_code)
    except PbkitError as e:  # (on one line, whatever a file or an option put into it)
        click.echo(f"error: {visible(e)}", err=True)
        sys.exit(e.exit_code)
    except Exception as e:  # never a traceback for users; PBKIT_DEBUG=1 shows it
        if os.environ.get("PBKIT_DEBUG"):
            raise
        click.echo(
            f"error: internal error: {visible(first_line(e))}"
            " (set PBKIT_DEBUG=1 for the traceback)",
            err=True,
        )
        sys.exit(1)
    finally:
        if warnings_env is None:
            os.environ.pop("PYTHONWARNINGS", None)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
