"""Latency-targeted against MACs-targeted pruning, per model, backend and target: the measured
speed-up reached, judged by ``pbkit bench`` in a fresh process for both arms (goal: at least the
target, at most 10% above; the pruning loop's own last check beside it), the MACs speed-up it
took, the table's prediction error, and the wall time of pruning against a MACs-targeted run at
the same nominal target. Each run is a ``pbkit prune`` in its own process; the latency tables are
cached between targets. Writes ``latency-target-<machine>.{json,md,png}`` under ``--out``.

    python benchmarks/latency_target.py --models resnet18_cifar resnet50_cifar \
        --backends ort-cpu torch-cpu
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pbkit.core.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from pbkit.machine import envinfo  # noqa: E402

MODEL_ARGS = {  # a small timm ViT at a CPU-friendly size
    "timm:vit_tiny_patch16_224": ["--set", "model.input_size=96", "--set", "model.num_classes=10"],
    "yolov8n": ["--set", "model.input_size=320"],  # detection at a CPU-friendly size
}


def pbkit(*args: str) -> tuple[dict[str, Any] | None, float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "pbkit.cli", *args, "--json"], capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return None, seconds, lines[-1] if lines else f"exit {out.returncode}"
    return json.loads(out.stdout), seconds, ""


def record(run: dict[str, Any]) -> dict[str, Any]:
    return json.loads((Path(run["run_dir"]) / "record.json").read_text())  # type: ignore[no-any-return]


def one(
    model: str, backend: str, target: float, method: str, work: Path, cache: Path
) -> dict[str, Any]:
    common = [
        "--model",
        model,
        "--method",
        method,
        "--speedup",
        str(target),
        "--out",
        str(work / "runs"),
        *MODEL_ARGS.get(model, []),
    ]
    row: dict[str, Any] = {"model": model, "backend": backend, "target": target, "method": method}
    lat, lat_s, err = pbkit(
        "prune",
        *common,
        "--target",
        "latency",
        "--backend",
        backend,
        "--set",
        f"prune.latency.cache={cache}",
    )
    if lat is None:
        row["error"] = err
        return row
    # both arms are judged by the same protocol: `pbkit bench` in a fresh process (the record then
    # keeps the loop's last check and the bench's verdict, method.latency.bench)
    lat_bench, _, berr = pbkit("bench", lat["run_dir"], "--backend", backend, "--batch", "1")
    lt = record(lat)["method"]["latency"]
    jb = lt.get("bench") if lat_bench is not None else None
    if jb is None:
        row["error"] = f"bench of the latency-targeted run: {berr or 'no bench verdict'}"
        return row
    row.update(
        latency_wall_s=round(lat_s, 1),
        measured=jb["speedup"],
        measured_ci=jb["ci"],
        bench_stable=jb["stable"],
        loop_check=lt["measured_speedup"],
        loop_ci=lt["measured_ci"],
        macs_it_took=lt["macs_speedup"],
        realisation=jb["speedup"] / lt["macs_speedup"],
        checks=lt["checks"],
        steps=len(lt["trajectory"]),
        prediction_error=lt["prediction_error"]["mean_abs"],
        table_s=lt["table"]["time_s"],
        table_timed=lt["table"]["timed"],
        measure_s=lt["measure_s"],
        within_10pct=jb["within_10pct"],
    )
    macs, macs_s, err = pbkit("prune", *common)
    if macs is not None:
        bench, _, berr = pbkit("bench", macs["run_dir"], "--backend", backend, "--batch", "1")
        row["macs_wall_s"] = round(macs_s, 1)
        if bench is not None:
            pts = [
                p
                for p in record(macs)["latency"]
                if p["backend"] == backend and p["variant"] == "pruned"
            ]
            row["macs_target_measured"] = pts[0]["speedup_vs_dense"] if pts else None
            row["macs_target_ci"] = pts[0].get("speedup_ci") if pts else None
        else:
            row["macs_error"] = berr
    else:
        row["macs_error"] = err
    return row


def markdown(rows: list[dict[str, Any]], machine: str) -> str:
    lines = [
        f"# Latency-targeted vs MACs-targeted pruning ({machine})",
        "",
        (
            "Realisation: measured speed-up / MACs speed-up (for the MACs target, measured /"
            " target). Wall s: the whole `pbkit prune` process (the table's build and the"
            " end-to-end measurements in brackets); the MACs-targeted wall time excludes its `pbkit"
            " bench`."
        ),
        "",
        (
            "`pbkit prune --target latency --backend B --speedup X` (l2, protected scope, batch 1,"
            " fp32, random weights) against `--target macs` at the same X; each run then `pbkit"
            " bench` on B in a fresh process. Both arms' measured speed-ups are the bench"
            " protocol's (fresh sessions, alternating dense/pruned blocks, 95% interval) and the"
            " target is judged on them; the pruning loop's own last check is shown beside it."
            " Rows without a loop column were measured before the bench judged both arms (their"
            " measured column is the loop's check)."
        ),
        "",
        (
            "| model | backend | target | measured (latency target, bench) | 95% CI |"
            " within [X, 1.1X] | loop's last check | MACs it took | realisation |"
            " prediction error | checks | wall s (table, measuring) |"
            " MACs target: measured | MACs target: realisation | MACs target: wall s |"
        ),
        "|" + "---|" * 15,
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['backend']} | {r['target']:g}x | failed: {r['error']} |"
                + " |" * 11
            )
            continue
        ci = r["measured_ci"]
        loop = f"{r['loop_check']:.3f}x" if r.get("loop_check") else "-"
        unstable = "" if r.get("bench_stable", True) else " (unstable)"
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['target']:g}x | {r['measured']:.3f}x{unstable} |"
            f" [{ci[0]:.3f}, {ci[1]:.3f}] | {'yes' if r['within_10pct'] else 'no'} | {loop} |"
            f" {r['macs_it_took']:.2f}x | {r['realisation']:.2f} | {r['prediction_error']:.1%} |"
            f" {r['checks']} | {r['latency_wall_s']:.0f} ({r['table_s']:.0f},"
            f" {r['measure_s']:.0f}) | "
            + (
                f"{r['macs_target_measured']:.3f}x | {r['macs_target_measured'] / r['target']:.2f}"
                if r.get("macs_target_measured")
                else f"{r.get('macs_error', '?')} |"
            )
            + f" | {r.get('macs_wall_s', float('nan')):.0f} |"
        )
    lines += [
        "",
        "Model settings: "
        + "; ".join(
            f"{m}: {' '.join(a for a in args if a != '--set')}" for m, args in MODEL_ARGS.items()
        ),
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in ok:
        label = f"{r['model']} {r['backend']} {r['target']:g}x"
        ax.scatter(r["target"], r["measured"], marker="o", label=label)
        if r.get("macs_target_measured"):
            ax.scatter(r["target"], r["macs_target_measured"], marker="x", color="gray")
    top = max([r["target"] for r in ok] + [2.0]) * 1.15
    ax.plot([1, top], [1, top], "k-", lw=0.8, label="target")
    ax.plot([1, top], [1.1, 1.1 * top], "k:", lw=0.8, label="target + 10%")
    ax.set_xlabel("speed-up target")
    ax.set_ylabel("measured speed-up (o: latency target, x: MACs target)")
    ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models",
        nargs="+",
        default=["resnet18_cifar", "resnet50_cifar", "timm:vit_tiny_patch16_224"],
    )
    ap.add_argument("--backends", nargs="+", default=["ort-cpu", "torch-cpu"])
    ap.add_argument("--targets", nargs="+", type=float, default=[1.5, 2.0])
    ap.add_argument("--method", default="l2")
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    args = ap.parse_args()
    machine = envinfo.machine(envinfo.collect()).replace(" ", "-")
    # (a file name without the CPU's trademark signs: Intel(R)-Xeon(R) -> Intel-Xeon)
    stem = args.out / f"latency-target-{re.sub(r'[(](R|TM)[)]|[^A-Za-z0-9.-]', '', machine)}"
    rows: list[dict[str, Any]] = []  # rows of earlier invocations are kept unless measured again
    if stem.with_suffix(".json").is_file():
        rows = json.loads(stem.with_suffix(".json").read_text())["rows"]
    with tempfile.TemporaryDirectory(prefix="pbkit-latency-target-") as tmp:
        work = Path(tmp)
        for model in args.models:
            for backend in args.backends:
                for target in args.targets:
                    row = one(model, backend, target, args.method, work, work / "cache")
                    same = ("model", "backend", "target", "method")
                    rows = [r for r in rows if any(r[k] != row[k] for k in same)] + [row]
                    print(json.dumps(row), flush=True)
                    atomic_write_json(stem.with_suffix(".json"), {"machine": machine, "rows": rows})
                    atomic_write_text(stem.with_suffix(".md"), markdown(rows, machine))
    plot(rows, stem.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
