"""Where the run-to-run spread of a CPU speed-up comes from (issue #17): the same dense and pruned
files, measured with ``pbkit bench``'s protocol by several fresh runner pairs (new ONNX Runtime
sessions, or new module copies for torch-cpu), each pair measured twice in a row.

If the two measurements of one pair agree closely while pairs disagree, the spread between
benches is a property of the session (its memory placement, its kernel choices) that no amount of
measuring inside one session averages away, and a bench's interval, computed within one session,
cannot cover it. Writes ``session-spread-<tag>.{json,md}`` under ``--out``.

    pbkit prune --model resnet18_cifar --method l2 --speedup 2 --out /tmp/ss
    pbkit export /tmp/ss/<run>
    python benchmarks/session_spread.py --run /tmp/ss/<run> [--pairs 6] [--backend ort-cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pbkit.core import config  # noqa: E402
from pbkit.core.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from pbkit.machine import envinfo  # noqa: E402
from pbkit.measure import backends, protocol  # noqa: E402
from pbkit.measure.runner import RunSpec  # noqa: E402
from pbkit.measure.settings import for_device  # noqa: E402
from pbkit.models import counts  # noqa: E402
from pbkit.models.checkpoint import load_model  # noqa: E402
from pbkit.stages.rundir import ONNX_FILES  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--run", type=Path, required=True, help="a run folder with its models exported to ONNX"
    )
    ap.add_argument("--backend", default="ort-cpu", choices=["ort-cpu", "torch-cpu"])
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    args = ap.parse_args()
    missing = [
        f for f in ("dense.pt", "pruned.pt", *ONNX_FILES.values()) if not (args.run / f).is_file()
    ]
    if missing:
        raise SystemExit(
            f"error: {args.run} lacks {', '.join(missing)}: give a run folder exported with `pbkit"
            " export`"
        )
    be = backends.get(args.backend)
    cfg = config.load(None, ["model.name=resnet18_cifar"])  # only its bench defaults are used
    settings = for_device(cfg.bench, "cpu")
    threads = protocol.default_threads()
    _, spec, _ = load_model(args.run / "dense.pt")
    x = counts.example_input(spec.input_size, batch=1, seed=2)

    def spec_for(variant: str) -> RunSpec:
        if be.artifact == "onnx":
            return RunSpec(path=args.run / ONNX_FILES[variant], x=x, threads=threads)
        model, _, _ = load_model(
            args.run / f"{variant}.pt"
        )  # a fresh copy: new memory, as a new process would have
        return RunSpec(path=args.run / f"{variant}.pt", x=x, threads=threads, module=model.eval())

    rows: list[dict[str, Any]] = []
    for k in range(args.pairs):
        runners = {"dense": be.make(spec_for("dense")), "pruned": be.make(spec_for("pruned"))}
        try:
            twice = []
            for _ in range(2):
                with protocol.pinned(threads):
                    res = protocol.measure_alternating(
                        dict[str, protocol.Runner](runners), settings
                    )
                assert res.speedup is not None  # two runners
                twice.append({"speedup": res.speedup.value, "ci": res.speedup.ci})
        finally:
            for r in runners.values():
                r.close()
        rows.append({"pair": k, "first": twice[0], "second": twice[1]})
        print(
            f"pair {k}: {twice[0]['speedup']:.3f}x [{twice[0]['ci'][0]:.3f},"
            f" {twice[0]['ci'][1]:.3f}] then {twice[1]['speedup']:.3f}x [{twice[1]['ci'][0]:.3f},"
            f" {twice[1]['ci'][1]:.3f}]",
            flush=True,
        )
    firsts = [r["first"]["speedup"] for r in rows]
    within = [abs(r["second"]["speedup"] / r["first"]["speedup"] - 1) for r in rows]
    covered = sum(
        1
        for i, a in enumerate(rows)
        for j, b in enumerate(rows)
        if i != j and a["first"]["ci"][0] <= b["first"]["speedup"] <= a["first"]["ci"][1]
    )
    summary = {
        "between_pairs_spread": max(firsts) / min(firsts) - 1,
        "between_pairs_cv": statistics.stdev(firsts) / statistics.mean(firsts),
        "within_pair_mean_abs_diff": statistics.mean(within),
        "ci_covers_other_pairs": covered / (len(rows) * (len(rows) - 1)),
    }
    tag = envinfo.machine(envinfo.collect()).replace(" ", "-")
    stem = args.out / f"session-spread-{args.backend}-{tag}"
    atomic_write_json(
        stem.with_suffix(".json"),
        {
            "run": str(args.run),
            "backend": args.backend,
            "threads": threads,
            "rows": rows,
            "summary": summary,
        },
    )
    lines = [
        f"# Speed-up spread between fresh runner pairs vs within one pair ({args.backend}, {tag})",
        "",
        (
            f"Run: `{args.run.name}` ({spec.name}), batch 1, {threads} thread(s), `pbkit bench`'s"
            " default protocol. Each pair of fresh runners (dense, pruned) is measured twice in a"
            " row."
        ),
        "",
        "| pair | 1st speed-up [95% CI] | 2nd speed-up [95% CI] |",
        "|---|---|---|",
    ]
    for r in rows:
        a, b = r["first"], r["second"]
        lines.append(
            f"| {r['pair']} | {a['speedup']:.3f}x [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}] | "
            f"{b['speedup']:.3f}x [{b['ci'][0]:.3f}, {b['ci'][1]:.3f}] |"
        )
    lines += [
        "",
        (
            f"Between pairs: spread {summary['between_pairs_spread']:.2%} (largest / smallest - 1),"
            f" CoV {summary['between_pairs_cv']:.2%}. Within a pair: the second measurement differs"
            f" from the first by {summary['within_pair_mean_abs_diff']:.2%} on average. A pair's"
            f" interval covers another pair's speed-up in {summary['ci_covers_other_pairs']:.0%} of"
            " cases."
        ),
        "",
    ]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines[-2:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
