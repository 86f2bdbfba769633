"""A leaderboard rendered: terminal tables (rich), markdown with the cross-recipe sections, CSV and
JSON. Every table renders the columns of :mod:`pbkit.report.columns`."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

from rich.table import Table

from pbkit.report import columns, safe, setups
from pbkit.report.rank import Board, GroupInfo, leaderboard
from pbkit.report.recipes import Cell, cross_finetuning, recipe_effects, scratch_rows
from pbkit.report.rows import Row
from pbkit.report.stats import METRICS


def setup_line(info: GroupInfo) -> str:
    setup = info.setup
    if setup is None:
        return "no common setup"
    if setup == "SX-A":
        return (
            "**SX-A** (scratch baseline: the pruned architecture re-initialised, trained for base +"
            " pruning-stage + finetune epochs)"
        )
    held = "; ".join(setups.HOLDS[lv] for lv in setups.LEVELS[: setups.level_index(setup) + 1])
    line = f"Setup **{setup}** ({held})"
    if info.next_level:
        nxt = setups.LEVELS[setups.level_index(setup) + 1]
        line += f"; {nxt} not met: the rows differ in {info.next_level}"
    return line + "."


def title(info: GroupInfo) -> str:
    recipe = (
        f" · {info.recipe_label}" if info.recipe_label and info.recipe_label != "one recipe" else ""
    )
    return f"{info.model} · {info.dataset} · {info.scope} · {info.target:g}x{recipe}"


def board_columns(board: Board) -> list[columns.Column]:
    """The columns every table of one report shares (:mod:`pbkit.report.columns`)."""
    entries = [e for _, g in board for e in g]
    return columns.leaderboard_columns(entries, sorted({b for e in entries for b in e.measured}))


def render(rs: list[Row], fmt: str) -> str | list[Table]:
    board = leaderboard(rs)
    if fmt == "json":
        return json.dumps(
            [
                {"group": dataclasses.asdict(info), "rows": [e.public() for e in g]}
                for info, g in board
            ],
            indent=2,
            default=str,
        )
    backends = sorted({b for r in rs for b in r.measured})
    if fmt == "csv":
        buf = io.StringIO()
        fields = [
            "model",
            "dataset",
            "scope",
            "target",
            "setup",
            "recipe_label",
            "base_sha256",
            "recipe",
            "init",
            "rank",
            "rank_label",
            "method",
            "n",
            "seeds",
            "metric",
            *[c for k in METRICS for c in (k, f"{k}_std")],
            *[f"measured:{b}" for b in backends],
            "parity_ok",
            "machine",
            "run_id",
            "record",
            *[f"unstable:{b}" for b in backends],  # (after the older columns: the reasons)
        ]
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for info, g in board:
            for e in g:
                row = {
                    **e.public(),
                    "setup": info.setup,
                    "recipe_label": info.recipe_label,
                    "seeds": " ".join(str(s) for s in e.seeds),
                    **{f"{k}_std": e.std.get(k) for k in METRICS},
                    **{f"measured:{b}": e.measured.get(b) for b in backends},
                    **{f"unstable:{b}": "; ".join(e.unstable.get(b, [])) for b in backends},
                }
                w.writerow({k: safe.csv_cell(v) for k, v in row.items()})
        return buf.getvalue()
    cols = board_columns(board)
    tables = []
    for info, g in board:
        caption = (
            setup_line(info).replace("**", "")
            + (f" Split by: {'; '.join(info.split_by)}." if info.split_by else "")
            + (f" {columns.UNSTABLE_NOTE}." if columns.marked(g) else "")
        )
        t = Table(
            title=safe.term(f"{title(info)}   ({info.recipe_line})"),
            caption=safe.term(caption),
            title_justify="left",
            caption_justify="left",
        )
        for c in cols:
            t.add_column(c.head, justify=c.align)  # type: ignore[arg-type]
        for e in g:
            t.add_row(*[safe.term(c.text(e), "bold red" if c.alert(e) else "") for c in cols])
        tables.append(t)
    return tables


def markdown(rs: list[Row]) -> str:
    board = leaderboard(rs)
    cols = board_columns(board)
    lines = [
        (
            "Rows are means over seeds (± sample std, n runs). Rank: 1 + the number of rows above"
            " that are separably better (their mean ± std intervals apart); `=k` marks a row that"
            " some row above is not separable from (the intervals overlap). A group with no"
            " metric (data-free runs) is ranked by its measured speed-up at the first point all"
            " its rows share (the first measured column they all fill; `~1` counts as 1.0): rows"
            " whose 95% intervals overlap (over seeds: mean ± std) are not separable, nor is a"
            " speed-up measured on an unstable point from any other. TA: trainability"
            " accuracy, the mean test metric over the first LR stage of finetuning (with how many"
            " runs were still rising when the LR first fell)."
        ),
        "",
    ]
    for info, g in board:
        lines += [f"### {safe.md(title(info))}", "", setup_line(info)]
        if info.split_by:
            lines.append(
                "Kept apart from the other groups of this comparison by:"
                f" {'; '.join(info.split_by)}."
            )
        shas = info.base_sha256.split(",")
        bases = (
            f"one base for every seed (sha256 {shas[0]})"
            if len(shas) == 1
            else f"a base per seed (sha256 {', '.join(shas)})"
        )
        lines += [
            "",
            f"Recipe: {safe.md(info.recipe_line)}; seeds {safe.md(', '.join(info.seeds))};"
            f" {bases}.",
            "",
        ]
        lines += ["| " + " | ".join(c.head for c in cols) + " |", "|" + "---|" * len(cols)]
        for e in g:
            lines.append(
                "| "
                + " | ".join(
                    f"**{safe.md(c.text(e))}**" if c.alert(e) else safe.md(c.text(e)) for c in cols
                )
                + " |"
            )
        if columns.marked(g):
            lines += ["", safe.md(columns.UNSTABLE_NOTE) + "."]
        lines.append("")
    lines += markdown_across(board)
    return "\n".join(lines)


def _matrix_cell(v: Cell | None) -> str:
    if v is None or v[0] is None:
        return "-"
    return f"{v[0]:.2f} ± {v[1]:.2f}" + (f" (TA {v[3]:.2f})" if v[3] is not None else "")


def markdown_across(board: Board) -> list[str]:
    lines: list[str] = []
    for c in cross_finetuning(board):
        lines += [
            (
                f"### Cross-finetuning: {safe.md(c.model)} · {safe.md(c.dataset)} ·"
                f" {safe.md(c.scope)} · {c.target:g}x"
            ),
            "",
            f"Setup **{c.setup}** across the columns (same base models"
            + (", same finetuning epochs" if c.setup == "S3.1" else "")
            + "; the recipe differs by design).",
            "",
        ]
        lines += [
            "| method | " + " | ".join(safe.md(r) for r in c.recipes) + " |",
            "|" + "---|" * (len(c.recipes) + 1),
        ]
        for m, row in sorted(
            c.matrix.items(), key=lambda kv: -max(v[0] or 0 for v in kv[1].values())
        ):
            cells = [_matrix_cell(row.get(r)) for r in c.recipes]
            lines.append(f"| {safe.md(m)} | " + " | ".join(cells) + " |")
        top = ", ".join(safe.md(t) for t in c.top)
        lines += ["", f"Top methods by their mean over the recipes: {top}."]
        lines += [f"- {safe.md(v.verdict)}" for v in c.verdicts] + [""]
    effects = recipe_effects(board)
    if effects:
        lines += ["### What one recipe change did", ""]
        for x in effects:
            lines += [
                (
                    f"{safe.md(x.model)} · {safe.md(x.dataset)} · {x.target:g}x,"
                    f" **{safe.md(x.from_recipe)} -> {safe.md(x.to_recipe)}**: mean change"
                    f" {x.mean_change:+.2f} points over"
                    f" {len(x.per_method)} methods."
                ),
                "",
                "| method | "
                + f"{safe.md(x.from_recipe)} | {safe.md(x.to_recipe)} | change | TA change |"
                + " beyond the noise |",
                "|---|---|---|---|---|---|",
            ]
            for mc in x.per_method:
                ta = "-" if mc.ta_change is None else f"{mc.ta_change:+.2f}"
                lines.append(
                    f"| {safe.md(mc.method)} | {mc.before:.2f} | {mc.after:.2f} |"
                    f" {mc.change:+.2f} | {ta}"
                    f" | {'yes' if mc.separable else 'no'} |"
                )
            lines.append("")
    scratch = scratch_rows(board)
    if scratch:
        labels = sorted({r for s in scratch for r in s.pruned})
        lines += [
            (
                "### Scratch baseline (the pruned architecture re-initialised, trained as long as"
                " base + pruning + finetuning)"
            ),
            "",
            "| architecture of | n | total epochs | scratch | "
            + " | ".join(f"pruned, {lb} (pruned - scratch)" for lb in labels)
            + " |",
            "|" + "---|" * (4 + len(labels)),
        ]
        for s in scratch:
            cells = []
            for lb in labels:
                p = s.pruned.get(lb)
                cells.append(
                    "-"
                    if p is None
                    else (
                        f"{p.pruned:.2f} ± {p.pruned_std:.2f}"
                        f" ({p.gap:+.2f}{'' if p.separable else ', not separable'};"
                        f" {safe.md(p.setup or 'they differ in ' + str(p.why))})"
                    )
                )
            lines.append(
                f"| {safe.md(s.method)} | {s.n} | {s.epochs} | {s.scratch:.2f} ±"
                f" {s.scratch_std:.2f} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    return lines
