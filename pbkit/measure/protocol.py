"""Latency measurement, following ../shared/reference/measurement.md. The backends that run the
models are in :mod:`pbkit.backends`.

Protocol: warm up by time AND count (the first call timed apart); measure by time AND count;
dense and pruned alternate in ``rounds`` (order flipped each round) in the same session;
per query, host wall clock end to end and, on a GPU, CUDA-event compute time; statistics with
nearest-rank percentiles. Stability gate: CoV above the limit, or a GPU throttle reason other than
idle seen while measuring, marks a point unstable; it is measured again, up to ``max_repeats``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

Runner = Callable[[], Any]  # a plain callable (wall clock), or a backends.Runner (also GPU time)
Monitor = Callable[[], AbstractContextManager[Any]]  # a context whose .bad_reasons() mark a point unstable

QUICK = {"warmup_s": 0.02, "warmup_iters": 3, "min_time_s": 0.1, "min_iters": 10, "gpu_min_time_s": 0.1,
         "gpu_min_iters": 10, "rounds": 2, "max_repeats": 1}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads() -> int:
    """All usable cores but one, which is left to the timing harness and the OS.

    On small shared machines a pool spanning every core is preempted constantly (seen: CoV 15-23%
    with 2 threads on 2 cores, 1.4-2% with 1 thread, ResNet-18/CIFAR on ONNX Runtime).
    """
    return max(cores() - 1, 1)


def stats(samples_ms: list[float]) -> dict[str, float | int]:
    """median (primary), mean, min, max, nearest-rank p90/p95/p99, std, coefficient of variation."""
    a = np.sort(np.asarray(samples_ms, dtype=np.float64))
    n = len(a)
    if n == 0:
        raise ValueError("no samples")

    def pct(p: float) -> float:
        return float(a[max(math.ceil(p / 100.0 * n), 1) - 1])

    mean = float(a.mean())
    std = float(a.std(ddof=1)) if n > 1 else 0.0
    return {"median_ms": float(np.median(a)), "mean_ms": mean, "min_ms": float(a[0]), "p90_ms": pct(90),
            "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": float(a[-1]), "std_ms": std,
            "cov": std / mean if mean > 0 else 0.0, "n": n}


def _timed(fn: Runner) -> tuple[float, float | None]:
    """One query: (host wall-clock ms end to end, GPU compute ms or None)."""
    timed = getattr(fn, "timed", None)
    if timed is not None:
        return timed()  # type: ignore[no-any-return]
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


def measure_alternating(runners: dict[str, Runner], settings: dict[str, Any],
                        on_progress: Callable[[str], None] | None = None,
                        warmed: dict[str, tuple[float, int]] | None = None) -> dict[str, dict[str, Any]]:
    """Measure every runner in ``rounds``, alternating order, each round by time AND count.
    Runners already warmed up (``warmed``: first-call ms and count) are not warmed again."""
    rounds = int(settings["rounds"])
    per_time = float(settings["min_time_s"]) / rounds
    per_iters = max(math.ceil(int(settings["min_iters"]) / rounds), 1)
    firsts: dict[str, tuple[float, int]] = dict(warmed or {})
    for name, fn in runners.items():
        if name not in firsts:
            firsts[name] = warm_up(fn, float(settings["warmup_s"]), int(settings["warmup_iters"]))
    samples: dict[str, list[float]] = {k: [] for k in runners}
    gpu: dict[str, list[float]] = {k: [] for k in runners}
    wall: dict[str, float] = dict.fromkeys(runners, 0.0)
    order = list(runners)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            fn, t0, n = runners[name], time.perf_counter(), 0
            while n < per_iters or time.perf_counter() - t0 < per_time:
                host_ms, gpu_ms = _timed(fn)
                samples[name].append(host_ms)
                if gpu_ms is not None:
                    gpu[name].append(gpu_ms)
                n += 1
            wall[name] += time.perf_counter() - t0
        if on_progress is not None:
            on_progress(f"round {r + 1}/{rounds}")
    out: dict[str, dict[str, Any]] = {}
    for name in runners:
        s = stats(samples[name])
        reasons = [f"cov {s['cov']:.1%} > {settings['cov_limit']:.1%}"] if s["cov"] > settings["cov_limit"] else []
        out[name] = {**s, "first_call_ms": firsts[name][0], "warmup_n": firsts[name][1], "duration_s": wall[name],
                     "stable": not reasons, "unstable_reasons": reasons,
                     "gpu_compute": stats(gpu[name]) if gpu[name] else None}
    return out


def measure_point(runners: dict[str, Runner], settings: dict[str, Any], monitor: Monitor | None = None,
                  warmed: dict[str, tuple[float, int]] | None = None) -> dict[str, dict[str, Any]]:
    """The stability gate: measure (alternating); while any model's point is unstable (CoV, or a
    throttle reason other than idle reported by ``monitor``), measure again, up to
    ``max_repeats`` times. Each model keeps the statistics of its last attempt, with
    ``median_ms`` replaced by the median of the attempts' medians, their list and spread."""
    attempts: list[dict[str, dict[str, Any]]] = []
    throttled: set[str] = set()
    for _ in range(max(int(settings.get("max_repeats", 1)), 1)):
        if monitor is not None:
            with monitor() as watch:
                res = measure_alternating(runners, settings, warmed=warmed)
            bad = watch.bad_reasons()
            throttled.update(bad)
            for r in res.values():
                if bad:
                    r["stable"] = False
                    r["unstable_reasons"].append(f"gpu throttle: {', '.join(bad)}")
        else:
            res = measure_alternating(runners, settings, warmed=warmed)
        warmed = {k: (v["first_call_ms"], v["warmup_n"]) for k, v in res.items()}  # warm from now on
        attempts.append(res)
        if all(r["stable"] for r in res.values()):
            break
    out = {}
    for name in runners:
        medians = [a[name]["median_ms"] for a in attempts]
        last = dict(attempts[-1][name])
        last.update(median_ms=float(np.median(medians)), attempts=len(attempts), medians_ms=medians,
                    spread_ms=max(medians) - min(medians), throttle_reasons=sorted(throttled),
                    n=sum(a[name]["n"] for a in attempts), duration_s=sum(a[name]["duration_s"] for a in attempts))
        if last.get("gpu_compute"):
            gmed = [a[name]["gpu_compute"]["median_ms"] for a in attempts if a[name].get("gpu_compute")]
            last["gpu_compute"] = {**last["gpu_compute"], "median_ms": float(np.median(gmed)), "medians_ms": gmed}
        out[name] = last
    return out
