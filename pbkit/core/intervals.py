"""How a speed-up and its confidence interval read, wherever one is shown: the bench stage's
progress lines and every report (terminal, markdown, HTML). Computing intervals is
:mod:`pbkit.measure.uncertainty`'s; this is the shared reading of what it wrote into records."""

from __future__ import annotations

from collections.abc import Sequence


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
