"""The HTML report: one self-contained file from records only (``pbkit report DIR --format html``).

Jinja2 renders the page (autoescaped) from a template shipped with the package; the charts are
inline SVG written by :mod:`pbkit.report.svg`; the few interactions (sort, filter, hover, open a
run) are a short inline script. Nothing is fetched when the page is opened: no CDN, no font, no
image, no script from elsewhere, so it works from ``file://``, attached to a paper or served as a
static page. The full records ride along gzip-compressed and are unpacked in the browser only when
a reader opens one.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from dataclasses import dataclass, field
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from pbkit import __version__
from pbkit.core import intervals, record
from pbkit.core.clock import utc_now
from pbkit.machine import envinfo
from pbkit.report import deployed, machines, render, setups, svg
from pbkit.report import explain as explained
from pbkit.report.cells import si
from pbkit.report.rank import Board, leaderboard
from pbkit.report.rows import recipe_line, rows, seed_of
from pbkit.report.stats import Entry, score, spread

FILTERS = ("model", "dataset", "scope", "target")


# what the templates render (Jinja reads their fields by name)


@dataclass
class CellView:
    col: str
    text: str
    sort: str
    align: str
    alert: bool
    backend: str | None
    flag: str = ""  # why the cell is marked (an unstable point): its tooltip; "": not marked


@dataclass
class RunLink:
    id: str
    anchor: str
    seed: Any


@dataclass
class RowView:
    attrs: dict[str, str]  # data-* attributes (the filters)
    runs: list[RunLink]
    cells: list[CellView]


@dataclass
class ColumnView:
    key: str
    head: str
    about: str
    align: str
    backend: str | None


@dataclass
class GroupView:
    title: str
    setup: str  # HTML
    split_by: list[str]
    recipe_line: str
    seeds: list[str]
    bases: list[str]
    attrs: dict[str, str]
    columns: list[ColumnView]
    rows: list[RowView]


@dataclass
class PlotView:
    title: str
    svg: str
    points: int


@dataclass
class MachineLine:
    key: list[str]
    macs: str
    cells: list[str]
    verdict: str | None


@dataclass
class MachineSpecs:
    fields: list[str]
    machines: list[str]
    values: list[list[str]]  # per field, per machine


@dataclass
class MachinesView:
    machines: list[str]
    rows: list[MachineLine]
    svg: str
    specs: MachineSpecs


@dataclass
class Curves:
    name: str
    svg: list[str]


@dataclass
class RunView:
    id: str
    anchor: str
    facts: list[tuple[str, str]]
    curves: list[Curves]
    latency: list[list[str]]
    memory: list[list[str]]
    stages: list[list[str]]
    env: str  # JSON
    summary: str
    explain: list[ExplainView] = field(default_factory=list)


@dataclass
class ExplainView:
    """One ``pbkit explain`` of the run (a backend, precision, batch): the layers that lost most."""

    headline: str
    headers: list[str]
    rows: list[list[str]]
    note: str
    alignment: str | None = None  # the advisor's verdict, where it ran


@dataclass
class Provenance:
    path: str
    sha256: str
    run_id: str
    used: bool
    anchor: str


def anchor(run_id: str) -> str:
    return "run-" + re.sub(r"[^A-Za-z0-9_-]", "_", run_id)


def _inline_md(text: str) -> str:
    """The markdown the leaderboard writes inside a line (``**bold**``, backticks), as HTML."""
    out = escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def markdown_html(lines: list[str]) -> str:
    """The subset of markdown :mod:`pbkit.report.leaderboard` writes (headings, paragraphs, lists,
    pipe tables), as HTML: the cross-recipe sections say the same words in both formats."""
    out: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head, body = table[0], table[2:]
            out.append(
                '<table class="plain"><thead><tr>'
                + "".join(f"<th>{_inline_md(c)}</th>" for c in head)
                + "</tr></thead><tbody>"
                + "".join(
                    "<tr>" + "".join(f"<td>{_inline_md(c)}</td>" for c in r) + "</tr>" for r in body
                )
                + "</tbody></table>"
            )
            table.clear()

    for line in lines:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.startswith("### "):
            out.append(f"<h3>{_inline_md(line[4:])}</h3>")
        elif line.startswith("- "):
            out.append(f"<ul><li>{_inline_md(line[2:])}</li></ul>")
        elif line.strip():
            out.append(f"<p>{_inline_md(line)}</p>")
    flush()
    return "".join(out).replace("</ul><ul>", "")


# ------------------------------------------------------------------------------------------------
# the leaderboard


def _groups(board: Board) -> list[GroupView]:
    cols = render.board_columns(board)
    out = []
    for info, g in board:
        shas = info.base_sha256.split(",")
        views = []
        for e in g:
            runs = [
                RunLink(id=r, anchor=anchor(r), seed=s)
                for r, s in zip(e.runs, e.seeds, strict=True)
            ]
            views.append(
                RowView(
                    attrs={
                        "model": e.model,
                        "dataset": e.dataset or "-",
                        "scope": e.scope,
                        "target": f"{e.target:g}x",
                        "method": e.method,
                    },
                    runs=runs,
                    cells=[
                        CellView(
                            col=c.key,
                            text=c.text(e),
                            sort=_sort(c.value(e)),
                            align=c.align,
                            alert=c.alert(e),
                            backend=c.backend,
                            flag=c.flag(e),
                        )
                        for c in cols
                    ],
                )
            )
        out.append(
            GroupView(
                title=render.title(info),
                setup=_inline_md(render.setup_line(info)),
                split_by=info.split_by,
                recipe_line=info.recipe_line,
                seeds=info.seeds,
                bases=shas,
                attrs={
                    "model": info.model,
                    "dataset": info.dataset or "-",
                    "scope": info.scope,
                    "target": f"{info.target:g}x",
                },
                columns=[
                    ColumnView(
                        key=c.key, head=c.head, about=c.about, align=c.align, backend=c.backend
                    )
                    for c in cols
                ],
                rows=views,
            )
        )
    return out


def _sort(v: float | str | None) -> str:
    if v is None:
        return ""
    return f"{v:.10g}" if isinstance(v, int | float) else str(v)


# ------------------------------------------------------------------------------------------------
# the plots: accuracy against measured speed-up per backend (or measured against counted)


def _plots(board: Board) -> list[PlotView]:
    """One plot per model and dataset, a point per leaderboard row (a run, or the mean of its seeds)
    and backend; the hollow diamond is the same row at its MACs speed-up."""
    panels: dict[tuple[str, str], list[Entry]] = {}
    for _, g in board:
        for e in g:
            panels.setdefault((e.model, e.dataset or "-"), []).append(e)
    out = []
    for (model, dataset), entries in panels.items():
        accuracy = any(score(e) is not None for e in entries)
        metric = next((e.metric for e in entries if e.metric), None) or "metric"
        points: list[svg.Point] = []
        for e in entries:
            y = score(e)
            if accuracy and y is None:
                continue
            macs = e.macs_speedup or 0.0
            attrs: dict[str, str | int] = {
                "model": model,
                "dataset": dataset,
                "scope": e.scope,
                "target": f"{e.target:g}x",
                "method": e.method,
                "run": ",".join(e.runs),
                "n": e.n,
            }
            name = f"{e.method} · {e.scope} · {e.target:g}x" + (
                "" if e.n == 1 else f" · mean of {e.n} seeds"
            )
            runs = f"\nruns: {', '.join(e.runs)}"
            for b in sorted(e.measured):
                x, ci = e.measured[b], e.measured_ci.get(b)
                label = f"{name}\n{b}: measured {intervals.fmt(x, ci)}, MACs {macs:.2f}x"
                unstable = b in e.unstable
                if unstable:
                    label += f"\nunstable: {'; '.join(e.unstable[b])}"
                if y is not None and accuracy:  # metric (y) against measured speed-up (x)
                    sd = spread(e)
                    label += f"\n{metric} {y:.2f}" + (f" ± {sd:.2f}" if e.n > 1 else "")
                    points.append(
                        svg.Point(
                            x,
                            y,
                            b,
                            label + runs,
                            x_err=(ci[0], ci[1]) if ci else None,
                            y_err=sd or None,
                            attrs={**attrs, "backend": b},
                            unstable=unstable,
                        )
                    )
                else:  # measured (y) against counted (x) speed-up
                    points.append(
                        svg.Point(
                            macs,
                            x,
                            b,
                            label + runs,
                            attrs={**attrs, "backend": b},
                            unstable=unstable,
                        )
                    )
            if y is not None and accuracy:
                points.append(
                    svg.Point(
                        macs,
                        y,
                        "MACs",
                        f"{name}\nMACs speed-up {macs:.2f}x\n{metric} {y:.2f}{runs}",
                        "macs",
                        attrs={**attrs, "backend": "macs"},
                    )
                )
        if not points:
            continue
        if accuracy:
            title = f"{model} · {dataset}: {metric} against measured speed-up"
            chart = svg.scatter(
                points, "speed-up (dense / pruned latency; diamonds: MACs)", metric, title
            )
        else:
            title = f"{model} · {dataset}: measured against counted speed-up"
            chart = svg.scatter(
                points,
                "MACs speed-up (counted)",
                "measured speed-up",
                title,
                front=False,
                diagonal=True,
            )
        out.append(
            PlotView(title=title, svg=chart, points=sum(p.kind == "measured" for p in points))
        )
    return out


# ------------------------------------------------------------------------------------------------
# across machines


def _machines(records: list[tuple[Path, record.Record]]) -> MachinesView | None:
    mrows = machines.machine_rows(records)
    if not mrows:
        return None
    names, table = machines.across_machines(mrows)
    kinds = machines.same_kind(mrows)
    body = []
    dots = []
    for k, per in table.items():
        label = (
            f"{k[0]} · {k[1]} · {k[2]} · {k[3]:g}x ·"
            f" {k[4]}{'' if k[5] == 'fp32' else '/' + k[5]}@b{k[6]}"
        )
        if len({key[0] for key in table}) == 1:  # one model: it is in the heading
            label = label.split(" · ", 1)[1]
        body.append(
            MachineLine(
                key=[
                    str(k[0]),
                    str(k[1]),
                    str(k[2]),
                    f"{k[3]:g}x",
                    str(k[4]),
                    str(k[5]),
                    str(k[6]),
                ],
                macs=f"{next(iter(per.values())).macs_speedup:.2f}",
                cells=[machines.cell(per.get(m), False, kinds.get((k, m))) for m in names],
                verdict=machines.verdict(list(per.values())) if len(names) > 1 else None,
            )
        )
        dots.append((label, {m: (r.speedup or 0.0, r.speedup_ci) for m, r in per.items()}))
    specs: dict[str, dict[str, object]] = {}
    throttles: dict[str, set[str]] = {}
    for _, r in records:
        env = r.stage_env("bench")
        name = envinfo.machine(env)
        if not any(p.variant == "pruned" for p in r.latency):
            continue
        specs.setdefault(name, _machine_spec(env, r.bench))
        throttles.setdefault(name, set()).update(t for p in r.latency for t in p.throttle_reasons)
    for name, spec in specs.items():
        spec["throttling seen"] = ", ".join(sorted(throttles[name])) or "none"
    fields = list(dict.fromkeys(k for s in specs.values() for k in s))
    models = sorted({k[0] for k in table})
    chart = (
        svg.dots(
            dots,
            "measured speed-up per machine" + (f" ({models[0]})" if len(models) == 1 else ""),
            "measured speed-up (bars: 95% interval)",
        )
        if len(dots) <= 60
        else ""
    )
    return MachinesView(
        machines=names,
        rows=body,
        svg=chart,
        specs=MachineSpecs(
            fields=fields,
            machines=list(specs),
            values=[[str(specs[m].get(f, "-")) for m in specs] for f in fields],
        ),
    )


def _machine_spec(env: dict[str, Any], bench: record.BenchInfo | None) -> dict[str, object]:
    """What a machine is (label -> value, in the order shown): CPU, memory, software, its GPU and
    the CPU's load around the measurement."""
    host = env.get("host") or {}
    sw = env.get("software") or {}
    out: dict[str, object] = {
        "CPU": f"{host.get('cpu', '?')} ({host.get('cores_logical', '?')} logical cores)",
        "memory": si(host.get("memory_bytes") or 0) + "B",
        "OS": host.get("os", "-"),
        "torch": sw.get("torch"),
        "onnxruntime": sw.get("onnxruntime") or sw.get("onnxruntime-gpu"),
        "TensorRT": sw.get("tensorrt") or "-",
    }
    for g in (env.get("gpus") or [])[:1]:
        out.update(
            {
                "GPU": g.get("name"),
                "driver": g.get("driver_version"),
                "CUDA driver": g.get("cuda_driver_version"),
                "max SM clock MHz": g.get("max_sm_clock_mhz"),
                "power limit W": g.get("power_limit_w"),
                "persistence mode": g.get("persistence_mode"),
                "MIG": g.get("mig_mode"),
            }
        )
        start = g.get("state_start") or {}
        if start:
            out["SM clock at start MHz"] = start.get("sm_clock_mhz")
    state = (bench.cpu_state if bench is not None else None) or {}
    if state:
        out["CPU load before / after"] = (
            f"{(state.get('before') or {}).get('loadavg_1m')} / "
            f"{(state.get('after') or {}).get('loadavg_1m')}"
        )
        if state.get("steal_share") is not None:
            out["steal time"] = f"{state['steal_share']:.2%}"
    return out


# ------------------------------------------------------------------------------------------------
# a run's page


def _run(path: Path, r: record.Record, sha: str) -> RunView:
    ft = r.finetune or {}
    curves = []
    for name, hist in (
        ("finetuning", ft.get("history")),
        ("sparse training", (r.method.sparsify or {}).get("history")),
        ("base training", (r.base_training or {}).get("history")),
    ):
        if not hist:
            continue
        key = next(
            (
                k
                for k in hist[-1]
                if k not in ("epoch", "loss", "lr", "lr_used", "time_s", "images_per_s")
            ),
            "accuracy",
        )
        acc = [(h["epoch"], h[key]) for h in hist if h.get(key) is not None and "epoch" in h]
        loss = [(h["epoch"], h["loss"]) for h in hist if h.get("loss") is not None and "epoch" in h]
        metric = r.accuracy.metric or key
        charts = [
            svg.lines({metric: acc}, "epoch", metric, f"{name}: {metric} per epoch") if acc else "",
            svg.lines({"loss": loss}, "epoch", "loss", f"{name}: loss per epoch") if loss else "",
        ]
        if any(charts):
            curves.append(Curves(name=name, svg=[c for c in charts if c]))
    latency = []
    for p in r.latency:
        latency.append(
            [
                p.backend,
                p.precision,
                str(p.batch),
                p.variant,
                p.device,
                f"{p.median_ms:.3f}"
                + (f" [{p.median_ci[0]:.3f}, {p.median_ci[1]:.3f}]" if p.median_ci else ""),
                f"{p.p90_ms:.3f}",
                f"{p.p99_ms:.3f}",
                f"{p.cov:.1%}",
                str(p.n),
                str(p.attempts),
                str(p.blocks or "-"),
                str(sum((p.outliers or {}).values())),
                str(p.ci.stop if p.ci is not None and "stop" in p.ci else "-"),
                (
                    "-"
                    if p.speedup_vs_dense is None
                    else intervals.fmt(p.speedup_vs_dense, p.speedup_ci)
                    + (
                        f"; repeat {intervals.repeat_text(p.repeat_ci, p.repeat)}"
                        if p.repeat_ci
                        else ""
                    )
                ),
                "stable" if p.stable else "unstable: " + "; ".join(p.unstable_reasons),
            ]
        )
    memory = []
    for p in r.latency:
        if p.memory:
            m = p.memory
            keys = [
                k
                for k in (
                    "nvml_used_before_bytes",
                    "nvml_used_peak_bytes",
                    "torch_peak_allocated_bytes",
                    "torch_peak_reserved_bytes",
                    "rss_peak_bytes",
                    "engine_bytes",
                )
                if m.get(k) is not None
            ]
            memory.append(
                [
                    f"{p.backend} {p.precision} b{p.batch} {p.variant}",
                    "; ".join(
                        f"{k.replace('_bytes', '').replace('_', ' ')} {m[k] / 2**20:.0f} MiB"
                        for k in keys
                    )
                    or "-",
                ]
            )
    stages = [
        [
            name,
            s.started_utc or "-",
            s.utc,
            "-" if s.seconds is None else f"{s.seconds:.1f}",
            envinfo.machine(s.env) if s.env else "-",
            s.kit_version,
        ]
        for name, s in r.stages.items()
    ]
    c = r.counts
    facts = [
        (
            "model",
            (
                f"{r.model.name} ({r.model.source}, {r.model.weights} weights, sha256"
                f" {r.model.weights_sha256[:12]})"
            ),
        ),
        (
            "method",
            (
                f"{r.method.key} ({r.method.name}), {setups.scope_of(r)}, target"
                f" {r.method.target_speedup:g}x, achieved {r.method.achieved_speedup:.3f}x in"
                f" {r.method.steps} steps, {r.method.schedule}"
            ),
        ),
        ("dataset", r.dataset.name if r.dataset else "none (data-free)"),
        (
            "accuracy",
            (
                f"{r.accuracy.metric}: base {_f(r.accuracy.base)}, pruned {_f(r.accuracy.pruned)}, "
                f"finetuned {_f(r.accuracy.finetuned)}"
                if r.accuracy.metric
                else "not measured"
            ),
        ),
        *[
            (
                name,
                (
                    f"base {_f(v.get('base'))}, pruned {_f(v.get('pruned'))}, finetuned"
                    f" {_f(v.get('finetuned'))}"
                ),
            )
            for name, v in r.accuracy.others.items()
        ],
        *[(k.replace("_", " "), str(v)) for k, v in r.model.notes.items()],
        ("params", f"{si(c.params_base)} -> {si(c.params_pruned)}"),
        ("MACs", f"{si(c.macs_base)} -> {si(c.macs_pruned)} at {c.input_size}px ({c.counter})"),
        ("recipe", recipe_line(r)),
        ("seed", str(seed_of(r))),
        (
            "parity",
            "; ".join(
                f"{p.backend} {p.precision} {p.variant}: {'ok' if p.passed else 'FAILED'} "
                f"(max abs {p.error_text})"
                for p in r.parity
            )
            or "-",
        ),
        *_deployed_facts(r),
        ("record", f"{path} (sha256 {sha})"),
        ("kit", f"{r.kit_version}, git {r.git_revision or '-'}, schema {r.schema_version}"),
    ]
    env = r.stage_env("bench")
    return RunView(
        id=r.run_id,
        anchor=anchor(r.run_id),
        facts=facts,
        curves=curves,
        latency=latency,
        memory=memory,
        stages=stages,
        env=json.dumps(env, indent=1, default=str),
        explain=[
            ExplainView(
                explained.headline(e),
                explained.HEADERS,
                [explained.cells(layer) for layer in e.layers[: explained.TOP]],
                e.note,
                explained.alignment_headline(r.alignment[key]) if key in r.alignment else None,
            )
            for key, e in r.explain.items()
        ],
        summary=(
            f"{r.run_id} · {r.method.key} · {r.model.name} · {setups.scope_of(r)} · "
            f"{r.method.target_speedup:g}x · seed {seed_of(r)}"
        ),
    )


def _deployed_facts(r: record.Record) -> list[tuple[str, str]]:
    """The accuracy on each engine (dense and pruned, next to PyTorch's) and the INT8 calibration,
    as the run table shows them."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    out = []
    for dp in deployed.points(r):
        if dp.dense_acc is None and dp.pruned_acc is None:
            if dp.accuracy_failed:
                out.append((f"accuracy on {dp.backend} {dp.precision}", dp.accuracy_failed))
            continue
        out.append(
            (
                f"{dp.metric or 'accuracy'} on {dp.backend} {dp.precision} (test)",
                f"{pct(dp.dense_acc)} -> {pct(dp.pruned_acc)} (PyTorch {pct(dp.dense_torch)} ->"
                f" {pct(dp.pruned_torch)})",
            )
        )
    cal = deployed.calibration_line(r)
    if cal is not None:
        out.append(("INT8 calibration", cal))
    return out


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


# ------------------------------------------------------------------------------------------------


def page(records: list[tuple[Path, record.Record]], sources: list[str]) -> str:
    """The whole report as one HTML document."""
    import jinja2

    tpl = resources.files("pbkit.report").joinpath("templates")
    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    rs = rows(records)
    board = leaderboard(rs) if rs else []
    used = {r.record for r in rs}
    provenance: list[Provenance] = []
    runs: list[RunView] = []
    packed: dict[str, dict[str, Any]] = {"records": {}, "pages": {}}  # JSON, for the browser
    run_page = env.from_string(tpl.joinpath("run.html.j2").read_text(encoding="utf-8"))
    for path, r in records:
        raw = path.read_bytes()  # read once: hashed for the page, packed whole for its reader
        sha = hashlib.sha256(raw).hexdigest()
        provenance.append(
            Provenance(
                path=str(path),
                sha256=sha,
                run_id=r.run_id,
                used=str(path) in used,
                anchor=anchor(r.run_id),
            )
        )
        if str(path) in used:
            run = _run(path, r, sha)
            runs.append(run)
            packed["pages"][r.run_id] = run_page.render(r=run)
            packed["records"][r.run_id] = json.loads(raw)
    # the run pages and full records: gzip + base64, unpacked in the browser when a run is opened
    blob = base64.b64encode(
        gzip.compress(json.dumps(packed, separators=(",", ":")).encode(), 9, mtime=0)
    ).decode()
    entries = [e for _, g in board for e in g]
    filters = {
        k: sorted(
            {
                (
                    (e.dataset or "-")
                    if k == "dataset"
                    else f"{e.target:g}x"
                    if k == "target"
                    else getattr(e, k)
                )
                for e in entries
            },
            key=str,
        )
        for k in FILTERS
    }
    filters["backend"] = sorted({b for e in entries for b in e.measured})
    template = env.from_string(tpl.joinpath("report.html.j2").read_text(encoding="utf-8"))
    return template.render(
        title="pbkit report · " + ", ".join(sources),
        sources=sources,
        kit=__version__,
        generated=utc_now(),
        css=tpl.joinpath("report.css").read_text(encoding="utf-8"),
        js=tpl.joinpath("report.js").read_text(encoding="utf-8"),
        groups=_groups(board),
        plots=_plots(board),
        across=_machines([(p, r) for p, r in records if str(p) in used]),
        recipes=markdown_html(render.markdown_across(board)),
        runs=runs,
        provenance=provenance,
        left_out=sum(1 for p in provenance if not p.used),
        filters=filters,
        blob=blob,
        n_rows=len(entries),
        n_runs=len(runs),
    )
