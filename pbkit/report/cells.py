"""Number and cell formatting shared by the tables."""

from __future__ import annotations


def si(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def acc(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def delta(base: float | None, after: float | None) -> str:
    return "-" if base is None or after is None else f"{after - base:+.2f} points"
