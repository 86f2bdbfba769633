"""The YOLO families table (results/perf/yolo-families.md and .json): the n variant of each family
(YOLOv8, YOLO11, YOLO26) and task (detect, -seg, -pose) pruned to 2x MACs in the protected scope
with l1, exported to ONNX with parity of the raw head outputs, and dense vs pruned measured on
torch-cpu and ort-cpu (quick bench: each speed-up with its 95% interval).

    .venv/bin/python benchmarks/yolo_families.py [--imgsz 320] [--steps 40] [--out results/perf]
    .venv/bin/python benchmarks/yolo_families.py --render   # the table again from the json

Every figure comes from the runs' records (kept under build/yolo-families/runs); the json holds
the rows the table is made from."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

NAMES = [f + "n" + v for f in ("yolov8", "yolo11", "yolo26") for v in ("", "-seg", "-pose")]
BACKENDS = ("torch-cpu", "ort-cpu")


def run_one(name: str, imgsz: int, steps: int, out: Path) -> dict[str, Any]:
    from pbkit import stages
    from pbkit.core import config

    cfg = config.load(
        None,
        [
            f"out={out}",
            f"model.name={name}",
            f"model.input_size={imgsz}",
            "prune.method=l1",
            "prune.scope=protected",
            "prune.speedup=2.0",
            f"prune.iterative_steps={steps}",
            "bench.quick=true",
            f"bench.backends=[{','.join(BACKENDS)}]",
            "bench.batches=[1]",
        ],
    )
    t0 = time.perf_counter()
    result = stages.run(cfg, quiet=True)
    return row(name, result.record, str(result.run_dir), time.perf_counter() - t0)


def row(name: str, rec: Any, run_dir: str, wall_s: float) -> dict[str, Any]:
    c, m = rec.counts, rec.method
    notes = (rec.model.notes or {}).get("ultralytics", {})
    speed: dict[str, Any] = {}
    for p in rec.latency:
        if p.variant == "pruned" and p.backend in BACKENDS and p.batch == 1:
            speed[p.backend] = {
                "speedup": p.speedup_vs_dense,
                "ci": p.speedup_ci,
                "dense_ms": next(
                    (
                        q.median_ms
                        for q in rec.latency
                        if q.variant == "dense" and q.backend == p.backend and q.batch == 1
                    ),
                    None,
                ),
                "pruned_ms": p.median_ms,
            }
    return {
        "name": name,
        "task": notes.get("task"),
        "end2end": notes.get("end2end"),
        "imgsz": c.input_size,
        "params_base": c.params_base,
        "params_pruned": c.params_pruned,
        "macs_base": c.macs_base,
        "macs_pruned": c.macs_pruned,
        "macs_speedup": c.macs_base / max(c.macs_pruned, 1),
        "steps": m.steps,
        "prune_time_s": m.prune_time_s,
        "held_fixed": list(m.held_fixed),
        "parity": [
            {"variant": p.variant, "passed": p.passed, "max_abs": p.max_abs, "outputs": p.outputs}
            for p in rec.parity
            if p.backend == "ort-cpu"
        ],
        "speed": speed,
        "run_dir": run_dir,
        "wall_s": wall_s,
    }


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _m(v: float) -> str:
    return f"{v / 1e6:.2f} M"


def _g(v: float) -> str:
    return f"{v / 1e9:.2f} G"


def render(data: dict[str, Any]) -> str:
    rows = data["rows"]
    imgsz = rows[0]["imgsz"] if rows else data.get("imgsz")
    lines = [
        "# YOLO families: 2x MACs in the protected scope (l1), measured",
        "",
        f"The n variant of each family and task, built from ultralytics' own yamls (random init),"
        f" pruned with `l1` in the protected scope to 2x MACs at {imgsz}x{imgsz}, exported to"
        " ONNX with parity of the raw head outputs (ort-cpu, fp32), and measured dense vs pruned"
        " at batch 1 (quick bench). Made by `benchmarks/yolo_families.py` from the runs' records;"
        " the rows are in `yolo-families.json`.",
        "",
        "| model | task | params dense -> pruned | MACs dense -> pruned | steps | prune time"
        " | parity (ort-cpu, max abs) | torch-cpu speed-up [95% CI] | ort-cpu speed-up [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | | failed: {r['error']} | | | | | | |")
            continue
        latest = {p["variant"]: p for p in r["parity"]}  # (the bench stage checks it again)
        par = ", ".join(
            f"{p['variant']} {'ok' if p['passed'] else 'FAIL'} {p['max_abs']:.1e}"
            if p["max_abs"] is not None
            else f"{p['variant']} FAIL"
            for p in latest.values()
        )
        cells = []
        for b in BACKENDS:
            s = r["speed"].get(b)
            if not s or s["speedup"] is None:
                cells.append("-")
                continue
            ci = s["ci"]
            cells.append(
                f"{s['speedup']:.2f}x"
                + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
                + f" ({s['dense_ms']:.1f} -> {s['pruned_ms']:.1f} ms)"
            )
        task = r["task"] + (" (NMS-free)" if r.get("end2end") else "")
        lines.append(
            f"| {r['name']} | {task} | {_m(r['params_base'])} -> {_m(r['params_pruned'])}"
            f" | {_g(r['macs_base'])} -> {_g(r['macs_pruned'])} ({r['macs_speedup']:.2f}x)"
            f" | {r['steps']} | {r['prune_time_s']:.0f} s | {par} | {cells[0]} | {cells[1]} |"
        )
    done = {r["name"] for r in rows}
    lines += [f"| {n} | | not run yet | | | | | | |" for n in NAMES if n not in done]
    m = data.get("machine", {})
    lines += [
        "",
        "Notes:",
        "",
        f"- Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores. Load average (1 min)"
        " before / after the run that made each row: "
        + ", ".join(
            f"{r['name']} {r.get('load_before', '?')} / {r.get('load_after', '?')}" for r in rows
        )
        + ". **The machine was shared with other helpers' jobs while this ran**: latencies and"
        " prune times are noisy, the intervals say how well each speed-up is known under that"
        " load; rerun on a quiet machine for reference figures.",
        "- Quick bench (`bench.quick=true`): fewer samples than the default protocol.",
        "- YOLO26 runs end to end (NMS-free, top-300); its parity compares the one-to-one and"
        " one-to-many raw head outputs and the top-k scores (not which of two equal scores comes"
        " first). Held fixed: the C2PSA / attention-C3k2 attention blocks (see each record's"
        " `model.notes.ultralytics.held`).",
        "- Random init: MACs, parameters, parity and latency do not depend on the weights;"
        " accuracy does and is not in this table.",
    ]
    return "\n".join(lines) + "\n"


def merge(data: dict[str, Any], new: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``new`` in place of the row of the same name (every other row kept, in the
    table's order) and ``machine`` the latest run's. A row that has no load average of its own
    (written before rows kept theirs) takes the one of the run that made it, the file's machine
    until now, so that a later run's load is never shown for it."""
    old_machine = data.get("machine", {})
    rows = []
    for r in data.get("rows", []):
        if r["name"] == new["name"]:
            continue
        if "load_before" not in r and "load_before" in old_machine:
            r = {**r, "load_before": old_machine["load_before"]}
            r["load_after"] = old_machine.get("load_after")
        rows.append(r)
    rows.append(new)
    rows.sort(key=lambda x: NAMES.index(x["name"]) if x["name"] in NAMES else len(NAMES))
    return {**data, "rows": rows, "machine": machine}


def main() -> None:
    from pbkit.core import fileio

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default="results/perf")
    ap.add_argument("--runs", default="build/yolo-families/runs")
    ap.add_argument("--names", nargs="*", default=NAMES, help="the rows to (re)make; others kept")
    ap.add_argument("--render", action="store_true", help="only render the table from the json")
    args = ap.parse_args()
    out = Path(args.out)
    js, md = out / "yolo-families.json", out / "yolo-families.md"
    if args.render:
        fileio.atomic_write_text(md, render(json.loads(js.read_text())))
        return
    data: dict[str, Any] = json.loads(js.read_text()) if js.is_file() else {"rows": []}
    for name in args.names:
        before = os.getloadavg()[0]
        try:
            r = run_one(name, args.imgsz, args.steps, Path(args.runs))
        except Exception as e:  # one failing family is a row that says so
            r = {"name": name, "error": str(e).splitlines()[0][:200], "imgsz": args.imgsz}
        after = os.getloadavg()[0]
        r["load_before"], r["load_after"] = round(before, 2), round(after, 2)
        machine = {
            "cpu": _cpu(),
            "cores": os.cpu_count(),
            "load_before": round(before, 2),
            "load_after": round(after, 2),
        }
        data = merge(data, r, machine)
        print(json.dumps({k: r.get(k) for k in ("name", "macs_speedup", "error")}), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_text(js, json.dumps(data, indent=1) + "\n")
        fileio.atomic_write_text(md, render(data))


if __name__ == "__main__":
    main()
