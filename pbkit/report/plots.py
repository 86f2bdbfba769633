"""Plots from records: counted (MACs) against measured speed-up, one pruning's measured speed-up
across machines, and the deployed model's accuracy on the engine against its latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pbkit.core import record
from pbkit.core.errors import PbkitError
from pbkit.core.fileio import atomic_write
from pbkit.report import deployed
from pbkit.report.machines import MachineRow, across_machines
from pbkit.report.rank import Board, GroupInfo
from pbkit.report.rows import Row
from pbkit.report.stats import Entry, score, spread

UNSTABLE = "hollow: unstable (reasons in the record)"


def _unstable_legend(ax: Any, color: str = "grey", marker: str = "o") -> None:
    """The legend entry of the hollow marks (added to the axes' legend handles)."""
    ax.plot([], [], marker, mfc="none", mec=color, color=color, ls="none", label=UNSTABLE)


def plot(rs: list[Row], path: str | Path) -> Path:
    """MACs speed-up (what papers report) against measured speed-up, per backend, one panel per
    model and dataset: the distance from the diagonal is what MAC counts do not tell. A speed-up
    measured on an unstable point (:attr:`Row.unstable`) is drawn hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(rs)
    out = atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return out


def figure(rs: list[Row]) -> Any:
    """The figure :func:`plot` writes (a matplotlib Figure; the caller closes it)."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = sorted({b for r in rs for b in r.measured})
    if not backends:
        raise PbkitError(
            "no latency measurements in these records to plot (run `pbkit bench` first)"
        )
    panels = sorted({(r.model, r.dataset or "data-free") for r in rs if r.measured})
    cols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.4 * nrows), dpi=110, squeeze=False)
    colors = {b: f"C{i}" for i, b in enumerate(backends)}
    ax: Any
    for ax, (model, dataset) in zip(axes.flat, panels, strict=False):
        mine = [r for r in rs if r.model == model and (r.dataset or "data-free") == dataset]
        top = 1.0
        unstable_here = False
        for b in backends:
            pts = [(r.macs_speedup, r.measured[b], r.method) for r in mine if b in r.measured]
            if not pts:
                continue
            top = max(top, *(max(x, y) for x, y, _ in pts))
            cis = [r.measured_ci.get(b) for r in mine if b in r.measured]
            shaky = [b in r.unstable for r in mine if b in r.measured]
            unstable_here = unstable_here or any(shaky)
            for hollow in (False, True):  # stable points filled, unstable ones hollow
                idx = [i for i, u in enumerate(shaky) if u == hollow]
                if not idx:
                    continue
                ys = [pts[i][1] for i in idx]
                lo = [max(pts[i][1] - ci[0], 0.0) if (ci := cis[i]) else 0.0 for i in idx]
                hi = [max(ci[1] - pts[i][1], 0.0) if (ci := cis[i]) else 0.0 for i in idx]
                err = [lo, hi]
                ax.errorbar(
                    [pts[i][0] for i in idx],
                    ys,
                    yerr=err,
                    fmt="o",
                    color=colors[b],
                    mfc="none" if hollow else colors[b],
                    label="_nolegend_" if hollow and len(idx) < len(pts) else b,
                    alpha=0.8,
                    capsize=2,
                    ms=5,
                )
            for x, y, method in pts:
                ax.annotate(
                    method,
                    (x, y),
                    fontsize=7,
                    alpha=0.75,
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="center",
                )
        ax.plot([1, top * 1.1], [1, top * 1.1], "k--", lw=0.8, label="measured = MACs")
        if unstable_here:
            _unstable_legend(ax)
        ax.axhline(1.0, color="grey", lw=0.6)
        ax.set_xlim(0.9, top * 1.15)
        ax.set_ylim(0.0, top * 1.15)
        ax.set_title(f"{model} · {dataset}", fontsize=10)
        ax.set_xlabel("MACs speed-up (base / pruned)")
        ax.set_ylabel("measured speed-up (dense / pruned latency)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        "Counted vs measured speed-up (batch 1 unless stated; bars: 95% interval)", fontsize=11
    )
    fig.tight_layout()
    return fig


def plot_machines(rows_: list[MachineRow], path: str | Path) -> Path:
    """Grouped bars: per measured point, one bar per machine; the dashed mark is the MACs speed-
    up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    machines, table = across_machines(rows_)
    if not table:
        raise PbkitError(
            "no latency measurements in these records to compare (run `pbkit bench` first)"
        )
    keys = list(table)
    width = 0.8 / len(machines)
    fig, ax = plt.subplots(
        figsize=(max(6.0, 0.9 * len(keys) * max(len(machines), 2) / 2 + 2), 4.6), dpi=110
    )
    unstable_here = False
    for i, m in enumerate(machines):
        xs = [k for k, key in enumerate(keys) if m in table[key]]
        ys = [table[keys[x]][m].speedup or 0 for x in xs]
        cis = [table[keys[x]][m].speedup_ci for x in xs]
        err = [
            [max(y - ci[0], 0.0) if ci else 0.0 for y, ci in zip(ys, cis, strict=True)],
            [max(ci[1] - y, 0.0) if ci else 0.0 for y, ci in zip(ys, cis, strict=True)],
        ]
        shaky = [not table[keys[x]][m].stable for x in xs]
        ax.bar(
            [x - 0.4 + width * (i + 0.5) for x in xs],
            ys,
            width=width,
            label=m,
            color=["none" if u else f"C{i}" for u in shaky],  # unstable: hollow
            edgecolor=f"C{i}",
            yerr=err,
            capsize=3,
        )
        unstable_here = unstable_here or any(shaky)
    for x, key in enumerate(keys):
        macs = next(iter(table[key].values())).macs_speedup
        ax.hlines(
            macs,
            x - 0.45,
            x + 0.45,
            colors="k",
            linestyles="--",
            lw=0.9,
            label="MACs speed-up" if x == 0 else "_nolegend_",
        )
    ax.axhline(1.0, color="grey", lw=0.6)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{k[0]}\n{k[1]} {k[4]}\n{k[5]} b{k[6]}" for k in keys], fontsize=7)
    ax.set_ylabel("measured speed-up (dense / pruned)")
    ax.set_title("Measured speed-up of the same pruning across machines", fontsize=10)
    handles, _ = ax.get_legend_handles_labels()
    if unstable_here:
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor="none", edgecolor="grey", label=UNSTABLE))
    ax.legend(handles=handles, fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return out


def plot_accuracy(board: Board, path: str | Path) -> Path:
    """Accuracy after finetuning, mean +- std over seeds, one panel per comparison (model, dataset,
    scope, target): a row per method, a colour per finetuning recipe, the scratch baseline as a
    black cross, the dense base as a dotted line. Overlapping bars are the "not separable" marks
    of the leaderboard."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str, str, float], list[tuple[GroupInfo, list[Entry]]]] = {}
    for info, g in board:
        panels.setdefault((info.model, info.dataset, info.scope, info.target), []).append((info, g))
    if not any(e.finetuned is not None or e.pruned is not None for _, g in board for e in g):
        raise PbkitError(
            "no accuracy in these records to plot (runs without a dataset measure none)"
        )
    cols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / cols)
    height = max(
        3.5,
        0.45 * max(len({e.method for _, g in groups for e in g}) for groups in panels.values())
        + 1.6,
    )
    fig, axes = plt.subplots(
        nrows, cols, figsize=(7.0 * cols, height * nrows), dpi=110, squeeze=False
    )
    ax: Any
    for ax, (key, groups) in zip(axes.flat, panels.items(), strict=False):
        methods = sorted(
            {e.method for _, g in groups for e in g},
            key=lambda m: max((score(e) or 0) for _, g in groups for e in g if e.method == m),
        )
        y = {m: i for i, m in enumerate(methods)}
        recipes = [info for info, _ in groups if info.init == "pruned"]
        offset = 0.6 / max(len(recipes), 1)
        labelled = False
        for i, (info, g) in enumerate(groups):
            scratch = info.init == "scratch"
            label = (
                "scratch (SX-A)"
                if scratch and not labelled
                else None
                if scratch
                else info.recipe_label or "finetuned"
            )
            labelled = labelled or scratch
            shift = 0.0 if scratch else -0.3 + offset * (i + 0.5)
            pts = [(y[e.method] + shift, s, spread(e)) for e in g if (s := score(e)) is not None]
            ax.errorbar(
                [p[1] for p in pts],
                [p[0] for p in pts],
                xerr=[p[2] for p in pts],
                fmt="x" if scratch else "o",
                color="k" if scratch else f"C{i}",
                capsize=3,
                ms=6,
                label=label,
            )
        bases = [e.base for _, g in groups for e in g if e.base is not None]
        if bases:
            ax.axvline(
                sum(bases) / len(bases), color="grey", ls=":", lw=1, label="dense base (mean)"
            )
        ax.set_yticks(range(len(methods)))
        ax.set_yticklabels(methods)
        ax.set_xlabel(
            f"{groups[0][1][0].metric or 'metric'} after finetuning (mean ± std over seeds)"
        )
        ax.set_title(f"{key[0]} · {key[1]} · {key[2]} · {key[3]:g}x", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    out = atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return out


def plot_deployed(records: list[record.Record], path: str | Path) -> Path:
    """The deployed model's Pareto plot: accuracy on the engine (the task's metric through each
    backend's runner) against measured latency, one series per backend and precision; per series
    the dense point (circle) and the pruned one (square), joined; the dashed line is the Pareto
    front of all points of a panel (faster and at least as accurate). One panel per model and
    dataset; runs without accuracy on the engine (no dataset) are left out."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], list[tuple[record.Record, deployed.DeployedPoint]]] = {}
    for rec in records:
        for dp in deployed.points(rec):
            if dp.dense_acc is None or dp.pruned_acc is None:
                continue
            key = (rec.model.name, rec.dataset.name if rec.dataset else "data-free")
            panels.setdefault(key, []).append((rec, dp))
    if not panels:
        raise PbkitError(
            "no accuracy on the engine in these records to plot (a run with a dataset, benched"
            " with bench.engine_accuracy)"
        )
    keys = sorted(panels)
    cols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.4 * cols, 4.8 * nrows), dpi=110, squeeze=False)
    series = sorted({dp.label for pts in panels.values() for _, dp in pts})
    colors = {s: f"C{i}" for i, s in enumerate(series)}
    ax: Any
    for ax, key in zip(axes.flat, keys, strict=False):
        allpts: list[tuple[float, float]] = []
        metric = "metric"
        for _, dp in panels[key]:
            metric = dp.metric or metric
            label = f"{dp.label}" + (f" b{dp.batch}" if dp.batch != 1 else "")
            xs, ys = [dp.dense_ms, dp.pruned_ms], [dp.dense_acc, dp.pruned_acc]
            ax.plot(xs, ys, "-", color=colors[dp.label], lw=1, alpha=0.6)
            ax.plot(xs[:1], ys[:1], "o", color=colors[dp.label], ms=6, label=f"{label} dense")
            ax.plot(xs[1:], ys[1:], "s", color=colors[dp.label], ms=6, label=f"{label} pruned")
            ax.annotate(
                f"{dp.speedup:.2f}x",
                (dp.pruned_ms, dp.pruned_acc or 0.0),
                fontsize=7,
                xytext=(4, -8),
                textcoords="offset points",
            )
            allpts += [(x, float(y or 0.0)) for x, y in zip(xs, ys, strict=True)]
        front, best = [], -math.inf
        for x, y in sorted(allpts):
            if y > best:
                front.append((x, y))
                best = y
        ax.step(
            [p[0] for p in front],
            [p[1] for p in front],
            "k--",
            where="post",
            lw=0.8,
            label="Pareto front",
        )
        ax.set_xscale("log")
        ax.set_title(f"{key[0]} · {key[1]}", fontsize=10)
        ax.set_xlabel("median latency, ms (log)")
        ax.set_ylabel(f"{metric} on the engine (test split)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(
        "The deployed model: accuracy on the engine vs latency\n"
        "(circle: dense, square: pruned, label: pruned/dense speed-up)",
        fontsize=10,
    )
    fig.tight_layout()
    out = atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return out
