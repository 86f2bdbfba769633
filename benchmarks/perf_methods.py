"""Per-step time of every pruning method on the ResNet-50 CIFAR shape (100 classes, 32x32).

Every data-driven criterion gets the same calibration budget (batches x batch size, seeded
synthetic images); a step = the criterion's calibration pass + one pruning step, timed over a few
steps and reported as the median. The study's figures (ResNet-50, CIFAR-100, GPU): HRank 34 min,
ThiNet 34 s, CP 2 min 51 s, OBD-Hessian 5 min against Taylor's 3.7 s per step. Goal here: every
data-driven criterion within 10x of Taylor's step time in the same run.

    python benchmarks/perf_methods.py [--batches 2] [--batch-size 32] [--steps 3] \
        [--out results/perf]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from pbkit import data, models, tasks
from pbkit.core.config import CalibrationCfg
from pbkit.core.fileio import atomic_write_json, atomic_write_text
from pbkit.machine import envinfo
from pbkit.models import counts
from pbkit.pruning import methods

GOAL = 10.0


def step_times(key: str, calibration: object, steps: int, model_name: str) -> dict:

    spec = models.resolve(model_name, num_classes=100)
    model = models.build(spec, seed=0).eval()
    with torch.no_grad():  # a random init has every BN gamma at 1: spread them, as training would
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.0)
    method = methods.get(key)
    ctx = {"num_classes": spec.num_classes, "seed": 0, "reg": 5e-4, "delta_reg": 1e-4}
    cls, extra = method.pruner_class(ctx)
    imp = method.importance(ctx)
    pruner = cls(
        model,
        counts.example_input(spec.input_size),
        importance=imp,
        global_pruning=True,
        pruning_ratio=1.0,
        max_pruning_ratio=0.9,
        iterative_steps=400,
        ignored_layers=tasks.get(spec.task).protected(model, spec),
        **extra,
    )
    times, reg_ms = [], None
    for _ in range(steps):
        t0 = time.perf_counter()
        if method.collect is not None:
            method.collect(imp, model, pruner, calibration)
        pruner.step()
        times.append(time.perf_counter() - t0)
    if method.stage == "sparsify":  # cost the regularizer adds to every training batch
        x, y = calibration.batches[0]  # type: ignore[attr-defined]
        model.train()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        t0 = time.perf_counter()
        pruner.update_regularizer() if hasattr(pruner, "update_regularizer") else None
        pruner.regularize(model)
        reg_ms = (time.perf_counter() - t0) * 1e3
    return {
        "method": key,
        "stage": method.stage,
        "data": method.data,
        "step_time_s": statistics.median(times),
        "step_times_s": times,
        "regularize_ms_per_batch": reg_ms,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pbkit.core.fileio import atomic_write

    rows = sorted(result["rows"], key=lambda r: r["step_time_s"])
    taylor = next(r["step_time_s"] for r in rows if r["method"] == "taylor")
    colors = {"none": "C0", "training data": "C2"}
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    ax.barh(
        [r["method"] for r in rows],
        [r["step_time_s"] for r in rows],
        color=[colors.get(r["data"], "C1") for r in rows],
    )
    ax.axvline(taylor, color="k", lw=0.8, ls="--", label="taylor")
    ax.axvline(taylor * GOAL, color="C3", lw=0.8, ls="--", label=f"{GOAL:g}x taylor (goal)")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per pruning step (calibration pass + step), log scale")
    cal = result["calibration"]
    ax.set_title(
        f"{result['model']}: per-step time, {cal['batches']}x{cal['batch_size']} calibration"
        " images",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="resnet50_cifar")
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--methods", nargs="*", default=sorted(methods.METHODS))
    ap.add_argument("--out", default="results/perf")
    ap.add_argument("--replot", type=Path, help="only redraw the plot of an existing JSON result")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        return 0
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    bundle = data.load("synthetic", image_size=32, num_classes=100, seed=0)
    spec = models.resolve(args.model, num_classes=100)
    calibration = tasks.get(spec.task).calibration(
        bundle,
        CalibrationCfg(
            dataset="synthetic", batches=args.batches, batch_size=args.batch_size, seed=0
        ),
        spec,
    )
    keys = ["taylor"] + [k for k in args.methods if k != "taylor"]
    rows = []
    for i, key in enumerate(keys, 1):
        r = step_times(key, calibration, args.steps, args.model)
        rows.append(r)
        print(
            f"[{i}/{len(keys)}] {key:12s} step {r['step_time_s']:8.3f} s",
            file=sys.stderr,
            flush=True,
        )
    taylor = rows[0]["step_time_s"]
    for r in rows:
        r["ratio_vs_taylor"] = r["step_time_s"] / taylor
        r["within_goal"] = (
            r["data"] == "none" or r["stage"] == "sparsify" or r["ratio_vs_taylor"] <= GOAL
        )
    env = envinfo.collect()
    result = {
        "benchmark": "per-step time of every method",
        "model": args.model,
        "input_size": 32,
        "num_classes": 100,
        "calibration": {
            "dataset": "synthetic",
            "batches": args.batches,
            "batch_size": args.batch_size,
            "seed": 0,
        },
        "steps_timed": args.steps,
        "goal": f"data-driven criteria within {GOAL:g}x of taylor",
        "rows": rows,
        "env": env,
    }
    tag = (
        f"cpu-{env['host']['cores_logical']}core"
        if not env["gpus"]
        else env["gpus"][0]["name"].replace(" ", "_")
    )
    out = Path(args.out)
    atomic_write_json(out / f"methods-{args.model}-{tag}.json", result)
    lines = [
        f"# Per-step time, {args.model} (32x32, 100 classes), {tag}",
        "",
        (
            f"Calibration: {args.batches} x {args.batch_size} synthetic images, the same for every"
            f" data-driven criterion; median of {args.steps} steps (calibration pass + one pruning"
            " step)."
        ),
        "",
        "| method | stage | data | step s | x taylor | goal (<= 10x) |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["step_time_s"]):
        goal = (
            "-"
            if r["data"] == "none" or r["stage"] == "sparsify"
            else ("ok" if r["within_goal"] else "MISSED")
        )
        lines.append(
            f"| {r['method']} | {r['stage']} | {r['data']} | {r['step_time_s']:.3f} | "
            f"{r['ratio_vs_taylor']:.2f} | {goal} |"
        )
    table = "\n".join(lines) + "\n"
    atomic_write_text(out / f"methods-{args.model}-{tag}.md", table)
    plot(result, out / f"methods-{args.model}-{tag}.png")
    print(table)
    missed = [r["method"] for r in rows if not r["within_goal"]]
    if missed:
        print(f"goal missed by: {', '.join(missed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
