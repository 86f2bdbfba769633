"""``pbkit explain``'s views, from the record's ``explain`` section: the table (the layers where
pruning bought least first), the same as markdown, and a plot of each layer's dense, pruned and
MACs-proportional time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pbkit.core import record
from pbkit.core.fileio import atomic_write
from pbkit.report.safe import md, term

TOP = 15


def _ratio(v: float | None) -> str:
    return f"{v:.2f}x" if v is not None else "-"


def _macs(n: int) -> str:
    if not n:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def _load(loadavg: list[float] | None) -> str:
    if not loadavg or len(loadavg) != 2:
        return ""
    return f"; load average {loadavg[0]:g} before, {loadavg[1]:g} after"


def headline(e: record.Explained) -> str:
    load = _load(e.loadavg)
    return (
        f"{e.backend} {e.precision} b{e.batch}, {e.profiler} over {e.runs} runs: layers sum to"
        f" {e.dense_ms:.3f} -> {e.pruned_ms:.3f} ms ({e.measured_ratio:.2f}x) where MACs fell"
        f" {e.macs_ratio:.2f}x{load}"
    )


def cells(layer: record.ExplainedLayer) -> list[str]:
    return [
        layer.layer,
        layer.kind,
        f"{_macs(layer.macs_dense)} -> {_macs(layer.macs_pruned)}",
        _ratio(layer.macs_ratio),
        f"{layer.dense_ms:.4f} -> {layer.pruned_ms:.4f}",
        _ratio(layer.measured_ratio),
        f"{layer.realisation:.2f}" if layer.realisation is not None else "-",
        f"{layer.lost_ms:+.4f}",
    ]


HEADERS = [
    "layer",
    "kind",
    "MACs",
    "MACs ratio",
    "ms dense -> pruned",
    "measured",
    "realisation",
    "lost ms",
]


def table(e: record.Explained, top: int = TOP) -> Any:
    """A rich table of the ``top`` layers where pruning bought least."""
    from rich.table import Table

    t = Table(title=term(headline(e)), title_justify="left", caption=term(e.note))
    for i, h in enumerate(HEADERS):
        t.add_column(h, justify="left" if i < 2 else "right")
    for layer in e.layers[:top]:
        t.add_row(*(term(c) for c in cells(layer)))
    return t


def markdown(e: record.Explained, top: int = TOP) -> str:
    lines = [
        f"**{md(headline(e))}**",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(md(c) for c in cells(layer)) + " |" for layer in e.layers[:top]]
    lines += ["", f"_{md(e.note)}_", ""]
    return "\n".join(lines)


def plot(e: record.Explained, path: str | Path, top: int = TOP) -> Path:
    """Per layer (the ``top`` that lost most): dense time, pruned time, and the pruned time had it
    fallen with the layer's MACs; the gap between the last two is what pruning did not buy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(reversed(e.layers[:top]))
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(rows) + 1.6), dpi=110)
    y = range(len(rows))
    h = 0.38
    ax.barh([i + h / 2 for i in y], [r.dense_ms for r in rows], h, label="dense", color="C7")
    ax.barh([i - h / 2 for i in y], [r.pruned_ms for r in rows], h, label="pruned", color="C0")
    expected = [r.pruned_ms - r.lost_ms for r in rows]
    ax.scatter(
        expected,
        [i - h / 2 for i in y],
        marker="|",
        s=180,
        color="C3",
        zorder=3,
        label="pruned, had time fallen with MACs",
    )
    ax.set_yticks(list(y), [f"{r.layer} ({r.kind})" for r in rows], fontsize=7)
    ax.set_xlabel("milliseconds per forward pass (profiled)")
    ax.set_title(headline(e), fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return out


def alignment_headline(a: record.Alignment) -> str:
    best = a.recommended
    if best is None:
        verdict = "aligning widths buys under 5% per channel here: no prune.round_to recommended"
    else:
        verdict = (
            f"recommended prune.round_to={best}: {a.gain[str(best)]:.2f}x the output channels per"
            f" ms (median over the layers; summed, {a.ms_pruned:.3f} ms at the pruned widths,"
            f" {a.ms_aligned[str(best)]:.3f} ms at the nearest multiples of {best})"
        )
    return f"channel alignment on {a.backend} {a.precision} b{a.batch}: {verdict}{_load(a.loadavg)}"


def _align_cells(layer: record.AlignedLayer) -> list[str]:
    others = sorted((int(w), ms) for w, ms in layer.widths_ms.items() if int(w) != layer.cout)
    return [
        layer.layer,
        f"{layer.cin} -> {layer.cout}",
        f"{layer.ms:.4f}",
        "  ".join(f"{w}: {ms:.4f} ({ms / max(layer.ms, 1e-12):.2f}x)" for w, ms in others),
    ]


ALIGN_HEADERS = ["layer", "in -> out channels", "ms at pruned width", "ms at other widths"]


def alignment_table(a: record.Alignment) -> Any:
    from rich.table import Table

    t = Table(title=term(alignment_headline(a)), title_justify="left", caption=term(a.note))
    for i, h in enumerate(ALIGN_HEADERS):
        t.add_column(h, justify="left" if i < 2 else "right")
    for layer in a.layers:
        t.add_row(*(term(c) for c in _align_cells(layer)))
    return t


def alignment_markdown(a: record.Alignment) -> str:
    lines = [
        f"**{md(alignment_headline(a))}**",
        "",
        "| " + " | ".join(ALIGN_HEADERS) + " |",
        "|" + "---|" * len(ALIGN_HEADERS),
    ]
    lines += ["| " + " | ".join(md(c) for c in _align_cells(x)) + " |" for x in a.layers]
    gains = ", ".join(f"round_to={k}: {v:.2f}x" for k, v in a.gain.items())
    lines += ["", f"Per-channel gain by prune.round_to: {md(gains)}.", "", f"_{md(a.note)}_", ""]
    return "\n".join(lines)
