"""Speed and fidelity of the measurement itself (a benchmark, not a timed test).

1. Run-to-run spread: the same run folder is benched ``--repeats`` times (the full `pbkit bench`
   protocol each time); per backend and model, the CoV of the medians across repeats.
   Goal: <= 1% on a GPU, <= 5% on shared CPUs.
   And the speed-ups: each repeat's speed-up with its 95% interval, the spread of the repeats
   (largest / smallest - 1; goal on a CPU: within 3%), how often one repeat's interval covers
   another's speed-up, and how long each bench took.
2. Agreement: right after each ort-cpu bench, a minimal independent loop (a fresh ONNX Runtime
   session with the same thread count, `perf_counter` around `session.run`, no pbkit code) times
   the same ONNX file for as long as pbkit measured it; our median must be within 5% of its median
   (headline: the median over the repeats of each; every repeat is listed too).

    python benchmarks/fidelity.py [--run RUN_DIR] [--repeats 5] [--backends ort-cpu torch-cpu]
                                  [--out results/perf] [--set bench.sessions=1 ...]

``--set`` changes the bench settings of every repeat (``bench.sessions=1``: the one-session
protocol, to compare with on the same machine).

Without --run, a resnet18_cifar run (l1, protected, 2x, random weights) is made first. Writes
fidelity-<tag>.json / .md / .png under --out (tag: the GPU name, else cpu-<cores>core).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pbkit import stages
from pbkit.core import config, record
from pbkit.core.fileio import atomic_write_json, atomic_write_text
from pbkit.machine import envinfo
from pbkit.measure import backends
from pbkit.measure import protocol as measure
from pbkit.models import counts
from pbkit.stages.rundir import ONNX_FILES

SPREAD_GOAL = {"cpu": 0.05, "cuda": 0.01}
AGREEMENT_GOAL = 0.05


def independent_ort_median(
    onnx_path: Path, x: np.ndarray, threads: int, seconds: float, iters: int
) -> float:
    """The minimal loop: its own session and timer, nothing from pbkit's measurement code."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(50):
        sess.run(None, feed)
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while len(times) < iters or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


RUN_TO_RUN_GOAL = 0.03


def repeat_check(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The spread of the repeats' speed-ups and how often one repeat's interval covers another's."""
    sps = [r["speedup"] for r in rows]
    pairs = [(a, b) for a in rows for b in rows if a is not b and a["ci"]]
    covered = sum(1 for a, b in pairs if a["ci"][0] <= b["speedup"] <= a["ci"][1])
    both = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1 :] if a["ci"] and b["ci"]]
    overlap = sum(1 for a, b in both if a["ci"][0] <= b["ci"][1] and b["ci"][0] <= a["ci"][1])
    return {
        "spread": max(sps) / min(sps) - 1,
        "pairs": len(pairs),
        "covered": covered,
        "coverage": covered / len(pairs) if pairs else 0.0,
        "ok": max(sps) / min(sps) - 1 <= RUN_TO_RUN_GOAL,
        "interval_pairs": len(both),
        "overlapping": overlap,
    }


def make_run(out: Path) -> Path:
    cfg = config.load(
        None,
        [
            f"out={out}",
            "model.name=resnet18_cifar",
            "prune.method=l1",
            "prune.speedup=2",
            "bench.backends=[ort-cpu]",
        ],
    )
    return stages.run(cfg, until="export").run_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--backends",
        nargs="+",
        default=None,
        help="default: ort-cpu, torch-cpu and available GPU ones",
    )
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    ap.add_argument(
        "--set",
        dest="sets",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="bench settings for every repeat, e.g. bench.sessions=1 (the one-session protocol)",
    )
    args = ap.parse_args()

    names = args.backends or [
        n
        for n in ("ort-cpu", "torch-cpu", "torch-cuda", "torch-cuda-graph")
        if backends.BACKENDS[n].check() is None
    ]
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run(Path(tmp))
        rec0 = record.read(run)
        threads = measure.default_threads()
        x = counts.example_input(rec0.model.input_size, batch=args.batch, seed=2).numpy()
        medians: dict[tuple[str, str], list[float]] = {}
        speedups: dict[str, list[dict[str, Any]]] = {}
        agreement: list[dict[str, Any]] = []
        for i in range(args.repeats):
            rec = stages.bench_run(
                run,
                list(args.sets),
                values={
                    "bench.backends": names,
                    "bench.batches": [args.batch],
                    "bench.threads": threads,
                },
                quiet=True,
            )
            for p in rec.latency:
                if p.backend in names and p.batch == args.batch:
                    medians.setdefault((p.backend, p.variant), []).append(p.median_ms)
                    if p.variant == "pruned":
                        speedups.setdefault(p.backend, []).append(
                            {
                                "repeat": i + 1,
                                "speedup": p.speedup_vs_dense,
                                "ci": p.speedup_ci,
                                "stop": (p.ci or {}).get("stop"),
                                "blocks": p.blocks,
                                "sessions": (p.ci or {}).get("sessions", 1),
                                "bench_s": rec.stages["bench"].seconds,
                            }
                        )
            if "ort-cpu" in names:
                s = rec.bench or {}
                for variant in ("dense", "pruned"):
                    ours = next(
                        p.median_ms
                        for p in rec.latency
                        if (p.backend, p.variant, p.batch) == ("ort-cpu", variant, args.batch)
                    )
                    ref = independent_ort_median(
                        run / ONNX_FILES[variant],
                        x,
                        threads,
                        float(s.get("min_time_s", 3.0)),
                        int(s.get("min_iters", 200)),
                    )
                    agreement.append(
                        {
                            "repeat": i + 1,
                            "variant": variant,
                            "pbkit_ms": ours,
                            "independent_ms": ref,
                            "rel_diff": ours / ref - 1,
                        }
                    )
            print(
                f"repeat {i + 1}/{args.repeats}: "
                + ", ".join(f"{b}/{v} {m[-1]:.3f} ms" for (b, v), m in medians.items()),
                file=sys.stderr,
                flush=True,
            )
        env = envinfo.collect()

    spread = []
    for (backend, variant), ms in medians.items():
        device = backends.BACKENDS[backend].device
        cov = statistics.stdev(ms) / statistics.mean(ms) if len(ms) > 1 else 0.0
        spread.append(
            {
                "backend": backend,
                "variant": variant,
                "device": device,
                "medians_ms": ms,
                "cov": cov,
                "goal": SPREAD_GOAL[device],
                "ok": cov <= SPREAD_GOAL[device],
            }
        )
    runs_check = {b: repeat_check(rows) for b, rows in speedups.items()}
    worst = max((abs(a["rel_diff"]) for a in agreement), default=None)
    overall = {
        v: (
            statistics.median(a["pbkit_ms"] for a in agreement if a["variant"] == v)
            / statistics.median(a["independent_ms"] for a in agreement if a["variant"] == v)
            - 1
        )
        for v in ("dense", "pruned")
        if any(a["variant"] == v for a in agreement)
    }
    tag = env["gpus"][0]["name"].replace(" ", "-") if env["gpus"] else f"cpu-{measure.cores()}core"
    result = {
        "model": rec0.model.name,
        "run_id": rec0.run_id,
        "batch": args.batch,
        "threads": threads,
        "repeats": args.repeats,
        "spread": spread,
        "agreement": agreement,
        "speedups": speedups,
        "run_to_run": runs_check,
        "agreement_median_of_repeats": overall,
        "agreement_worst_repeat": worst,
        "agreement_ok": bool(overall) and all(abs(d) <= AGREEMENT_GOAL for d in overall.values()),
        "machine": envinfo.machine(env),
        "env": env,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"fidelity-{tag}.json", result)
    lines = [
        (
            f"# Measurement fidelity: {rec0.model.name}, batch {args.batch}, {threads} threads, "
            f"{args.repeats} repeats ({envinfo.machine(env)})"
        ),
        "",
        "| backend | model | medians (ms) | CoV of medians | goal | ok |",
        "|---|---|---|---|---|---|",
    ]
    for s in spread:
        lines.append(
            f"| {s['backend']} | {s['variant']} | {', '.join(f'{m:.3f}' for m in s['medians_ms'])}"
            f" | {s['cov']:.2%} | <= {s['goal']:.0%} | {'yes' if s['ok'] else 'NO'} |"
        )
    for b, rows in speedups.items():
        c = runs_check[b]
        lines += [
            "",
            (
                f"{b}: the speed-up of each repeat, its 95% interval (over the fresh sessions of"
                " that bench; one session: a paired block bootstrap) and why measuring stopped"
                " (bench s: the whole bench stage, every backend):"
            ),
            "",
            "| repeat | speed-up | 95% interval | stopped by | sessions | block pairs | bench s |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            (
                f"| {r['repeat']} | {r['speedup']:.3f}x | [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] |"
                f" {r['stop']} | {r.get('sessions', 1)} | {r['blocks']} | {r['bench_s']:.1f} |"
                if r["ci"]
                else f"| {r['repeat']} | {r['speedup']:.3f}x | - | - | - | - | {r['bench_s']:.1f} |"
            )
            for r in rows
        ]
        lines += [
            "",
            (
                f"Spread of the {len(rows)} speed-ups: {c['spread']:.2%} (largest / smallest - 1;"
                f" goal within {RUN_TO_RUN_GOAL:.0%}:"
                f" {'met' if c['spread'] <= RUN_TO_RUN_GOAL else 'NOT MET'}); one repeat's interval"
                f" covers another's speed-up in {c['covered']}/{c['pairs']} pairs"
                f" ({c['coverage']:.0%}); two repeats' intervals overlap in"
                f" {c['overlapping']}/{c['interval_pairs']} pairs."
            ),
        ]
    if agreement:
        lines += [
            "",
            "ort-cpu vs a minimal independent loop on the same ONNX file (same run):",
            "",
            "| repeat | model | pbkit (ms) | independent (ms) | difference |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {a['repeat']} | {a['variant']} | {a['pbkit_ms']:.3f} | {a['independent_ms']:.3f} | "
            f"{a['rel_diff']:+.2%} |"
            for a in agreement
        ]
        lines += [
            "",
            "Median over the repeats: "
            + ", ".join(f"{v} {d:+.2%}" for v, d in overall.items())
            + f" (goal: within {AGREEMENT_GOAL:.0%}:"
            f" {'met' if result['agreement_ok'] else 'NOT MET'}); worst single repeat"
            f" {worst:.2%}.",
        ]
    atomic_write_text(args.out / f"fidelity-{tag}.md", "\n".join(lines) + "\n")
    _plot(spread, agreement, speedups, args.out / f"fidelity-{tag}.png", rec0.model.name)
    print("\n".join(lines))
    return 0


def _plot(
    spread: list[dict[str, Any]],
    agreement: list[dict[str, Any]],
    speedups: dict[str, list[dict[str, Any]]],
    path: Path,
    model: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.2))
    for i, (b, rows) in enumerate(speedups.items()):
        xs = [r["repeat"] + 0.08 * i for r in rows]
        ys = [r["speedup"] for r in rows]
        err = [
            [y - r["ci"][0] if r["ci"] else 0 for y, r in zip(ys, rows, strict=True)],
            [r["ci"][1] - y if r["ci"] else 0 for y, r in zip(ys, rows, strict=True)],
        ]
        ax2.errorbar(
            xs,
            ys,
            yerr=err,
            fmt="o",
            capsize=3,
            color=f"C{i}",
            label=f"{b} (spread {max(ys) / min(ys) - 1:.1%})",
        )
    ax2.set_xlabel("repeat")
    ax2.set_ylabel("measured speed-up (95% interval)")
    ax2.set_title("the speed-up of each repeat, with its interval")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    for i, s in enumerate(spread):
        ax.plot(
            range(1, len(s["medians_ms"]) + 1),
            s["medians_ms"],
            "o-",
            color=f"C{i}",
            label=f"{s['backend']} {s['variant']} (CoV {s['cov']:.1%})",
        )
    for variant, style in (("dense", "--"), ("pruned", ":")):
        pts = [a for a in agreement if a["variant"] == variant]
        if pts:
            ax.plot(
                [a["repeat"] for a in pts],
                [a["independent_ms"] for a in pts],
                style,
                color="k",
                label=f"independent ORT loop, {variant}",
            )
    ax.set_xlabel("repeat")
    ax.set_ylabel("median latency (ms)")
    ax.set_title(f"run-to-run spread and agreement ({model})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
