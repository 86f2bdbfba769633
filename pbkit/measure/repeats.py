"""The repeat interval: where a later bench of the same files on this machine lands (issue #37).

A bench's interval holds the noise of the minute it measured, not the machine's state drifting
between benches minutes apart (:mod:`pbkit.machine.drift`). Two ways to a pruned point's
``repeat_ci``:

- ``bench.repeats: N`` benches the same files N times, ``repeat_spacing_s`` apart, each as a
  single bench does; :func:`combine` pools them into one point per (backend, precision, batch) the
  way ``bench.processes`` pools processes (:func:`pbkit.measure.processes.merge`), and its repeat
  interval is the t-interval over the benches' speed-ups. The drift they measured beyond their
  own noise (:func:`pbkit.core.intervals.drift_from_repeats`) is kept for this machine.
- a single bench (:func:`attach`) widens its own interval by the drift this machine showed
  (``bench.drift: auto``) or the one configured (:func:`pbkit.core.intervals.with_drift`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pbkit.core import intervals, record
from pbkit.machine import drift
from pbkit.measure import processes, uncertainty

Key = tuple[str, str, int]  # backend, precision, batch


@dataclass(frozen=True)
class Measured:
    """A drift that repeats measured, to keep for this machine."""

    machine: str
    backend: str
    precision: str
    drift: drift.Drift


def _key(p: record.LatencyPoint) -> Key:
    return p.backend, p.precision, p.batch


def _machine(p: record.LatencyPoint, bench: record.BenchInfo | None) -> str:
    gpu = bench.gpu.name if bench and bench.gpu and p.device == "cuda" else None
    return drift.machine_key(bench.host if bench else None, gpu)


def combine(
    runs: Sequence[Sequence[record.LatencyPoint]],
    utc: Sequence[str],
    bench: record.BenchInfo | None,
    *,
    confidence: float,
    target: float | None,
    spacing_s: float,
    model: str,
    run_id: str,
) -> tuple[list[record.LatencyPoint], list[Measured]]:
    """One point per (backend, precision, batch, variant) from repeat benches' points (``runs[i]``:
    what bench i measured, ending at ``utc[i]``), each pruned point with its repeat interval, and
    the drift each (backend, precision) showed (from its first batch)."""
    merged = processes.merge(runs, confidence, target)
    found: dict[tuple[str, str], Measured] = {}
    for p in merged:
        if p.variant != "pruned":
            continue
        mine = [q for run in runs for q in run if _key(q) == _key(p) and q.variant == "pruned"]
        speedups = [q.speedup_vs_dense for q in mine if q.speedup_vs_dense]
        cis = [q.speedup_ci for q in mine if q.speedup_vs_dense]
        if len(speedups) < 2:
            continue
        est = uncertainty.session_ci(speedups, cis, confidence)
        sd = intervals.drift_from_repeats(speedups, cis, confidence) or 0.0
        p.repeat_ci = est.ci
        p.repeat = record.RepeatInfo(
            method="t-interval over repeat benches",
            drift_sd=round(sd, 5),
            drift_df=len(speedups) - 1,
            source=f"{len(speedups)} benches {spacing_s:g} s apart",
            confidence=confidence,
            speedups=speedups,
            cis=cis,
            utc=list(utc[: len(speedups)]),
            spacing_s=spacing_s,
        )
        pair = (p.backend, p.precision)
        if pair not in found:
            found[pair] = Measured(
                _machine(p, bench),
                p.backend,
                p.precision,
                drift.Drift(
                    sd=round(sd, 5),
                    repeats=len(speedups),
                    spacing_s=spacing_s,
                    model=model,
                    run_id=run_id,
                    utc=utc[-1],
                ),
            )
    return merged, list(found.values())


def attach(
    points: Sequence[record.LatencyPoint],
    bench: record.BenchInfo | None,
    configured: float | str,
    confidence: float,
    model: str,
) -> None:
    """Each pruned point's repeat interval from a single bench: its interval widened by this
    machine's measured drift (``configured`` auto) or the given one (a number; 0: none)."""
    for p in points:
        if p.variant != "pruned" or not p.speedup_vs_dense or not p.speedup_ci:
            continue
        if configured == "auto":
            known = drift.lookup(_machine(p, bench), p.backend, p.precision, model)
            if known is None:
                continue
            sd, df, source = known.sd, known.df, known.source(model)
        else:
            sd, df, source = float(configured), None, "bench.drift (configured)"
            if sd <= 0:
                continue
        p.repeat_ci = intervals.with_drift(p.speedup_vs_dense, p.speedup_ci, sd, df, confidence)
        p.repeat = record.RepeatInfo(
            method="calibrated drift",
            drift_sd=sd,
            drift_df=df,
            source=source,
            confidence=confidence,
        )
