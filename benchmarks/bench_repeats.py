"""Bench one run folder N times and print each speed-up (with its interval, where the pbkit that
runs records one) and how long each bench took: to compare two measurement protocols on the same
machine in the same hour, run it once with each checkout on PYTHONPATH (each on its own run folder,
made by that checkout), e.g.

    PYTHONPATH=<old checkout> python benchmarks/bench_repeats.py RUN_OLD --tag old
    python benchmarks/bench_repeats.py RUN_NEW --tag new --out results/perf

Writes bench-repeats-<tag>.json under --out (default: the current folder)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pbkit import stages


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--tag", default="run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backends", nargs="+", default=["ort-cpu", "torch-cpu"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    rows = []
    for i in range(args.repeats):
        rec = stages.bench_run(
            args.run,
            values={
                "bench.backends": args.backends,
                "bench.batches": [1],
                "bench.threads": args.threads,
            },
            quiet=True,
        )
        row = {"repeat": i + 1, "bench_s": rec.stages["bench"].seconds}
        for p in rec.latency:
            if p.variant == "pruned" and p.backend in args.backends:
                row[p.backend] = {
                    "speedup": p.speedup_vs_dense,
                    "ci": getattr(p, "speedup_ci", None),
                    "stable": p.stable,
                    "attempts": p.attempts,
                }
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"bench-repeats-{args.tag}.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
