"""The measurement protocol's test settings, typed (what MLPerf LoadGen calls TestSettings): how
long and how often a point is warmed up and measured, when its speed-up is known well enough, and
over how many fresh sessions. :func:`for_device` makes them from ``cfg.bench`` for a CPU or a GPU
backend, with ``bench.quick``'s override (:data:`QUICK`) applied; the bench stage, the latency
table and the closed loop of latency-targeted pruning all measure with what it returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pbkit.core.config import BenchCfg


@dataclass(frozen=True)
class BenchSettings:
    """One point's protocol (:mod:`pbkit.measure.protocol`)."""

    warmup_s: float  # warm-up by time AND count; the first call is timed apart
    warmup_iters: int
    min_time_s: float  # per runner: measured at least this long AND this many queries
    min_iters: int
    cov_limit: float  # a runner measured alone (no speed-up to judge): CoV above this is unstable
    rounds: int = 1  # at least this many alternating blocks per runner (ABBA order)
    block_s: float = 0.1  # a block's length (never more than min_time_s / rounds)
    block_iters: int = 3  # ... and at least this many queries
    ci_target: float | None = None  # go on while the speed-up's CI half-width is wider (relative)
    max_time_s: float = 0.0  # ... until this many seconds per runner (at least min_time_s)
    confidence: float = 0.95
    max_repeats: int = 1  # a point a GPU throttled while measuring is measured again
    sessions: int = 1  # fresh sessions per point at least (measure_sessions)
    session_warmup_iters: int | None = None  # a later session's warm-up count (None: warmup_iters)
    keep_samples: bool = False  # results carry their raw samples (to pool sessions)

    def later_session(self) -> BenchSettings:
        """A later session's settings: a fresh runner re-warms for ``warmup_s`` and
        ``session_warmup_iters`` calls (allocation, first-call effects), not the whole first
        warm-up again."""
        if self.session_warmup_iters is None:
            return self
        return dataclasses.replace(
            self, warmup_iters=min(self.warmup_iters, self.session_warmup_iters)
        )


@dataclass(frozen=True)
class Quick:
    """``bench.quick``: a short protocol for smoke tests and CI, over either device's settings
    (the record flags it). A GPU point is then measured as briefly as a CPU one."""

    warmup_s: float = 0.02
    warmup_iters: int = 3
    min_time_s: float = 0.1
    min_iters: int = 10
    rounds: int = 2
    max_repeats: int = 1
    block_s: float = 0.02
    max_time_s: float = 0.1
    ci_target: float | None = None
    sessions: int = 1

    def apply(self, s: BenchSettings) -> BenchSettings:
        return dataclasses.replace(s, **dataclasses.asdict(self))


QUICK = Quick()


def for_device(b: BenchCfg, device: str) -> BenchSettings:
    """The protocol's settings for a CPU or a GPU (``cuda``) backend from ``cfg.bench``: a GPU
    point is measured for ``gpu_min_time_s``, ``gpu_min_iters`` and at most ``gpu_max_time_s``;
    ``bench.quick`` replaces what :data:`QUICK` sets."""
    gpu = device == "cuda"
    s = BenchSettings(
        warmup_s=b.warmup_s,
        warmup_iters=b.warmup_iters,
        min_time_s=b.gpu_min_time_s if gpu else b.min_time_s,
        min_iters=b.gpu_min_iters if gpu else b.min_iters,
        cov_limit=b.cov_limit,
        rounds=b.rounds,
        block_s=b.block_s,
        ci_target=b.ci_target,
        max_time_s=b.gpu_max_time_s if gpu else b.max_time_s,
        confidence=b.confidence,
        max_repeats=b.max_repeats,
        sessions=b.sessions,
        session_warmup_iters=b.session_warmup_iters,
    )
    return QUICK.apply(s) if b.quick else s
