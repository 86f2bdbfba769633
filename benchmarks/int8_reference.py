"""INT8 after pruning, measured and rendered (issue #36): does pruning's speed-up survive INT8?

    python benchmarks/int8_reference.py --fresh   # run the three benches (~30 min on 2 cores)
    python benchmarks/int8_reference.py           # render from the committed records
    python benchmarks/int8_reference.py --check   # exit 1 when a rendered part is stale

``--fresh`` runs, with ``pbkit run`` into ``results/runs`` (resumed where a run is there;
``--force`` starts again), dense and pruned (2x MACs,
l2, protected scope) at fp32 and INT8 on ``ort-cpu`` and ``ov-cpu``, for: resnet20 on sklearn's
digits (configs/bench/digits-resnet20.yaml: trained, INT8 calibrated on its training split,
accuracy on the engine on its test split), resnet18_cifar and yolov8n (random init, no dataset:
``--calibration synthetic``, latency only). It keeps each record (only the record: no model
files) as ``results/reference/int8/<name>/record.json``. Rendering reads those records alone and
writes ``results/reference/int8/README.md`` (the tables), ``LEADERBOARD.md`` (pbkit's leaderboard
of them), ``pareto.png`` (accuracy on the engine against latency) and the block of
``docs/deployed.md`` between its ``<!-- generated: deployed -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "reference" / "int8"
PAGE = ROOT / "docs" / "deployed.md"
BEGIN = "<!-- generated: deployed (benchmarks/int8_reference.py) -->"
END = "<!-- /generated: deployed -->"

COMMON = [
    "prune.method=l2",
    "prune.scope=protected",
    "prune.speedup=2",
    "bench.backends=[ort-cpu,ov-cpu]",
    "bench.precisions=[fp32,int8]",
    "bench.batches=[1]",
    "bench.sessions=3",  # (a shared 2-core machine: the intervals say how well it went)
]
RUNS: dict[str, tuple[str, list[str]]] = {
    "digits-resnet20": ("configs/bench/digits-resnet20.yaml", []),
    "resnet18_cifar": (
        "configs/bench/resnet18_cifar.yaml",
        ["export.int8.calibration=synthetic"],
    ),
    "yolov8n": (
        "configs/bench/yolov8.yaml",
        ["export.int8.calibration=synthetic", "export.int8.images=32"],
    ),
}


def fresh(names: list[str], force: bool) -> None:
    """Run each bench into results/runs (pbkit's scratch area: a run interrupted or failed is
    resumed, not made again; ``force`` starts it again) and keep its record."""
    pbkit = Path(sys.executable).with_name("pbkit")
    for name in names:
        config, sets = RUNS[name]
        cmd = [str(pbkit), "run", config, "--set", "out=results/runs", "--json"]
        cmd += ["--force"] if force else []
        for s in [*COMMON, *sets]:
            cmd += ["--set", s]
        print(f"{name}: {' '.join(cmd)}", file=sys.stderr)
        done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{name}: pbkit exited with {done.returncode}")
        run_dir = Path(json.loads(done.stdout)["run_dir"])
        dest = OUT / name / "record.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "record.json", dest)
        print(f"{name}: {dest.relative_to(ROOT)}", file=sys.stderr)


def _records() -> list[tuple[str, Path, Any]]:
    from pbkit.core import record

    out = []
    for name in RUNS:
        path = OUT / name / "record.json"
        if path.is_file():
            out.append((name, path, record.read(path)))
    return out


def _ci(ci: tuple[float, float] | None) -> str:
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def verdict(fp32: Any, int8: Any) -> str:
    """How pruning's speed-up at fp32 fares at INT8 on one runtime, from the two intervals."""
    return (
        f"{fp32.speedup:.2f}x{_ci(fp32.speedup_ci)} at fp32, "
        f"{int8.speedup:.2f}x{_ci(int8.speedup_ci)} at INT8: {outcome(fp32, int8)}"
    )


def outcome(fp32: Any, int8: Any) -> str:
    lo, hi = int8.speedup_ci or (int8.speedup, int8.speedup)
    if hi < 1.0:
        what = "reverses: the pruned INT8 model is slower than the dense INT8 one"
    elif lo <= 1.0:
        what = "vanishes: not distinguishable from no speed-up"
    else:
        flo, fhi = fp32.speedup_ci or (fp32.speedup, fp32.speedup)
        if hi < flo:
            what = "survives, smaller"
        elif lo > fhi:
            what = "survives, larger"
        else:
            what = "survives, its interval overlapping the fp32 one"
    return what


def _acc(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def run_block(name: str, path: Path, rec: Any) -> list[str]:
    from pbkit.report import deployed

    pts = deployed.points(rec)
    m = rec.method
    data = rec.dataset.name if rec.dataset else "no dataset"
    lines = [
        f"### {rec.model.name} ({data})",
        "",
        f"{m.key}, {m.scope} scope, {m.achieved_speedup:.2f}x fewer MACs;"
        f" {deployed.calibration_line(rec) or 'no INT8'}. Record:"
        f" `{path.relative_to(ROOT)}`.",
        "",
    ]
    has_acc = any(p.dense_acc is not None for p in pts)
    head = "| backend | precision | dense ms | pruned ms | pruned vs dense | pruned vs dense fp32 |"
    sep = "|---|---|---:|---:|---:|---:|"
    if has_acc:
        metric = next(p.metric for p in pts if p.metric)
        head += f" {metric} on the engine, dense / pruned | PyTorch | top-1 agreement |"
        sep += "---:|---:|---:|"
    lines += [head, sep]
    for p in sorted(pts, key=lambda p: (p.backend, p.precision != "fp32")):
        vs = (
            f"{p.vs_dense_fp32:.2f}x{_ci(p.vs_dense_fp32_ci)}"
            if p.vs_dense_fp32 is not None
            else "-"
        )
        row = (
            f"| {p.backend} | {p.precision} | {p.dense_ms:.3f} | {p.pruned_ms:.3f} |"
            f" {p.speedup:.2f}x{_ci(p.speedup_ci)} | {vs} |"
        )
        if has_acc:
            agree = " / ".join(
                "-" if a is None else f"{a:.1f}%" for a in (p.dense_agreement, p.pruned_agreement)
            )
            row += (
                f" {_acc(p.dense_acc)} / {_acc(p.pruned_acc)} |"
                f" {_acc(p.dense_torch)} / {_acc(p.pruned_torch)} | {agree} |"
            )
        lines.append(row)
    lines.append("")
    by = {(p.backend, p.precision): p for p in pts}
    for backend in sorted({p.backend for p in pts}):
        f32, i8 = by.get((backend, "fp32")), by.get((backend, "int8"))
        if f32 is not None and i8 is not None:
            lines.append(f"- **{backend}**: pruning's speed-up {verdict(f32, i8)}.")
    bad = deployed.failures(rec)
    if bad:
        lines.append(f"- INT8 models that could not be made: {'; '.join(bad)}.")
    load = (rec.bench.cpu_state or {}) if rec.bench else {}
    before = (load.get("before") or {}).get("loadavg_1m")
    after = (load.get("after") or {}).get("loadavg_1m")
    host = (rec.bench.host or {}) if rec.bench else {}
    if before is not None:
        others = load.get("others_share")  # (1.7: other processes' share of the CPU time)
        state = (
            "the machine was shared"
            if others is None or load.get("busy")
            else f"other processes took {others:.1%} of the CPU time while it measured"
        )
        lines.append(
            f"- Measured on {host.get('cpu', 'a CPU')}, {host.get('cores_logical', '?')} cores"
            f" ({rec.bench.threads} measuring thread(s), {rec.bench.sessions} fresh sessions per"
            f" point); {state}: load average {before:g} before the bench and"
            f" {after:g} after it, steal {100 * (load.get('steal_share') or 0):.1f}%."
        )
    lines.append("")
    return lines


def block() -> str:
    recs = _records()
    if not recs:
        return "No records yet: `python benchmarks/int8_reference.py --fresh` measures them.\n"
    from pbkit.report import deployed

    lines = ["<!-- rendered from the records under results/reference/int8/; do not edit -->", ""]
    lines += [
        "**In short**, pruning's measured speed-up at INT8, against its speed-up at fp32:",
        "",
    ]
    for backend in ("ort-cpu", "ov-cpu"):
        parts = []
        for _, _, rec in recs:
            by = {(p.backend, p.precision): p for p in deployed.points(rec)}
            f32, i8 = by.get((backend, "fp32")), by.get((backend, "int8"))
            if f32 is not None and i8 is not None:
                parts.append(
                    f"{rec.model.name} {f32.speedup:.2f}x -> {i8.speedup:.2f}x"
                    f" ({outcome(f32, i8).split(':')[0]})"
                )
        if parts:
            lines.append(f"- **{backend}**: {'; '.join(parts)}.")
    lines.append("")
    for name, path, rec in recs:
        lines += run_block(name, path, rec)
    return "\n".join(lines).rstrip("\n") + "\n"


def page_text(current: str, body: str) -> str:
    if BEGIN not in current or END not in current:
        raise SystemExit(f"{PAGE.relative_to(ROOT)} has no {BEGIN} ... {END} markers")
    head, rest = current.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}{END}{tail}"


def expected() -> dict[Path, str]:
    """What rendering writes (the text files; the plot is written, not compared)."""
    from pbkit.report import leaderboard as rep

    body = block()
    out = {PAGE: page_text(PAGE.read_text(encoding="utf-8"), body)}
    recs = _records()
    if recs:
        out[OUT / "README.md"] = (
            "# INT8 after pruning: the reference records\n\n"
            "Rendered by `python benchmarks/int8_reference.py` from the records below; what they"
            " say is discussed in [docs/deployed.md](../../../docs/deployed.md).\n\n" + body
        )
        rows = rep.rows([(p, r) for _, p, r in recs])
        out[OUT / "LEADERBOARD.md"] = rep.markdown(rows) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fresh", nargs="*", metavar="NAME", help="measure again (all, or NAMEs)")
    ap.add_argument("--force", action="store_true", help="with --fresh: start the runs again")
    ap.add_argument("--check", action="store_true", help="exit 1 when a rendered part is stale")
    args = ap.parse_args(argv)
    if args.fresh is not None:
        fresh(args.fresh or list(RUNS), args.force)
    files = expected()
    if args.check:
        stale = [p for p, t in files.items() if not p.is_file() or p.read_text() != t]
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)}", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    recs = _records()
    if any(r.engine_accuracy for _, _, r in recs):
        from pbkit.report import plots

        out = plots.plot_deployed([r for _, _, r in recs], OUT / "pareto.png")
        print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
