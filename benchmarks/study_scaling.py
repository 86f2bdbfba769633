"""Scaling of a study on Ray (a benchmark, not a timed test).

The same 8-trial CPU study (resnet56_cifar, data-free criteria, 2 targets, quick bench, one CPU
per trial) runs on a local Ray with 1 worker, then with 2, each in a fresh study folder, and that
pair ``--repeats`` times (a shared VM drifts by tens of percent between minutes: the headline is the
median ratio of the pairs). Reported: the wall time of each run, the ratios (goal >= 1.7x on 2
cores), and Ray's overhead per trial (from submitting a trial to having its record back, minus the
trial's own time on the worker; goal under 2% of the trial's time).

    python benchmarks/study_scaling.py [--out results/perf] [--workers 1 2] [--repeats 3]

Writes study-scaling-<tag>.json / .md / .png (tag: cpu-<cores>core).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from pbkit.core.fileio import atomic_write, atomic_write_json, atomic_write_text
from pbkit.machine import envinfo
from pbkit.study import runner, spec, state

STUDY = {
    "name": "scaling",
    "config": {
        "model": {"name": "resnet56_cifar"},
        "prune": {"iterative_steps": 400},
        "bench": {"quick": True, "backends": ["torch-cpu", "ort-cpu"]},
        "export": {"exporter": "torchscript"},
    },
    "grid": {"prune.method": ["l1", "l2", "lamp", "fpgm"], "prune.speedup": [2, 3]},
    "resources": {"cpu": 1},
}
SPEEDUP_GOAL, OVERHEAD_GOAL = 1.7, 0.02


def run_once(workers: int, tmp: Path) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"scaling-{workers}.study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    out = tmp / f"out-{workers}"
    t0 = time.perf_counter()
    summary = runner.run(spec.read(path), out, executor="ray", max_parallel=workers)
    wall = time.perf_counter() - t0
    trials = state.read(out)["trials"]
    if summary.counts["done"] != len(trials):
        raise SystemExit(f"{workers} worker(s): {summary.counts}")
    own = [t["wall_s"] for t in trials]
    over = [t["overhead_s"] for t in trials]
    return {
        "workers": workers,
        "wall_s": wall,
        "trials": len(trials),
        "trial_s": own,
        "overhead_s": over,
        "trial_s_median": statistics.median(own),
        "overhead_s_median": statistics.median(over),
        "overhead_share_median": statistics.median(o / w for o, w in zip(over, own, strict=True)),
        "nodes": sorted({t["node_id"] for t in trials}),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    workers = sorted({r["workers"] for r in runs})
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for i, w in enumerate(workers):
        mine = [r for r in runs if r["workers"] == w]
        a.scatter(
            [r["repeat"] for r in mine],
            [r["wall_s"] for r in mine],
            label=f"{w} worker(s)",
            color=f"C{i}",
            s=40,
        )
        b.scatter(
            [t for r in mine for t in r["trial_s"]],
            [o * 1000 for r in mine for o in r["overhead_s"]],
            label=f"{w} worker(s)",
            color=f"C{i}",
            alpha=0.7,
        )
    a.set_xlabel("repeat")
    a.set_ylabel("study wall time (s)")
    a.set_ylim(bottom=0)
    a.set_title(
        f"8 trials: median speed-up {result['speedup']:.2f}x (goal {SPEEDUP_GOAL}x)", fontsize=10
    )
    a.legend(fontsize=8)
    b.set_xlabel("trial's own time on the worker (s)")
    b.set_ylabel("Ray overhead per trial (ms)")
    b.set_yscale("log")
    b.set_title("submit -> record back, minus the trial's time", fontsize=10)
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    env = envinfo.collect()
    tag = f"cpu-{env['host']['cores_logical']}core"
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for w in args.workers:
                r = run_once(w, Path(tmp) / f"rep{rep}")
                r["repeat"] = rep + 1
                print(
                    f"repeat {rep + 1}, {w} worker(s): {r['wall_s']:.1f} s, trial median"
                    f" {r['trial_s_median']:.1f} s, Ray overhead median"
                    f" {r['overhead_s_median'] * 1000:.0f} ms ({r['overhead_share_median']:.2%})",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(r)
    lo, hi = args.workers[0], args.workers[-1]
    ratios = [
        next(r["wall_s"] for r in runs if r["repeat"] == k and r["workers"] == lo)
        / next(r["wall_s"] for r in runs if r["repeat"] == k and r["workers"] == hi)
        for k in range(1, args.repeats + 1)
    ]
    speedup = statistics.median(ratios)
    share = statistics.median(r["overhead_share_median"] for r in runs)
    result = {
        "benchmark": "study scaling on Ray",
        "study": STUDY,
        "runs": runs,
        "speedups": ratios,
        "speedup": speedup,
        "speedup_goal": SPEEDUP_GOAL,
        "overhead_share_median": share,
        "overhead_goal": OVERHEAD_GOAL,
        "host": env["host"],
        "software": {k: env["software"].get(k) for k in ("torch", "python")},
        "ray": __import__("ray").__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"study-scaling-{tag}"
    atomic_write_json(stem.with_suffix(".json"), result)
    lines = [
        f"# Study scaling on Ray ({tag})",
        "",
        (
            "The same 8-trial study (resnet56_cifar; l1, l2, lamp, fpgm; 2x and 3x; quick bench;"
            f" one CPU per trial) on a local Ray, each run in a fresh study folder; {args.repeats}"
            " repeats of the pair."
        ),
        "",
        (
            "| repeat | workers | wall s | trial s (median) | Ray overhead per trial (median) |"
            " share of the trial |"
        ),
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['repeat']} | {r['workers']} | {r['wall_s']:.1f} | {r['trial_s_median']:.2f} | "
        f"{r['overhead_s_median'] * 1000:.0f} ms | {r['overhead_share_median']:.2%} |"
        for r in runs
    ]
    lines += [
        "",
        (
            f"Speed-up {hi} vs {lo} worker(s), per repeat:"
            f" {', '.join(f'{x:.2f}x' for x in ratios)}; median **{speedup:.2f}x** (goal >="
            f" {SPEEDUP_GOAL}x: {'met' if speedup >= SPEEDUP_GOAL else 'NOT met'}). Ray overhead:"
            f" {share:.2%} of a trial's time at the median (goal under {OVERHEAD_GOAL:.0%}:"
            f" {'met' if share < OVERHEAD_GOAL else 'NOT met'})."
        ),
        "",
    ]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines))
    plot(result, stem.with_suffix(".png"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
