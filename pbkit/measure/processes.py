"""A point's sessions spread over several fresh processes (``bench.processes``, issue #37).

Why: on a quiet 2-core VM, benches of one run, each a fresh process 10 s apart, spread more than
the sessions inside one bench do (``benchmarks/coverage.py``: ort-cpu's speed-up moved by 1.2%
between benches while its 5 sessions agreed within 0.8%), so one bench's interval covered a repeat
bench's speed-up in well under the ~83% that correct intervals give. What a process brings with it
(memory placement, the runtime's arenas and thread pools) is shared by every session inside it.
Measuring a point's sessions in several processes puts that variation inside the interval.

Each process measures its share of the sessions (``bench.sessions / processes``, at least 2) with
its share of the time budget; :func:`merge` then makes one point of theirs per backend, precision,
batch and variant, the way one process pools its sessions (:mod:`pbkit.measure.protocol`): the
median is the geometric mean of every session's median, the speed-up the ratio of the two, and its
interval the t-interval over every session's speed-up (:func:`uncertainty.session_ci`).
Percentiles cannot be pooled without the samples, which no record keeps: each is the median of the
processes' (min and max: the extremes)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from pbkit.core import record
from pbkit.measure import uncertainty

Key = tuple[str, str, int, str]  # backend, precision, batch, variant


def share(sessions: int, processes: int) -> int:
    """Sessions each process measures: an even share, at least 2 (an interval needs two)."""
    return max(2, math.ceil(sessions / max(processes, 1)))


def _key(p: record.LatencyPoint) -> Key:
    return p.backend, p.precision, p.batch, p.variant


def _medians(p: record.LatencyPoint) -> list[float]:
    return list(p.session_medians_ms or [p.median_ms])


def _processes(ps: Sequence[record.LatencyPoint]) -> int:
    """The processes behind points to merge: each point's own count (a point merged before, e.g.
    one of ``bench.repeats`` benches in ``bench.processes`` processes, brings several)."""
    return sum(p.flags.processes or 1 for p in ps)


def _geomean(xs: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in xs))


def merge(
    runs: Sequence[Sequence[record.LatencyPoint]], confidence: float, target: float | None
) -> list[record.LatencyPoint]:
    """One point per (backend, precision, batch, variant) from the points each process measured
    (in the first process's order); a point only some processes measured keeps theirs."""
    groups: dict[Key, list[record.LatencyPoint]] = {}
    for points in runs:
        for p in points:
            groups.setdefault(_key(p), []).append(p)
    merged = {k: _merged_runner(ps, confidence) for k, ps in groups.items()}
    for (backend, precision, batch, variant), p in merged.items():
        dense = merged.get((backend, precision, batch, "dense"))
        if variant != "pruned" or dense is None:
            continue
        _merge_speedup(p, dense, groups[(backend, precision, batch, variant)], confidence, target)
    return list(merged.values())


def _merged_runner(ps: list[record.LatencyPoint], confidence: float) -> record.LatencyPoint:
    if len(ps) == 1:
        return ps[0]
    first = ps[0]
    medians = [m for p in ps for m in _medians(p)]
    median = _geomean(medians)
    ci = uncertainty.session_ci(medians, [p.median_ci for p in ps], confidence)
    n = sum(p.n for p in ps)
    out = first.model_copy(deep=True)
    out.median_ms = median
    out.session_medians_ms = medians
    out.sessions = len(medians)
    out.pooled_median_ms = statistics.median(p.pooled_median_ms or p.median_ms for p in ps)
    out.median_ci = ci.ci
    out.mean_ms = sum(p.mean_ms * p.n for p in ps) / max(n, 1)
    out.min_ms = min(p.min_ms for p in ps)
    out.max_ms = max(p.max_ms for p in ps)
    for name in ("p90_ms", "p95_ms", "p99_ms", "std_ms"):
        setattr(out, name, statistics.median(getattr(p, name) for p in ps))
    out.cov = out.std_ms / out.mean_ms if out.mean_ms else first.cov
    out.n = n
    out.duration_s = sum(p.duration_s for p in ps)
    out.throughput_ips = 1000.0 * first.batch / median
    out.blocks = sum(p.blocks or 0 for p in ps) or None
    out.stable = all(p.stable for p in ps)
    out.unstable_reasons = list(dict.fromkeys(r for p in ps for r in p.unstable_reasons))
    out.throttle_reasons = sorted({r for p in ps for r in p.throttle_reasons})
    out.attempts = 1 + sum(p.attempts - 1 for p in ps)
    out.medians_ms = medians
    out.spread_ms = max(medians) - min(medians)
    if out.outliers is not None:
        out.outliers = {
            k: sum((p.outliers or {}).get(k, 0) for p in ps) for k in first.outliers or {}
        }
    out.flags.processes = _processes(ps)
    return out


def _merge_speedup(
    p: record.LatencyPoint,
    dense: record.LatencyPoint,
    ps: list[record.LatencyPoint],
    confidence: float,
    target: float | None,
) -> None:
    """The pruned point's speed-up over the merged dense one, with the t-interval over every
    process's sessions."""
    if len(ps) == 1:
        return
    speedups: list[float] = []
    cis: list[list[float] | None] = []
    for q in ps:
        if q.ci is not None and q.ci.session_speedups:
            speedups += q.ci.session_speedups
            cis += list(q.ci.session_cis or [None] * len(q.ci.session_speedups))
        elif q.speedup_vs_dense is not None:
            speedups.append(q.speedup_vs_dense)
            cis.append(q.speedup_ci)
    p.speedup_vs_dense = dense.median_ms / p.median_ms
    if len(speedups) < 2:
        return
    est = uncertainty.session_ci(speedups, cis, confidence)
    p.speedup_ci = est.ci
    met = target is None or est.relative_half_width <= target
    p.ci = record.CiInfo(
        method=f"t-interval over fresh sessions in {_processes(ps)} processes (log speed-ups)",
        confidence=confidence,
        sessions=len(speedups),
        session_speedups=speedups,
        session_cis=cis,
        blocks=p.blocks,
        block_s=ps[0].ci.block_s if ps[0].ci else None,
        relative_half_width=est.relative_half_width,
        target=target,
        stop="processes",
        met=met,
    )
    # a process's own "did not narrow" verdict is replaced by the merged interval's
    for q in (p, dense):
        q.unstable_reasons = [r for r in q.unstable_reasons if not r.startswith("speed-up CI ±")]
        if not met:
            q.unstable_reasons.append(
                f"speed-up CI ±{est.relative_half_width:.1%} > {target:.1%} over"
                f" {len(speedups)} sessions in {_processes(ps)} processes"
            )
        q.stable = not q.unstable_reasons
