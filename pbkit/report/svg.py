"""Inline SVG charts for the HTML report: written here, in a few lines of Python, so the page needs
no plotting library, no script from a CDN and no network when opened. Every mark carries its data
(``data-x``, ``data-y``, ``data-run``, ...) so a browser test, or a reader, can check it against
the records; the axes carry their mapping (``data-x-min`` ... ``data-plot-right``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Any

MACS = "#555"  # the counted (MACs) markers: one colour, whatever the backend
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


@dataclass
class Point:
    x: float
    y: float
    series: str  # colour and legend entry (a backend, a machine)
    label: str  # the hover text
    kind: str = "measured"  # measured: filled circle; macs: hollow diamond (the counted speed-up)
    x_err: tuple[float, float] | None = None  # an interval (lo, hi)
    y_err: float | None = None  # +- (a std over seeds)
    attrs: dict[str, Any] = field(
        default_factory=dict
    )  # data-* attributes (the filters match them)
    unstable: bool = False  # measured on an unstable point: drawn hollow (data-unstable="1")


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _attrs(d: dict[str, Any]) -> str:
    return "".join(f' data-{k}="{escape(str(v))}"' for k, v in d.items() if v is not None)


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (faster and more accurate), by x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return sorted(front)


class _Frame:
    def __init__(
        self,
        xs: list[float],
        ys: list[float],
        width: int,
        height: int,
        pad_x: float = 0.05,
        pad_y: float = 0.08,
        x_floor: float | None = None,
        left: int = 58,
        legend: int = 0,
    ) -> None:
        self.w, self.h = width, height
        self.left, self.right, self.top, self.bottom = left, width - 16 - legend, 16, height - 46
        lo, hi = min(xs), max(xs)
        if x_floor is not None:
            lo = min(lo, x_floor)
        span = (hi - lo) or max(abs(hi), 1.0) * 0.2
        self.x0, self.x1 = lo - pad_x * span, hi + pad_x * span
        lo, hi = min(ys), max(ys)
        span = (hi - lo) or max(abs(hi), 1.0) * 0.02
        self.y0, self.y1 = lo - pad_y * span, hi + pad_y * span

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def py(self, y: float) -> float:
        return self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)

    def open(self, cls: str, title: str) -> str:
        return (
            f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.w} {self.h}"'
            f' width="{self.w}" height="{self.h}" role="img" aria-label="{escape(title)}"'
            f' data-x-min="{self.x0:.6g}" data-x-max="{self.x1:.6g}" data-y-min="{self.y0:.6g}"'
            f' data-y-max="{self.y1:.6g}" data-plot-left="{self.left}"'
            f' data-plot-right="{self.right}" data-plot-top="{self.top}"'
            f' data-plot-bottom="{self.bottom}">'
        )

    def axes(self, x_label: str, y_label: str, y_ticks: bool = True) -> list[str]:
        out = [
            f'<rect class="frame" x="{self.left}" y="{self.top}" width="{self.right - self.left}" '
            f'height="{self.bottom - self.top}"/>'
        ]
        for t in ticks(self.x0, self.x1):
            x = self.px(t)
            out.append(
                f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{self.top}"'
                f' y2="{self.bottom}"/><text class="tick" x="{x:.1f}" y="{self.bottom + 14}"'
                f' text-anchor="middle">{_fmt(t)}</text>'
            )
        for t in ticks(self.y0, self.y1) if y_ticks else []:
            y = self.py(t)
            out.append(
                f'<line class="grid" x1="{self.left}" x2="{self.right}" y1="{y:.1f}"'
                f' y2="{y:.1f}"/><text class="tick" x="{self.left - 5}" y="{y + 3:.1f}"'
                f' text-anchor="end">{_fmt(t)}</text>'
            )
        out.append(
            f'<text class="label" x="{(self.left + self.right) / 2:.0f}" y="{self.h - 8}" '
            f'text-anchor="middle">{escape(x_label)}</text>'
        )
        out.append(
            f'<text class="label" transform="translate(14 {(self.top + self.bottom) / 2:.0f})'
            f' rotate(-90)" text-anchor="middle">{escape(y_label)}</text>'
        )
        return out


def colours(names: list[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def scatter(
    points: list[Point],
    x_label: str,
    y_label: str,
    title: str,
    width: int = 760,
    height: int = 420,
    front: bool = True,
    diagonal: bool = False,
) -> str:
    """Filled circles (measured) and hollow diamonds (counted, MACs) per series, interval bars,
    each series' Pareto front over its measured points, a dashed line at x = 1 (no speed-up) and,
    with ``diagonal``, the line y = x."""
    xs = [v for p in points for v in (p.x,) + (p.x_err or ())]
    ys = [
        v for p in points for v in ((p.y,) if p.y_err is None else (p.y - p.y_err, p.y + p.y_err))
    ]
    f = _Frame(xs, ys, width, height, x_floor=1.0, legend=180)
    out = [
        f.open("plot scatter", title),
        f"<title>{escape(title)}</title>",
        *f.axes(x_label, y_label),
    ]
    if f.x0 <= 1.0 <= f.x1:
        out.append(
            f'<line class="ref" x1="{f.px(1):.1f}" x2="{f.px(1):.1f}" y1="{f.top}"'
            f' y2="{f.bottom}"/>'
        )
    if diagonal:
        lo, hi = max(f.x0, f.y0), min(f.x1, f.y1)
        if hi > lo:
            out.append(
                f'<line class="ref" x1="{f.px(lo):.1f}" y1="{f.py(lo):.1f}" x2="{f.px(hi):.1f}" '
                f'y2="{f.py(hi):.1f}"/>'
            )
    series = list(dict.fromkeys(p.series for p in points if p.kind == "measured"))
    col = {**colours(series), **{p.series: MACS for p in points if p.kind != "measured"}}
    for s in series:
        mine = [p for p in points if p.series == s and p.kind == "measured"]
        if front and len(mine) > 1:
            steps = pareto([(p.x, p.y) for p in mine])
            pts = " ".join(f"{f.px(x):.1f},{f.py(y):.1f}" for x, y in steps)
            out.append(
                f'<polyline class="pareto" data-series="{escape(s)}" points="{pts}"'
                f' stroke="{col[s]}"/>'
            )
    for p in points:
        c, x, y = col[p.series], f.px(p.x), f.py(p.y)
        data = _attrs(
            {"x": f"{p.x:.6g}", "y": f"{p.y:.6g}", "series": p.series, "kind": p.kind, **p.attrs}
        )
        err = ""
        if p.x_err:
            err += (
                f'<line class="err" x1="{f.px(p.x_err[0]):.1f}" x2="{f.px(p.x_err[1]):.1f}"'
                f' y1="{y:.1f}" y2="{y:.1f}" stroke="{c}"/>'
            )
        if p.y_err:
            err += (
                f'<line class="err" x1="{x:.1f}" x2="{x:.1f}" y1="{f.py(p.y - p.y_err):.1f}" '
                f'y2="{f.py(p.y + p.y_err):.1f}" stroke="{c}"/>'
            )
        if p.kind == "measured":
            # (unstable: hollow, white inside so that the whole circle still takes the hover)
            fill = f'fill="#fff" stroke="{c}" data-unstable="1"' if p.unstable else f'fill="{c}"'
            mark = f'<circle class="pt measured" cx="{x:.2f}" cy="{y:.2f}" r="5" {fill}{data}>'
            out.append(
                f'<g class="mark"{_attrs({"series": p.series, **p.attrs})}>{err}{mark}'
                f"<title>{escape(p.label)}</title></circle></g>"
            )
        else:
            d = f"M{x:.2f} {y - 6:.2f}L{x + 6:.2f} {y:.2f}L{x:.2f} {y + 6:.2f}L{x - 6:.2f} {y:.2f}Z"
            out.append(
                f'<g class="mark"{_attrs({"series": p.series, **p.attrs})}>{err}<path class="pt'
                f' macs" d="{d}" stroke="{c}" data-cx="{x:.2f}"'
                f' data-cy="{y:.2f}"{data}><title>{escape(p.label)}</title></path></g>'
            )
    unstable = any(p.unstable for p in points)
    out.append(_legend(series, col, f, any(p.kind == "macs" for p in points), front, unstable))
    return "".join(out) + "</svg>"


UNSTABLE_LEGEND = "hollow: unstable (reasons in the record)"


def _legend(
    series: list[str],
    col: dict[str, str],
    f: _Frame,
    macs: bool,
    front: bool,
    unstable: bool = False,
) -> str:
    items = [(f'<circle cx="0" cy="-4" r="4" fill="{col[s]}"/>', s) for s in series]
    if unstable:
        items.append(('<circle cx="0" cy="-4" r="4" fill="none" stroke="#555"/>', UNSTABLE_LEGEND))
    if macs:
        items.append(
            (
                '<path d="M0 -10L6 -4L0 2L-6 -4Z" fill="none" stroke="#555"/>',
                "MACs speed-up (counted)",
            )
        )
    if front:
        items.append(
            (
                '<line x1="-6" x2="6" y1="-4" y2="-4" stroke="#555" stroke-width="2"/>',
                "Pareto front",
            )
        )
    out, y = ['<g class="legend">'], f.top + 8
    x = f.right + 22 if f.w - f.right > 100 else f.left + 14
    for mark, text in items:
        out.append(
            f'<g transform="translate({x} {y})">{mark}<text x="10" y="0">{escape(text)}</text></g>'
        )
        y += 15
    return "".join(out) + "</g>"


def lines(
    series: dict[str, list[tuple[float, float]]],
    x_label: str,
    y_label: str,
    title: str,
    width: int = 330,
    height: int = 220,
) -> str:
    """A small line chart (per-epoch curves)."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return ""
    f = _Frame([x for x, _ in pts], [y for _, y in pts], width, height)
    out = [
        f.open("plot curve", title),
        f"<title>{escape(title)}</title>",
        *f.axes(x_label, y_label),
    ]
    col = colours(list(series))
    for name, s in series.items():
        path = " ".join(f"{f.px(x):.1f},{f.py(y):.1f}" for x, y in s)
        out.append(
            f'<polyline class="line" data-series="{escape(name)}" points="{path}"'
            f' stroke="{col[name]}"/>'
        )
        out += [
            f'<circle class="pt" cx="{f.px(x):.1f}" cy="{f.py(y):.1f}" r="2.5" fill="{col[name]}"'
            f' data-x="{x:.6g}" data-y="{y:.6g}"><title>{escape(name)}: {_fmt(x)},'
            f" {_fmt(y)}</title></circle>"
            for x, y in s
        ]
    if len(series) > 1:
        out.append(_legend(list(series), col, f, False, False))
    return "".join(out) + "</svg>"


def dots(
    rows: list[tuple[str, dict[str, tuple[float, list[float] | None]]]],
    title: str,
    x_label: str,
    width: int = 680,
) -> str:
    """One line per item, one dot per series (machine) with its interval: a speed-up per machine."""
    names = sorted({m for _, per in rows for m in per})
    col = colours(names)
    xs = [v for _, per in rows for x, ci in per.values() for v in (x, *(ci or ()))]
    height = max(70 + 22 * len(rows), 60 + 15 * len(names))
    left = min(12 + 6 * max((len(label) for label, _ in rows), default=10), 420)
    f = _Frame(
        xs, [0.0, float(len(rows))], width + left, height, x_floor=1.0, left=left, legend=160
    )
    f.y0, f.y1 = -0.5, len(rows) - 0.5
    out = [
        f.open("plot dots", title),
        f"<title>{escape(title)}</title>",
        *f.axes(x_label, "", y_ticks=False),
    ]
    if f.x0 <= 1.0 <= f.x1:
        out.append(
            f'<line class="ref" x1="{f.px(1):.1f}" x2="{f.px(1):.1f}" y1="{f.top}"'
            f' y2="{f.bottom}"/>'
        )
    for i, (label, per) in enumerate(rows):
        y0 = f.py(len(rows) - 1 - i)
        out.append(
            f'<text class="tick" x="{f.left - 6}" y="{y0 + 3:.1f}"'
            f' text-anchor="end">{escape(label)}</text>'
        )
        for j, m in enumerate(names):
            if m not in per:
                continue
            x, ci = per[m]
            y = y0 + (j - (len(names) - 1) / 2) * 5
            if ci:
                out.append(
                    f'<line class="err" x1="{f.px(ci[0]):.1f}" x2="{f.px(ci[1]):.1f}" y1="{y:.1f}" '
                    f'y2="{y:.1f}" stroke="{col[m]}"/>'
                )
            out.append(
                f'<circle class="pt" cx="{f.px(x):.2f}" cy="{y:.2f}" r="4" fill="{col[m]}"'
                f' data-x="{x:.6g}" data-series="{escape(m)}"><title>{escape(label)} on'
                f" {escape(m)}:"
                f" {x:.3f}x{f' [{ci[0]:.3f}, {ci[1]:.3f}]' if ci else ''}</title></circle>"
            )
    out.append(_legend(names, col, f, False, False))
    return "".join(out) + "</svg>"
