"""Reporting from records only: the per-run table, leaderboards, and plots.

Leaderboards group rows by (model, dataset, scope, target) AND by comparison setup (the base
weights' sha256 and the finetuning recipe): rows whose base or recipe differ are never ranked
together (../shared/reference/fairness.md, setup S3.2).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.table import Table

from pbkit import envinfo, record
from pbkit.errors import PbkitError

RECIPE_KEYS = ("epochs", "optimizer", "lr", "momentum", "weight_decay", "nesterov", "schedule", "milestones",
               "step_size", "gamma", "batch_size", "label_smoothing", "seed")


def _si(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def _acc(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _delta(base: float | None, after: float | None) -> str:
    return "-" if base is None or after is None else f"{after - base:+.2f} points"


def recipe_hash(rec: record.Record) -> str:
    ft = rec.finetune or {}
    key = {k: ft.get(k) for k in RECIPE_KEYS}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_table(rec: record.Record) -> Table:
    """What ``pbkit run`` / ``bench`` print: dense vs pruned, achieved vs measured speed-up."""
    m, c = rec.method, rec.counts
    t = Table(title=f"{rec.model.name} · {m.key} · {m.scope} · target {m.target_speedup:g}x", title_justify="left")
    t.add_column("")
    t.add_column("dense", justify="right")
    t.add_column("pruned", justify="right")
    t.add_column("speed-up / change", justify="right")
    t.add_row("params", _si(c.params_base), _si(c.params_pruned), f"{c.params_base / max(c.params_pruned, 1):.2f}x fewer")
    t.add_row(f"MACs @{c.input_size}px", _si(c.macs_base), _si(c.macs_pruned),
              f"{m.achieved_speedup:.3f}x achieved ({m.steps} steps)")
    a = rec.accuracy
    if a.metric is not None and rec.dataset is not None:
        name = f"{a.metric} ({rec.dataset.name})"
        t.add_row(f"{name} after pruning", _acc(a.base), _acc(a.pruned), _delta(a.base, a.pruned))
        if a.finetuned is not None:
            epochs = (rec.finetune or {}).get("epochs", "?")
            t.add_row(f"{name} finetuned {epochs} ep", _acc(a.base), _acc(a.finetuned), _delta(a.base, a.finetuned))
    al = c.channel_alignment
    if al and al.get("pruned_layers"):
        t.add_row(f"pruned widths multiple of {al['multiple']}", "", f"{al['aligned_layers']}/{al['pruned_layers']} layers",
                  f"{al['share']:.0%} aligned" + (" (GPU targets: prune.round_to=8)" if al["share"] < 1 else ""))
    pts = {(p.backend, p.precision, p.batch, p.variant): p for p in rec.latency}
    for key in dict.fromkeys((p.backend, p.precision, p.batch) for p in rec.latency):
        d, p = pts.get((*key, "dense")), pts.get((*key, "pruned"))
        if d is None or p is None:
            continue
        backend, precision, batch = key
        cov = max(d.cov, p.cov)
        tries = max(d.attempts, p.attempts)
        again = f", {tries} tries" if tries > 1 else ""
        throttle = sorted(set(d.throttle_reasons) | set(p.throttle_reasons))
        why = f"cov {cov:.1%}" + (f", GPU throttle: {', '.join(throttle)}" if throttle else "")
        flag = f" (cov {cov:.1%}{again})" if d.stable and p.stable else f" [yellow](unstable: {why}{again})[/]"
        quick = " quick" if p.quick else ""
        t.add_row(f"latency {backend} {precision} b{batch}{quick}", f"{d.median_ms:.3f} ms", f"{p.median_ms:.3f} ms",
                  f"{p.speedup_vs_dense or 0:.2f}x measured{flag}")
        if d.gpu_compute and p.gpu_compute:
            t.add_row("  GPU compute (CUDA events)", f"{d.gpu_compute['median_ms']:.3f} ms",
                      f"{p.gpu_compute['median_ms']:.3f} ms", f"{p.gpu_speedup_vs_dense or 0:.2f}x")
        if d.memory and p.memory and d.device == "cuda":
            t.add_row("  GPU memory (NVML peak - before)", _mem(d.memory), _mem(p.memory), "")
    for backend, precision in sorted({(p.backend, p.precision) for p in rec.parity}):
        mine = [p for p in rec.parity if (p.backend, p.precision) == (backend, precision)]
        cells = {v: max((p for p in mine if p.variant == v), key=lambda p: p.max_abs, default=None)
                 for v in ("dense", "pruned")}
        gate = f"fp16 gate (cosine >= {mine[0].cosine_min:g})" if precision == "fp16" and mine[0].cosine_min else "fp32 gate"
        t.add_row(f"parity {backend} {precision} (max abs)", _parity_cell(cells["dense"]), _parity_cell(cells["pruned"]),
                  gate if all(p.passed for p in mine) else "[bold red]parity FAILED[/]")
    return t


def _mem(m: dict[str, Any]) -> str:
    before, peak = m.get("nvml_used_before_bytes"), m.get("nvml_used_peak_bytes")
    if before is None or peak is None:
        torch_peak = m.get("torch_peak_allocated_bytes")
        return f"{torch_peak / 2**20:.0f} MiB torch" if torch_peak is not None else "-"
    return f"{(peak - before) / 2**20:.0f} MiB"


def _parity_cell(p: record.Parity | None) -> str:
    if p is None:
        return "-"
    return f"ok {p.max_abs:.1e}" if p.passed else f"[bold red]FAILED {p.max_abs:.1e}[/]"


# ------------------------------------------------------------------------------------------
# leaderboards


def find_records(root: str | Path) -> list[tuple[Path, record.Record]]:
    root = Path(root).expanduser()
    if not root.exists():
        raise PbkitError(f"folder {str(root)!r} not found")
    paths = [root] if root.is_file() else sorted(p for p in root.rglob(record.RECORD_NAME)
                                                  if not any(part.startswith(".tmp-") for part in p.parts))
    return [(p, record.read(p)) for p in paths]


def point_label(p: record.LatencyPoint) -> str:
    """``backend@bN``, with ``/fp16`` after the backend for non-fp32 points."""
    return f"{p.backend}{'' if p.precision == 'fp32' else '/' + p.precision}@b{p.batch}"


def _measured(rec: record.Record) -> dict[str, float]:
    """Measured speed-up per backend and precision, at its smallest batch."""
    out = {}
    for p in rec.latency:
        same = [q.batch for q in rec.latency if (q.backend, q.precision) == (p.backend, p.precision)]
        if p.variant == "pruned" and p.batch == min(same):
            out[point_label(p)] = round(p.speedup_vs_dense or 0.0, 3)
    return out


def rows(records: Iterable[tuple[Path, record.Record]]) -> list[dict[str, Any]]:
    out = []
    for path, r in records:
        a = r.accuracy
        after = a.finetuned if a.finetuned is not None else a.pruned
        out.append({
            "model": r.model.name, "dataset": r.dataset.name if r.dataset else None, "scope": r.method.scope,
            "target": r.method.target_speedup, "base_sha256": r.model.weights_sha256[:12], "recipe": recipe_hash(r),
            "method": r.method.key, "metric": a.metric, "base": a.base, "pruned": a.pruned, "finetuned": a.finetuned,
            "delta": (after - a.base) if after is not None and a.base is not None else None,
            "params_left": r.counts.params_pruned / max(r.counts.params_base, 1),
            "macs_speedup": round(r.method.achieved_speedup, 3), "measured": _measured(r),
            "step_time_s": round(r.method.step_time_s, 4),
            "parity_ok": all(p.passed for p in r.parity) if r.parity else None,
            "machine": envinfo.machine(r.env), "run_id": r.run_id, "record": str(path),
        })
    return out


def leaderboard(rs: list[dict[str, Any]]) -> list[tuple[tuple[Any, ...], list[dict[str, Any]]]]:
    """Groups, each ranked: by accuracy after finetuning (else after pruning), ties by measured speed-up."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rs:
        key = (r["model"], r["dataset"] or "-", r["scope"], r["target"], r["base_sha256"], r["recipe"])
        groups.setdefault(key, []).append(r)
    result = []
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        g = groups[key]

        def score(r: dict[str, Any]) -> tuple[float, float]:
            acc = r["finetuned"] if r["finetuned"] is not None else r["pruned"]
            speed = max(r["measured"].values()) if r["measured"] else r["macs_speedup"]
            return (acc if acc is not None else float("-inf"), speed)

        g.sort(key=score, reverse=True)
        for i, r in enumerate(g, 1):
            r["rank"] = i if score(r)[0] != float("-inf") else None
        result.append((key, g))
    return result


def render(rs: list[dict[str, Any]], fmt: str) -> str | list[Table]:
    board = leaderboard(rs)
    if fmt == "json":
        return json.dumps([{"group": dict(zip(("model", "dataset", "scope", "target", "base_sha256", "recipe"), k, strict=True)),
                            "rows": g} for k, g in board], indent=2)
    backends = sorted({b for r in rs for b in r["measured"]})
    if fmt == "csv":
        buf = io.StringIO()
        cols = ["model", "dataset", "scope", "target", "base_sha256", "recipe", "rank", "method", "metric", "base",
                "pruned", "finetuned", "delta", "params_left", "macs_speedup", *[f"measured:{b}" for b in backends],
                "step_time_s", "parity_ok", "machine", "run_id", "record"]
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for _, g in board:
            for r in g:
                w.writerow({**r, **{f"measured:{b}": r["measured"].get(b) for b in backends}})
        return buf.getvalue()
    tables = []
    for (model, dataset, scope, target, base, recipe), g in board:
        t = Table(title=f"{model} · {dataset} · {scope} · {target:g}x   (base {base}, finetune recipe {recipe})",
                  title_justify="left")
        for col in ("rank", "method", "machine", "base", "pruned", "finetuned", "delta", "params left", "MACs x",
                    *[f"measured x {b}" for b in backends], "step s", "parity"):
            t.add_column(col, justify="left" if col == "method" else "right")
        for r in g:
            t.add_row(str(r["rank"] or "-"), r["method"], r["machine"], _acc(r["base"]), _acc(r["pruned"]), _acc(r["finetuned"]),
                      "-" if r["delta"] is None else f"{r['delta']:+.2f}", f"{r['params_left']:.1%}",
                      f"{r['macs_speedup']:.2f}", *[f"{r['measured'][b]:.2f}" if b in r["measured"] else "-" for b in backends],
                      f"{r['step_time_s']:.3f}",
                      {True: "ok", False: "[bold red]FAILED[/]", None: "-"}[r["parity_ok"]])
        tables.append(t)
    return tables


def markdown(rs: list[dict[str, Any]]) -> str:
    board = leaderboard(rs)
    backends = sorted({b for r in rs for b in r["measured"]})
    lines = []
    for (model, dataset, scope, target, base, recipe), g in board:
        lines += [f"### {model} · {dataset} · {scope} · {target:g}x", "",
                  f"Same base weights (sha256 {base}…) and finetune recipe ({recipe}) for every row.", ""]
        head = ["rank", "method", "machine", "base", "pruned", "finetuned", "delta", "params left", "MACs x",
                *[f"measured x {b}" for b in backends], "step s", "parity"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in g:
            cells = [str(r["rank"] or "-"), r["method"], r["machine"], _acc(r["base"]), _acc(r["pruned"]), _acc(r["finetuned"]),
                     "-" if r["delta"] is None else f"{r['delta']:+.2f}", f"{r['params_left']:.1%}",
                     f"{r['macs_speedup']:.2f}", *[f"{r['measured'][b]:.2f}" if b in r["measured"] else "-" for b in backends],
                     f"{r['step_time_s']:.3f}", {True: "ok", False: "**FAILED**", None: "-"}[r["parity_ok"]]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rs: list[dict[str, Any]], path: str | Path) -> Path:
    """MACs speed-up (what papers report) against measured speed-up, per backend, one panel per
    model and dataset: the distance from the diagonal is what MAC counts do not tell."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pbkit.fileio import atomic_write

    backends = sorted({b for r in rs for b in r["measured"]})
    if not backends:
        raise PbkitError("no latency measurements in these records to plot (run `pbkit bench` first)")
    panels = sorted({(r["model"], r["dataset"] or "data-free") for r in rs if r["measured"]})
    cols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.4 * nrows), dpi=110, squeeze=False)
    colors = {b: f"C{i}" for i, b in enumerate(backends)}
    for ax, (model, dataset) in zip(axes.flat, panels, strict=False):
        mine = [r for r in rs if r["model"] == model and (r["dataset"] or "data-free") == dataset]
        top = 1.0
        for b in backends:
            pts = [(r["macs_speedup"], r["measured"][b], r["method"]) for r in mine if b in r["measured"]]
            if not pts:
                continue
            top = max(top, *(max(x, y) for x, y, _ in pts))
            ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], color=colors[b], label=b, alpha=0.8)
            for x, y, method in pts:
                ax.annotate(method, (x, y), fontsize=7, alpha=0.75, xytext=(4, 0), textcoords="offset points",
                            va="center")
        ax.plot([1, top * 1.1], [1, top * 1.1], "k--", lw=0.8, label="measured = MACs")
        ax.axhline(1.0, color="grey", lw=0.6)
        ax.set_xlim(0.9, top * 1.15)
        ax.set_ylim(0.0, top * 1.15)
        ax.set_title(f"{model} · {dataset}", fontsize=10)
        ax.set_xlabel("MACs speed-up (base / pruned)")
        ax.set_ylabel("measured speed-up (dense / pruned latency)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Counted vs measured speed-up (batch 1 unless stated)", fontsize=11)
    fig.tight_layout()
    out = atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------------------
# across machines: the same pruned model's measured speed-up on each GPU / CPU


def machine_rows(records: Iterable[tuple[Path, record.Record]]) -> list[dict[str, Any]]:
    """One row per measured point (pruned vs dense, same session), with the machine it ran on."""
    out = []
    for path, r in records:
        dense = {(p.backend, p.precision, p.batch): p for p in r.latency if p.variant == "dense"}
        for p in r.latency:
            d = dense.get((p.backend, p.precision, p.batch))
            if p.variant != "pruned" or d is None:
                continue
            out.append({
                "model": r.model.name, "method": r.method.key, "scope": r.method.scope,
                "target": r.method.target_speedup, "macs_speedup": round(r.method.achieved_speedup, 3),
                "pruned_sha256": (r.artifacts.get("pruned") or {}).get("sha256", "")[:12],
                "backend": p.backend, "precision": p.precision, "batch": p.batch,
                "machine": envinfo.machine(r.env), "dense_ms": d.median_ms, "pruned_ms": p.median_ms,
                "speedup": p.speedup_vs_dense, "gpu_speedup": p.gpu_speedup_vs_dense,
                "stable": d.stable and p.stable, "quick": p.quick, "measured_utc": (r.bench or {}).get("measured_utc"),
                "run_id": r.run_id, "record": str(path),
            })
    return out


def across_machines(rows_: list[dict[str, Any]]) -> tuple[list[str], dict[tuple[Any, ...], dict[str, dict[str, Any]]]]:
    """Machines (columns) and, per (model, method, scope, target, backend, precision, batch), the
    newest row of each machine. Ratios are compared, never milliseconds across machines."""
    machines = sorted({r["machine"] for r in rows_})
    table: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for r in sorted(rows_, key=lambda r: str(r["measured_utc"])):
        key = (r["model"], r["method"], r["scope"], r["target"], r["backend"], r["precision"], r["batch"])
        table.setdefault(key, {})[r["machine"]] = r  # newest wins
    return machines, dict(sorted(table.items(), key=lambda kv: tuple(str(x) for x in kv[0])))


def _cell(r: dict[str, Any] | None, rich: bool) -> str:
    if r is None:
        return "-"
    text = f"{r['speedup'] or 0:.2f}x ({r['dense_ms']:.3f} -> {r['pruned_ms']:.3f} ms)"
    if not r["stable"]:
        text += " [yellow]unstable[/]" if rich else " unstable"
    return text


def render_machines(rows_: list[dict[str, Any]], fmt: str) -> str | Table:
    machines, table = across_machines(rows_)
    if fmt == "json":
        return json.dumps({"machines": machines, "rows": rows_}, indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows_[0]))
        w.writeheader()
        w.writerows(rows_)
        return buf.getvalue()
    head = ["model", "method", "scope", "target", "MACs x", "backend", "precision", "batch", *machines]
    body = [[str(k[0]), str(k[1]), str(k[2]), f"{k[3]:g}x", f"{next(iter(v.values()))['macs_speedup']:.2f}",
             str(k[4]), str(k[5]), str(k[6]), *[_cell(v.get(m), fmt == "table") for m in machines]]
            for k, v in table.items()]
    if fmt == "md":
        lines = ["Measured speed-up (dense / pruned median latency, same machine, same session) per machine; "
                 "compare the ratios across machines, not the milliseconds.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines) + "\n"
    t = Table(title="measured speed-up across machines (dense / pruned, each measured on one machine)",
              title_justify="left")
    for c in head:
        t.add_column(c, justify="left" if c in ("model", "method", "backend") else "right")
    for row in body:
        t.add_row(*row)
    return t


def plot_machines(rows_: list[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars: per measured point, one bar per machine; the dashed mark is the MACs speed-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pbkit.fileio import atomic_write

    machines, table = across_machines(rows_)
    if not table:
        raise PbkitError("no latency measurements in these records to compare (run `pbkit bench` first)")
    keys = list(table)
    width = 0.8 / len(machines)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(keys) * max(len(machines), 2) / 2 + 2), 4.6), dpi=110)
    for i, m in enumerate(machines):
        xs = [k for k, key in enumerate(keys) if m in table[key]]
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], [table[keys[x]][m]["speedup"] or 0 for x in xs],
               width=width, label=m, color=f"C{i}")
    for x, key in enumerate(keys):
        macs = next(iter(table[key].values()))["macs_speedup"]
        ax.hlines(macs, x - 0.45, x + 0.45, colors="k", linestyles="--", lw=0.9,
                  label="MACs speed-up" if x == 0 else None)
    ax.axhline(1.0, color="grey", lw=0.6)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{k[0]}\n{k[1]} {k[4]}\n{k[5]} b{k[6]}" for k in keys], fontsize=7)
    ax.set_ylabel("measured speed-up (dense / pruned)")
    ax.set_title("Measured speed-up of the same pruning across machines", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return out
