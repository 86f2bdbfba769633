"""Across machines: the same pruned model's measured speed-up on each GPU or CPU, one column per
machine. Ratios measured on one machine in one session are compared, never milliseconds."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from pbkit.core import intervals, record
from pbkit.machine import envinfo
from pbkit.report import safe, setups


@dataclass(kw_only=True)
class MachineRow:
    """One measured point of one record: the pruned model against the dense one, same session,
    and the machine that measured it."""

    model: str
    method: str
    scope: str
    target: float
    macs_speedup: float
    pruned_sha256: str  # the pruned model file's, short: the same pruning on every machine
    backend: str
    precision: str
    batch: int
    machine: str
    dense_ms: float
    pruned_ms: float
    speedup: float | None
    speedup_ci: list[float] | None
    gpu_speedup: float | None
    stable: bool
    quick: bool
    measured_utc: str | None
    run_id: str
    record: str
    dense_p90_ms: float | None = None
    pruned_p90_ms: float | None = None
    host: str = ""  # the machine's host name: several machines of one kind are told apart


# (model, method, scope, target, backend, precision, batch): one point of one pruning
PointKey = tuple[str, str, str, float, str, str, int]


def machine_rows(records: Iterable[tuple[Path, record.Record]]) -> list[MachineRow]:
    """One row per measured point (pruned vs dense, same session), with the machine it ran on."""
    out = []
    for path, r in records:
        dense = {(p.backend, p.precision, p.batch): p for p in r.latency if p.variant == "dense"}
        for p in r.latency:
            d = dense.get((p.backend, p.precision, p.batch))
            if p.variant != "pruned" or d is None:
                continue
            out.append(
                MachineRow(
                    model=r.model.name,
                    method=r.method.key,
                    scope=setups.scope_of(r),
                    target=r.method.target_speedup,
                    macs_speedup=round(r.method.achieved_speedup, 3),
                    pruned_sha256=(r.artifacts.get("pruned") or {}).get("sha256", "")[:12],
                    backend=p.backend,
                    precision=p.precision,
                    batch=p.batch,
                    machine=envinfo.machine(r.stage_env("bench")),
                    dense_ms=d.median_ms,
                    pruned_ms=p.median_ms,
                    speedup=p.speedup_vs_dense,
                    speedup_ci=p.speedup_ci,
                    gpu_speedup=p.gpu_speedup_vs_dense,
                    stable=d.stable and p.stable,
                    quick=p.quick,
                    measured_utc=r.bench.measured_utc if r.bench is not None else None,
                    run_id=r.run_id,
                    record=str(path),
                    dense_p90_ms=d.p90_ms,
                    pruned_p90_ms=p.p90_ms,
                    host=str((r.stage_env("bench").get("host") or {}).get("hostname") or ""),
                )
            )
    return out


def across_machines(
    rows_: list[MachineRow],
) -> tuple[list[str], dict[PointKey, dict[str, MachineRow]]]:
    """Machines (columns) and, per (model, method, scope, target, backend, precision, batch), the
    newest row of each machine. Ratios are compared, never milliseconds across machines."""
    machines = sorted({r.machine for r in rows_})
    table: dict[PointKey, dict[str, MachineRow]] = {}
    for r in sorted(rows_, key=lambda r: str(r.measured_utc)):
        key = (r.model, r.method, r.scope, r.target, r.backend, r.precision, r.batch)
        table.setdefault(key, {})[r.machine] = r  # newest wins
    return machines, dict(sorted(table.items(), key=lambda kv: tuple(str(x) for x in kv[0])))


def same_kind(rows_: list[MachineRow]) -> dict[tuple[PointKey, str], list[MachineRow]]:
    """Per point and machine kind, the newest row of each machine (host) of that kind."""
    newest: dict[tuple[PointKey, str, str], MachineRow] = {}
    for r in sorted(rows_, key=lambda r: str(r.measured_utc)):
        key = (r.model, r.method, r.scope, r.target, r.backend, r.precision, r.batch)
        newest[(key, r.machine, r.host)] = r
    out: dict[tuple[PointKey, str], list[MachineRow]] = {}
    for (key, kind, _), r in newest.items():
        out.setdefault((key, kind), []).append(r)
    return out


def kind_spread(peers: list[MachineRow] | None) -> str:
    """Where several machines of one kind measured a point: their speed-ups' range, a finding
    (an interval covers one bench on one machine in its state, not the spread between machines)."""
    ups = [r.speedup for r in peers or [] if r.speedup is not None]
    if len(ups) < 2:
        return ""
    lo, hi = min(ups), max(ups)
    return f"; {len(ups)} machines of this kind: {lo:.2f}-{hi:.2f}x ({(hi - lo) / lo:.0%} apart)"


def cell(r: MachineRow | None, rich: bool, peers: list[MachineRow] | None = None) -> str:
    if r is None:
        return "-"
    tail = (
        f"; p90 {r.dense_p90_ms:.3f} -> {r.pruned_p90_ms:.3f}"
        if r.dense_p90_ms is not None and r.pruned_p90_ms is not None
        else ""
    )
    text = (
        f"{intervals.fmt(r.speedup or 0.0, r.speedup_ci)} ({r.dense_ms:.3f} ->"
        f" {r.pruned_ms:.3f} ms{tail})"
    )
    text += kind_spread(peers)
    if not r.stable:
        text += " [yellow]unstable[/]" if rich else " unstable"
    return text


def verdict(rows_: list[MachineRow]) -> str:
    """Whether the machines' speed-ups differ: only when their intervals are apart."""
    if len(rows_) < 2:
        return "-"
    cis = [r.speedup_ci for r in rows_]
    if any(ci is None for ci in cis):
        return "no intervals"
    lows, highs = [ci[0] for ci in cis if ci], [ci[1] for ci in cis if ci]
    return "yes (intervals apart)" if max(lows) > min(highs) else "not distinguishable"


def render_machines(rows_: list[MachineRow], fmt: str) -> str | Table:
    machines, table = across_machines(rows_)
    kinds = same_kind(rows_)
    as_dicts = [dataclasses.asdict(r) for r in rows_]
    if fmt == "json":
        return json.dumps({"machines": machines, "rows": as_dicts}, indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(as_dicts[0]))
        w.writeheader()
        w.writerows({k: safe.csv_cell(v) for k, v in row.items()} for row in as_dicts)
        return buf.getvalue()
    head = [
        "model",
        "method",
        "scope",
        "target",
        "MACs x",
        "backend",
        "precision",
        "batch",
        *machines,
        *(["machines differ?"] if len(machines) > 1 else []),
    ]
    body = [
        [
            str(k[0]),
            str(k[1]),
            str(k[2]),
            f"{k[3]:g}x",
            f"{next(iter(v.values())).macs_speedup:.2f}",
            str(k[4]),
            str(k[5]),
            str(k[6]),
            *[cell(v.get(m), fmt == "table", kinds.get((k, m))) for m in machines],
            *([verdict(list(v.values()))] if len(machines) > 1 else []),
        ]
        for k, v in table.items()
    ]
    if fmt == "md":
        lines = [
            (
                "Measured speed-up (dense / pruned median latency, same machine, same session) per"
                " machine, with its 95% interval; compare the ratios across machines, not the"
                " milliseconds. An interval covers one bench on one machine in its state, not the"
                " spread between machines: where several machines of one kind measured a point,"
                " their range is shown, and it can be wider than any interval. Two machines differ"
                " only where their intervals are apart."
            ),
            "",
            "| " + " | ".join(safe.md(h) for h in head) + " |",
            "|" + "---|" * len(head),
        ]
        lines += ["| " + " | ".join(safe.md(c) for c in row) + " |" for row in body]
        return "\n".join(lines) + "\n"
    t = Table(
        title="measured speed-up across machines (dense / pruned, each measured on one machine)",
        title_justify="left",
    )
    for c in head:
        align = "left" if c in ("model", "method", "backend") else "right"
        t.add_column(safe.term(c), justify=align)  # type: ignore[arg-type]
    fixed = 8  # the point's own columns (record text); then the machines' cells (rich markup)
    for row in body:
        t.add_row(*[safe.term(v) if i < fixed else v for i, v in enumerate(row)])
    return t
