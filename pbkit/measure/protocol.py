"""Latency measurement, following ../shared/reference/measurement.md. The backends that run the
models are in :mod:`pbkit.backends`.

Protocol: warm up by time AND count (the first call timed apart); measure by time AND count, dense
and pruned alternating in short blocks (ABBA) in the same session, over several fresh sessions
(``sessions``); per query, host wall clock end to end and, on a GPU, CUDA-event compute time;
statistics with nearest-rank percentiles. The gate judges what matters, the speed-up: measuring goes
on until its confidence interval is narrower than ``ci_target`` or ``max_time_s`` is spent, and says
which. In one session the interval is a paired block bootstrap; over fresh sessions it is a
t-interval over the sessions' speed-ups, which also holds what changes from one session to the next
(:mod:`pbkit.measure.uncertainty`). A GPU throttle reason other than idle seen while measuring marks
a point unstable; it is measured again, up to ``max_repeats``.

The settings are a :class:`~pbkit.measure.settings.BenchSettings`; the results are
:mod:`pbkit.measure.results`' dataclasses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from pbkit.measure import uncertainty
from pbkit.measure.results import (
    CiInfo,
    GpuStats,
    PointResult,
    RunnerResult,
    Samples,
    Speedup,
    Stats,
)
from pbkit.measure.settings import BenchSettings

Runner = Callable[[], Any]  # a plain callable (wall clock), or a backends.Runner (also GPU time)
Monitor = Callable[
    [], AbstractContextManager[Any]
]  # a context whose .bad_reasons() mark a point unstable
# opens fresh session number i: its runners and, for those already warmed up, (first-call ms,
# count); leaving the context closes them
Session = Callable[
    [int], AbstractContextManager[tuple[dict[str, Runner], dict[str, tuple[float, int]] | None]]
]


def cores() -> int:
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )


def default_threads() -> int:
    """All usable cores but one, which is left to the timing harness and the OS.

    On small shared machines a pool spanning every core is preempted constantly (seen: CoV 15-23%
    with 2 threads on 2 cores, 1.4-2% with 1 thread, ResNet-18/CIFAR on ONNX Runtime).
    """
    return max(cores() - 1, 1)


@contextlib.contextmanager
def pinned(threads: int) -> Iterator[int | None]:
    """Pin the measuring thread to one core (the last this process may use, away from core 0 where
    interrupts tend to land) while a single-threaded point is measured; restored afterwards.
    Yields the core, or None where the OS does not allow it or the runner uses more threads (they
    would inherit the one core)."""
    if threads != 1 or not hasattr(os, "sched_setaffinity") or cores() < 2:
        yield None
        return
    before = os.sched_getaffinity(0)
    core = max(before)
    try:
        os.sched_setaffinity(0, {core})
    except OSError:
        yield None
        return
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


def stats(samples_ms: list[float]) -> Stats:
    """median (primary), mean, min, max, nearest-rank p90/p95/p99, std, coefficient of variation."""
    a = np.sort(np.asarray(samples_ms, dtype=np.float64))
    n = len(a)
    if n == 0:
        raise ValueError("no samples")

    def pct(p: float) -> float:
        return float(a[max(math.ceil(p / 100.0 * n), 1) - 1])

    mean = float(a.mean())
    std = float(a.std(ddof=1)) if n > 1 else 0.0
    return Stats(
        median_ms=float(np.median(a)),
        mean_ms=mean,
        min_ms=float(a[0]),
        p90_ms=pct(90),
        p95_ms=pct(95),
        p99_ms=pct(99),
        max_ms=float(a[-1]),
        std_ms=std,
        cov=std / mean if mean > 0 else 0.0,
        n=n,
    )


def _fields(s: Stats) -> dict[str, Any]:
    """A Stats' own fields (to make a RunnerResult or a GpuStats of it)."""
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(Stats)}


def _timed(fn: Runner) -> tuple[float, float | None]:
    """One query: (host wall-clock ms end to end, GPU compute ms or None)."""
    timed = getattr(fn, "timed", None)
    if timed is not None:
        return timed()
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6, None


def warm_up(fn: Runner, seconds: float, iters: int) -> tuple[float, int]:
    """Run until both ``seconds`` and ``iters`` are reached; return (first-call ms, count).
    The first call (an engine build, a compilation) is timed apart."""
    first, _ = _timed(fn)
    n, t_end = 1, time.perf_counter() + seconds
    while n < iters or time.perf_counter() < t_end:
        fn()
        n += 1
    return first, n


def _block(fn: Runner, seconds: float, iters: int, gpu: list[float]) -> tuple[list[float], float]:
    """One block: queries until ``seconds`` AND ``iters`` are reached; host ms per query."""
    out: list[float] = []
    t0 = time.perf_counter()
    while len(out) < iters or time.perf_counter() - t0 < seconds:
        host_ms, gpu_ms = _timed(fn)
        out.append(host_ms)
        if gpu_ms is not None:
            gpu.append(gpu_ms)
    return out, time.perf_counter() - t0


def measure_alternating(
    runners: dict[str, Runner],
    settings: BenchSettings,
    on_progress: Callable[[str], None] | None = None,
    warmed: dict[str, tuple[float, int]] | None = None,
) -> PointResult:
    """Measure the runners in short alternating blocks (ABBA: the order flips every pair) until
    each has run ``min_time_s`` AND ``min_iters`` and at least ``rounds`` blocks, then on, while
    the speed-up of the second runner over the first is known less well than ``ci_target`` (the
    relative half-width of its confidence interval), until ``max_time_s`` per runner. Runners
    already warmed up (``warmed``: first-call ms and count) are not warmed again.

    Each runner's statistics come with its outliers (classified, kept), ``blocks`` and, with two
    runners, its median's interval; the point then also carries the speed-up of the second runner
    (first median / its median), its interval and how that was made (why measuring stopped)."""
    names = list(runners)
    min_time, min_iters = settings.min_time_s, settings.min_iters
    rounds = max(settings.rounds, 1)
    block_s = min(settings.block_s, min_time / rounds)  # blocks never outlast min_time_s
    block_iters = max(settings.block_iters, 1)
    target = settings.ci_target
    budget = max(settings.max_time_s, min_time)
    confidence = settings.confidence
    firsts: dict[str, tuple[float, int]] = dict(warmed or {})
    for name, fn in runners.items():
        if name not in firsts:
            firsts[name] = warm_up(fn, settings.warmup_s, settings.warmup_iters)
    blocks: dict[str, list[list[float]]] = {k: [] for k in runners}
    gpu: dict[str, list[float]] = {k: [] for k in runners}
    wall: dict[str, float] = dict.fromkeys(runners, 0.0)
    paired = len(names) == 2
    stop, next_check = "time", 0.0
    while True:
        for name in names if len(blocks[names[0]]) % 2 == 0 else names[::-1]:
            samples, seconds = _block(runners[name], block_s, block_iters, gpu[name])
            blocks[name].append(samples)
            wall[name] += seconds
        done_min = (
            all(wall[k] >= min_time and sum(map(len, blocks[k])) >= min_iters for k in names)
            and len(blocks[names[0]]) >= rounds
        )
        if on_progress is not None:
            on_progress(f"block {len(blocks[names[0]])}")
        if not done_min:
            continue
        if not paired or target is None:
            break
        if min(wall.values()) >= next_check:
            check = uncertainty.ratio_ci(
                blocks[names[0]], blocks[names[1]], confidence, uncertainty.CHECK_DRAWS
            )
            if check.relative_half_width <= target:
                stop = "ci"
                break
            next_check = min(wall.values()) * 1.15  # check again after 15% more time
        if min(wall.values()) >= budget:
            stop = "budget"
            break
    out = PointResult({})
    for name in names:
        flat = [x for b in blocks[name] for x in b]
        out.runners[name] = RunnerResult(
            **_fields(stats(flat)),
            first_call_ms=firsts[name][0],
            warmup_n=firsts[name][1],
            duration_s=wall[name],
            gpu_compute=GpuStats(**_fields(stats(gpu[name]))) if gpu[name] else None,
            outliers=uncertainty.outliers(flat),
            blocks=len(blocks[name]),
            # for measure_sessions, which pools the sessions' samples
            samples=Samples(flat, list(gpu[name])) if settings.keep_samples else None,
        )
    if paired:
        a, b = names
        est = uncertainty.ratio_ci(blocks[a], blocks[b], confidence)
        out[a].median_ci, out[b].median_ci = est.a_ci, est.b_ci
        half = est.relative_half_width
        met = target is None or half <= target
        how = CiInfo(
            method="paired block bootstrap (percentile)",
            confidence=confidence,
            draws=est.draws,
            blocks=est.blocks,
            block_s=block_s,
            relative_half_width=half,
            target=target,
            stop=stop,
            met=met,
        )
        out.speedup = Speedup(est.ratio, est.ci, how)
        if not met:
            reason = f"speed-up CI ±{half:.1%} > {target:.1%} after {wall[b]:.1f} s (time budget)"
            for name in names:
                out[name].stable = False
                out[name].unstable_reasons.append(reason)
    else:
        for name in names:
            r = out[name]
            if r.cov > settings.cov_limit:
                r.stable = False
                r.unstable_reasons.append(f"cov {r.cov:.1%} > {settings.cov_limit:.1%}")
    return out


def measure_point(
    runners: dict[str, Runner],
    settings: BenchSettings,
    monitor: Monitor | None = None,
    warmed: dict[str, tuple[float, int]] | None = None,
) -> PointResult:
    """Measure a point (:func:`measure_alternating`, which keeps going until the speed-up's
    interval is narrow enough or the time budget is spent). A GPU throttle reason other than idle
    reported by ``monitor`` while measuring marks the point unstable and it is measured again, up
    to ``max_repeats`` times. Every figure of the point (each model's median, percentiles and
    interval, the speed-up and its interval) comes from its last attempt, the one that ran without
    throttling where one did; ``medians_ms`` lists every attempt's median and ``spread_ms`` their
    range, so a reader sees how much the throttled attempts differed."""
    attempts: list[PointResult] = []
    throttled: set[str] = set()
    for _ in range(max(settings.max_repeats, 1)):
        if monitor is None:
            attempts.append(measure_alternating(runners, settings, warmed=warmed))
            break
        with monitor() as watch:
            res = measure_alternating(runners, settings, warmed=warmed)
        bad = watch.bad_reasons()
        throttled.update(bad)
        for r in res.runners.values():
            if bad:
                r.stable = False
                r.unstable_reasons.append(f"gpu throttle: {', '.join(bad)}")
        warmed = {
            k: (v.first_call_ms, v.warmup_n) for k, v in res.runners.items()
        }  # warm from now on
        attempts.append(res)
        if not bad:
            break
    out = PointResult({}, attempts[-1].speedup)
    for name in runners:
        medians = [a[name].median_ms for a in attempts]
        last = attempts[-1][name]
        gpu = last.gpu_compute
        if gpu is not None:
            gmed = [g.median_ms for a in attempts if (g := a[name].gpu_compute) is not None]
            gpu = dataclasses.replace(gpu, medians_ms=gmed)
        out.runners[name] = dataclasses.replace(
            last,
            attempts=len(attempts),
            medians_ms=medians,
            spread_ms=max(medians) - min(medians),
            throttle_reasons=sorted(throttled),
            n=sum(a[name].n for a in attempts),
            duration_s=sum(a[name].duration_s for a in attempts),
            gpu_compute=gpu,
        )
    return out


def measure_sessions(
    open_session: Session,
    settings: BenchSettings,
    monitor: Monitor | None = None,
    on_session: Callable[[int, PointResult], None] | None = None,
) -> PointResult:
    """Measure a point over fresh sessions: ``settings.sessions`` of them at least, each a
    :func:`measure_point` of ``min_time_s / sessions`` (and ``min_iters / sessions``) per runner,
    then one more while the speed-up's interval over the sessions is wider than ``ci_target`` and
    the point took less than ``max_time_s`` per runner (wall clock: the sessions' builds and
    warm-ups count, so the budget bounds the point's whole time). With ``sessions`` 1 this is one
    :func:`measure_point` in one session (the interval is then the block bootstrap's).

    Each runner's figures pool the samples of every session (percentiles, mean, CoV, outliers),
    except ``median_ms``: the geometric mean of the sessions' medians, so that the speed-up is the
    ratio of the two medians; ``session_medians_ms`` lists them and ``pooled_median_ms`` is the
    median of all samples. The speed-up's ``how`` says how the interval was made, the sessions'
    speed-ups and why measuring stopped."""
    n_min = max(settings.sessions, 1)
    if n_min == 1:
        with open_session(0) as (runners, warmed):
            return measure_point(runners, settings, monitor=monitor, warmed=warmed)
    min_time, min_iters = settings.min_time_s, settings.min_iters
    per = dataclasses.replace(
        settings,
        min_time_s=min_time / n_min,
        min_iters=max(math.ceil(min_iters / n_min), 1),
        max_time_s=0.0,
        ci_target=None,
        keep_samples=True,
    )
    target = settings.ci_target
    budget = max(settings.max_time_s, min_time)
    confidence = settings.confidence
    results: list[PointResult] = []
    stop = "time"
    started = time.perf_counter()
    while True:
        with open_session(len(results)) as (runners, warmed):
            results.append(measure_point(runners, per, monitor=monitor, warmed=warmed))
        if on_session is not None:
            on_session(len(results), results[-1])
        names = list(results[0].runners)
        if len(results) < n_min:
            continue
        if len(names) != 2 or target is None:
            break
        est = _session_speedup(results, names, confidence)
        if est.relative_half_width <= target:
            stop = "ci"
            break
        if time.perf_counter() - started >= budget * len(names):  # warm-ups and builds count too
            stop = "budget"
            break
    return _pool(results, names, confidence, target, stop, per.block_s)


def _session_speedup(
    results: list[PointResult], names: list[str], confidence: float
) -> uncertainty.SessionEstimate:
    a, b = names
    return uncertainty.session_ci(
        [r[a].median_ms / r[b].median_ms for r in results],
        [r.speedup.ci if r.speedup else None for r in results],
        confidence,
    )


def _pool(
    results: list[PointResult],
    names: list[str],
    confidence: float,
    target: float | None,
    stop: str,
    block_s: float,
) -> PointResult:
    out = PointResult({})
    for name in names:
        rs = [r[name] for r in results]
        flat = [x for r in rs for x in (r.samples.host_ms if r.samples else [])]
        gflat = [x for r in rs for x in (r.samples.gpu_ms if r.samples else [])]
        med = uncertainty.session_ci(
            [r.median_ms for r in rs], [r.median_ci for r in rs], confidence
        )
        gpu = None
        if gflat:
            gmed = [r.gpu_compute.median_ms for r in rs if r.gpu_compute]
            gpu = GpuStats(
                **{
                    **_fields(stats(gflat)),
                    "median_ms": float(np.exp(np.mean(np.log(gmed)))),
                },
                session_medians_ms=gmed,
            )
        s = stats(flat)
        out.runners[name] = RunnerResult(
            **{**_fields(s), "median_ms": med.value},
            pooled_median_ms=s.median_ms,
            median_ci=med.ci,
            session_medians_ms=[r.median_ms for r in rs],
            first_call_ms=rs[0].first_call_ms,
            warmup_n=rs[0].warmup_n,
            duration_s=sum(r.duration_s for r in rs),
            stable=all(r.stable for r in rs),
            unstable_reasons=list(dict.fromkeys(x for r in rs for x in r.unstable_reasons)),
            gpu_compute=gpu,
            outliers=uncertainty.outliers(flat),
            blocks=sum(r.blocks for r in rs),
            attempts=1 + sum(r.attempts - 1 for r in rs),  # > 1: a session measured again
            medians_ms=[r.median_ms for r in rs],
            spread_ms=max(r.median_ms for r in rs) - min(r.median_ms for r in rs),
            throttle_reasons=sorted({x for r in rs for x in r.throttle_reasons}),
            sessions=len(rs),
        )
    if len(names) == 2:
        a, b = names
        est = _session_speedup(results, names, confidence)
        half = est.relative_half_width
        met = target is None or half <= target
        how = CiInfo(
            method="t-interval over fresh sessions (log speed-ups)",
            confidence=confidence,
            sessions=len(results),
            session_speedups=[r.speedup.value for r in results if r.speedup],
            session_cis=[r.speedup.ci if r.speedup else None for r in results],
            blocks=out[b].blocks,
            block_s=block_s,
            relative_half_width=half,
            target=target,
            stop=stop,
            met=met,
        )
        out.speedup = Speedup(out[a].median_ms / out[b].median_ms, est.ci, how)
        if not met:
            reason = (
                f"speed-up CI ±{half:.1%} > {target:.1%} after {out[b].duration_s:.1f} s,"
                f" {len(results)} sessions (time budget)"
            )
            for name in names:
                out[name].stable = False
                out[name].unstable_reasons.append(reason)
    return out
