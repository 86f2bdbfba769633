"""How a speed-up and its confidence interval read, wherever one is shown: the bench stage's
progress lines and every report (terminal, markdown, HTML). Computing intervals is
:mod:`pbkit.measure.uncertainty`'s; this is the shared reading of what it wrote into records."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pbkit.core.record import RepeatInfo


def covers_one(ci: Sequence[float] | None) -> bool:
    """A speed-up whose interval holds 1.0 is not distinguishable from no speed-up."""
    return ci is not None and ci[0] <= 1.0 <= ci[1]


def fmt(value: float | None, ci: Sequence[float] | None, digits: int = 2) -> str:
    """``1.75x [1.71, 1.79]``; ``1.02x [0.97, 1.06] ~1`` when the interval holds 1.0."""
    if value is None:
        return "-"
    text = f"{value:.{digits}f}x"
    if ci:
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
        if covers_one(ci):
            text += " ~1"
    return text


def repeat_text(ci: Sequence[float] | None, how: RepeatInfo | None = None, digits: int = 2) -> str:
    """How a repeat interval reads: ``[1.70, 1.97], where a later bench on this machine lands
    (this bench's interval with a drift of 2.3%: measured on this machine by 6 benches 60 s apart
    on ...)``; ``how`` is the record's ``repeat``. Empty without an interval."""
    if not ci:
        return ""
    text = f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}], where a later bench on this machine lands"
    sd, source = (how.drift_sd, how.source) if how is not None else (None, None)
    if how is not None and how.method == "t-interval over repeat benches":
        return text + f" (over {source}; drift between them {sd or 0:.1%})"
    if sd is not None:
        text += f" (this bench's interval with a drift of {sd:.1%}" + (
            f": {source})" if source else ")"
        )
    return text


def pair_coverage(points: Sequence[float], cis: Sequence[Sequence[float]]) -> float | None:
    """How often one run's interval covers an independent repeat run's point estimate: over every
    ordered pair of distinct runs (i, j), the share where ``cis[i]`` holds ``points[j]``. An
    interval that describes only the noise inside one run covers its repeats less often than its
    confidence says; None with fewer than two runs."""
    n = len(points)
    if n != len(cis):
        raise ValueError("one interval per point")
    if n < 2:
        return None
    hits = sum(
        1 for i in range(n) for j in range(n) if i != j and cis[i][0] <= points[j] <= cis[i][1]
    )
    return hits / (n * (n - 1))


def drift_split(rounds: Sequence[Sequence[float]]) -> tuple[float, float] | None:
    """Where repeat benches' spread comes from, when several bench protocols take turns in each
    round (``rounds[i][j]``: protocol j's speed-up in round i, minutes apart): the standard
    deviation of the log speed-up that every protocol measured in a round shares (the machine's
    state drifting between rounds) and the one left within a round (two-way analysis of variance
    without interaction). Both relative (log units, ~fractions of the speed-up); None with fewer
    than two rounds or two protocols."""
    r = len(rounds)
    p = min((len(row) for row in rounds), default=0)
    if r < 2 or p < 2:
        return None
    x = [[math.log(v) for v in row[:p]] for row in rounds]
    grand = statistics.fmean(v for row in x for v in row)
    row_means = [statistics.fmean(row) for row in x]
    col_means = [statistics.fmean(x[i][j] for i in range(r)) for j in range(p)]
    resid = sum(
        (x[i][j] - row_means[i] - col_means[j] + grand) ** 2 for i in range(r) for j in range(p)
    ) / ((r - 1) * (p - 1))
    between = max(0.0, statistics.variance(row_means) - resid / p)
    return math.sqrt(between), math.sqrt(resid)


def round_coverage(
    rounds: Sequence[Sequence[tuple[float, Sequence[float]]]],
) -> tuple[float | None, float | None]:
    """:func:`pair_coverage` split by when the two benches ran (``rounds[i][j]``: protocol j's
    speed-up and interval in round i): over ordered pairs of benches in the same round (different
    protocols, minutes apart at most) and over pairs in different rounds. An interval that holds
    the machine's state but not its drift covers the first far more often than the second."""
    same = [0, 0]
    other = [0, 0]
    cells = [(i, j, b) for i, row in enumerate(rounds) for j, b in enumerate(row)]
    for i, j, (_, ci) in cells:
        for k, m, (point, _) in cells:
            if (i, j) == (k, m):
                continue
            tally = same if i == k else other
            tally[0] += ci[0] <= point <= ci[1]
            tally[1] += 1
    return (
        same[0] / same[1] if same[1] else None,
        other[0] / other[1] if other[1] else None,
    )


def _z(confidence: float) -> float:
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def log_variance(ci: Sequence[float], z: float) -> float:
    """The variance of a log estimate that its interval of normal quantile ``z`` says it has."""
    return ((math.log(ci[1]) - math.log(ci[0])) / (2 * z)) ** 2


def with_drift(
    value: float,
    ci: Sequence[float],
    drift_sd: float,
    drift_df: int | None = None,
    confidence: float = 0.95,
) -> list[float]:
    """The repeat interval: a bench's interval widened by how far this machine drifts between
    benches minutes apart (``drift_sd``, the relative standard deviation of a speed-up between
    repeat benches beyond their own noise, :func:`drift_from_repeats`, estimated with ``drift_df``
    degrees of freedom; None: known). The two variances add in log units around the bench's own
    centre; the quantile is Student's t with Welch-Satterthwaite's degrees of freedom, so a drift
    estimated from a handful of repeats widens the interval as much as it is uncertain. It covers
    the speed-up a later bench of the same files on this machine measures about as often as correct
    intervals of two estimates do (~83% at 95%), where the bench's own interval holds only the
    noise of its minute."""
    from scipy import stats

    z = _z(confidence)
    lo, hi = math.log(ci[0]), math.log(ci[1])
    centre = (lo + hi) / 2 if ci[0] <= value <= ci[1] else math.log(value)
    var = log_variance(ci, z) + drift_sd**2
    q = z
    if drift_df and drift_sd > 0:
        q = float(stats.t.ppf(0.5 + confidence / 2, var**2 / (drift_sd**4 / drift_df)))
    half = q * math.sqrt(var)
    return [math.exp(centre - half), math.exp(centre + half)]


def drift_from_repeats(
    values: Sequence[float], cis: Sequence[Sequence[float] | None], confidence: float = 0.95
) -> float | None:
    """How far repeat benches of one point (``values``, each with its own interval) drift apart
    beyond their own noise: the standard deviation of their log speed-ups, less the mean variance
    each bench's interval says it has (method of moments, floored at 0). Relative; None with fewer
    than two benches."""
    if len(values) < 2:
        return None
    z = _z(confidence)
    between = statistics.variance([math.log(v) for v in values])
    inside = [log_variance(c, z) for c in cis if c and c[0] > 0]
    return math.sqrt(max(0.0, between - (statistics.fmean(inside) if inside else 0.0)))
