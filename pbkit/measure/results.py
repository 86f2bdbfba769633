"""What the measurement protocol returns, typed: per runner its statistics (host wall clock end to
end; on a GPU also the engine call alone), how its median is known and how it was measured; per
point, with two runners, the speed-up of the second over the first and how its interval was made.
The bench stage turns these into the record's latency points (:class:`pbkit.core.record.
LatencyPoint`); the field names are the record's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(kw_only=True)
class Stats:
    """Statistics of samples (ms): the median (primary), mean, min, nearest-rank p90/p95/p99,
    max, sample std and the coefficient of variation, over ``n`` samples."""

    median_ms: float
    mean_ms: float
    min_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    cov: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        """The fields as the record writes them, unset (None) ones left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(kw_only=True)
class GpuStats(Stats):
    """CUDA-event statistics of the engine call alone; ``median_ms`` is made as the host figure's
    (the last attempt's, or the geometric mean of the sessions')."""

    medians_ms: list[float] | None = None  # per attempt (measure_point)
    session_medians_ms: list[float] | None = None  # per session (measure_sessions)


@dataclass
class Samples:
    """A runner's raw samples (ms): host wall clock per query and, on a GPU, CUDA-event time."""

    host_ms: list[float]
    gpu_ms: list[float]


@dataclass(kw_only=True)
class RunnerResult(Stats):
    """One runner at one point: its statistics and how it was measured."""

    first_call_ms: float
    warmup_n: int
    duration_s: float
    outliers: dict[str, int]  # Tukey's fences: counted, kept
    blocks: int
    stable: bool = True
    unstable_reasons: list[str] = field(default_factory=list)
    gpu_compute: GpuStats | None = None
    median_ci: list[float] | None = None  # with two runners
    # measure_point: the attempts (a GPU throttled: measured again); every figure is the last
    # attempt's, medians_ms lists each attempt's median
    attempts: int = 1
    medians_ms: list[float] = field(default_factory=list)
    spread_ms: float = 0.0
    throttle_reasons: list[str] = field(default_factory=list)
    # measure_sessions over several sessions: median_ms is the geometric mean of theirs
    sessions: int | None = None
    session_medians_ms: list[float] | None = None
    pooled_median_ms: float | None = None  # the median of every session's samples
    samples: Samples | None = None  # with BenchSettings.keep_samples (never in a record)


@dataclass(kw_only=True)
class CiInfo:
    """How the speed-up's interval was made and why measuring stopped."""

    method: str
    confidence: float
    draws: int | None = None  # paired block bootstrap
    sessions: int | None = None  # t-interval over fresh sessions: their count,
    session_speedups: list[float] | None = None  # ... their speed-ups
    session_cis: list[list[float] | None] | None = None  # ... and their own intervals
    blocks: int
    block_s: float
    relative_half_width: float
    target: float | None
    stop: str  # ci (the target was met) | budget (max_time_s spent) | time (no target)
    met: bool

    def as_dict(self) -> dict[str, Any]:
        """The fields as the record writes them: those of the other method left out."""
        optional = ("draws", "sessions", "session_speedups", "session_cis")
        return {
            k: v for k, v in dataclasses.asdict(self).items() if v is not None or k not in optional
        }


@dataclass
class Speedup:
    """The second runner's speed-up over the first: first median / second median per the
    estimate that made the interval, the interval, and how it was made."""

    value: float
    ci: list[float]
    how: CiInfo


@dataclass
class PointResult:
    """A point's runners by name, in the order given, and with two of them the speed-up."""

    runners: dict[str, RunnerResult]
    speedup: Speedup | None = None

    def __getitem__(self, name: str) -> RunnerResult:
        return self.runners[name]
