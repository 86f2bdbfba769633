"""Leaderboards from records: grouped by model, dataset, scope and target AND by comparison setup
(the base weights' sha256 and the finetuning recipe): rows whose base or recipe differ are never
ranked together (../shared/reference/fairness.md, setup S3.2)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.table import Table

from pbkit.core import record
from pbkit.core.errors import PbkitError
from pbkit.machine import envinfo
from pbkit.report.cells import acc

RECIPE_KEYS = ("epochs", "optimizer", "lr", "momentum", "weight_decay", "nesterov", "schedule", "milestones",
               "step_size", "gamma", "batch_size", "label_smoothing", "seed")


def recipe_hash(rec: record.Record) -> str:
    ft = rec.finetune or {}
    key = {k: ft.get(k) for k in RECIPE_KEYS}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


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
            "machine": envinfo.machine(r.stage_env("bench")), "run_id": r.run_id, "record": str(path),
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
            t.add_row(str(r["rank"] or "-"), r["method"], r["machine"], acc(r["base"]), acc(r["pruned"]), acc(r["finetuned"]),
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
            cells = [str(r["rank"] or "-"), r["method"], r["machine"], acc(r["base"]), acc(r["pruned"]), acc(r["finetuned"]),
                     "-" if r["delta"] is None else f"{r['delta']:+.2f}", f"{r['params_left']:.1%}",
                     f"{r['macs_speedup']:.2f}", *[f"{r['measured'][b]:.2f}" if b in r["measured"] else "-" for b in backends],
                     f"{r['step_time_s']:.3f}", {True: "ok", False: "**FAILED**", None: "-"}[r["parity_ok"]]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
