"""How well a measured speed-up is known: a paired block bootstrap.

Dense and pruned are measured in short alternating blocks (ABBA order), so whatever the machine
does (frequency, other load) falls on both alike. A block pair is the unit of resampling: each
bootstrap draw picks block pairs with replacement, keeps each pair together, and recomputes both
medians over the samples of the chosen blocks and their ratio. The percentile interval of the
draws is the confidence interval of the speed-up (and of each median). ``relative_half_width`` is
what the adaptive stop compares with ``bench.ci_target``.

Within one session that interval misses what changes between fresh sessions of the same files
(where the runtime lays out memory, which kernels it picks): measured on a 2-core VM, a new
session pair moves the speed-up by about 1% (CoV) while one session repeats within 0.5%. A point
measured over several fresh sessions (``bench.sessions``) is therefore summarised per session and
its interval is a t-interval over the sessions' log speed-ups (:func:`session_ci`), which holds
both the between-session and the within-session variation.

Outliers are classified, never dropped: Tukey's fences on each model's samples (mild beyond 1.5
IQR, severe beyond 3 IQR), reported as counts.

How an interval reads (``1.75x [1.71, 1.79]``, ``~1`` where it holds 1.0) is
:mod:`pbkit.core.intervals`', shared with the reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pbkit.core import intervals

DRAWS = 1000
CHECK_DRAWS = 200  # while measuring: a cheaper estimate decides whether to go on


@dataclass(frozen=True)
class RatioEstimate:
    """median(a) / median(b) with its paired block-bootstrap interval, and both medians'."""

    ratio: float
    ci: list[float]
    a_ci: list[float]
    b_ci: list[float]
    blocks: int
    draws: int
    confidence: float
    relative_half_width: float


@dataclass(frozen=True)
class SessionEstimate:
    """The geometric mean of per-session estimates with its t-interval over the sessions."""

    value: float
    ci: list[float]
    sessions: int
    relative_half_width: float
    confidence: float


def ratio_ci(
    blocks_a: list[list[float]],
    blocks_b: list[list[float]],
    confidence: float = 0.95,
    draws: int = DRAWS,
    seed: int = 0,
) -> RatioEstimate:
    """median(a) / median(b) over all samples, with its paired block-bootstrap interval and the
    intervals of both medians. ``blocks_a[i]`` and ``blocks_b[i]`` were measured back to back."""
    if len(blocks_a) != len(blocks_b) or not blocks_a:
        raise ValueError("need the same number (>= 1) of blocks for both models")
    a = [np.asarray(x, dtype=float) for x in blocks_a]
    b = [np.asarray(x, dtype=float) for x in blocks_b]
    med_a, med_b = float(np.median(np.concatenate(a))), float(np.median(np.concatenate(b)))
    k = len(a)
    rng = np.random.default_rng(seed)
    ra, rb = np.empty(draws), np.empty(draws)
    for i, pick in enumerate(rng.integers(0, k, size=(draws, k))):
        ra[i] = np.median(np.concatenate([a[j] for j in pick]))
        rb[i] = np.median(np.concatenate([b[j] for j in pick]))
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = tail, 100 - tail
    ratios = ra / rb
    ratio = med_a / med_b
    ci = [float(np.percentile(ratios, lo)), float(np.percentile(ratios, hi))]
    return RatioEstimate(
        ratio=ratio,
        ci=ci,
        a_ci=[float(np.percentile(ra, lo)), float(np.percentile(ra, hi))],
        b_ci=[float(np.percentile(rb, lo)), float(np.percentile(rb, hi))],
        blocks=k,
        draws=draws,
        confidence=confidence,
        relative_half_width=relative_half_width(ratio, ci),
    )


def session_ci(
    values: list[float], within: list[list[float] | None], confidence: float = 0.95
) -> SessionEstimate:
    """The geometric mean of per-session estimates (speed-ups or medians, all > 0) with a
    t-interval over their logs (S - 1 degrees of freedom). Each session's own interval
    (``within``, may be None) sets a floor under the variance: sessions can agree by chance, but
    none is known better than its own samples allow, so a handful of lucky sessions never yields an
    interval narrower than the noise inside them."""
    from scipy import stats as st

    x = np.log(np.asarray(values, dtype=float))
    s = len(x)
    if s < 2:
        raise ValueError("need at least 2 sessions")
    z = float(st.norm.ppf(0.5 + confidence / 2))
    floors = [intervals.log_variance(c, z) for c in within if c and c[0] > 0]
    var = max(float(x.var(ddof=1)), float(np.mean(floors)) if floors else 0.0)
    half = float(st.t.ppf(0.5 + confidence / 2, s - 1)) * (var / s) ** 0.5
    m = float(x.mean())
    value, ci = float(np.exp(m)), [float(np.exp(m - half)), float(np.exp(m + half))]
    return SessionEstimate(
        value=value,
        ci=ci,
        sessions=s,
        relative_half_width=relative_half_width(value, ci),
        confidence=confidence,
    )


def relative_half_width(value: float, ci: list[float]) -> float:
    return (ci[1] - ci[0]) / 2 / value if value else float("inf")


def outliers(samples: list[float]) -> dict[str, int]:
    """Tukey's fences: how many samples lie beyond 1.5 IQR (mild) and 3 IQR (severe), low or
    high."""
    x = np.asarray(samples, dtype=float)
    if x.size < 4:
        return {"low_mild": 0, "low_severe": 0, "high_mild": 0, "high_severe": 0}
    q1, q3 = np.percentile(x, [25, 75])
    iqr = q3 - q1
    return {
        "low_severe": int((x < q1 - 3 * iqr).sum()),
        "low_mild": int(((x < q1 - 1.5 * iqr) & (x >= q1 - 3 * iqr)).sum()),
        "high_mild": int(((x > q3 + 1.5 * iqr) & (x <= q3 + 3 * iqr)).sum()),
        "high_severe": int((x > q3 + 3 * iqr).sum()),
    }
