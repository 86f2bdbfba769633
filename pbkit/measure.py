"""Latency measurement (../shared/reference/measurement.md) and the backends that run models.

Protocol: warm up by time AND count (the first call timed apart); measure by time AND count;
dense and pruned alternate in ``rounds`` (order flipped each round) in the same session;
statistics with nearest-rank percentiles; CoV above the limit marks a point unstable.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pbkit.errors import PbkitError, choices_error

Runner = Callable[[], Any]

QUICK = {"warmup_s": 0.02, "warmup_iters": 3, "min_time_s": 0.1, "min_iters": 10, "rounds": 2, "max_repeats": 1}


@dataclass(frozen=True)
class Backend:
    name: str
    device: str
    precision: str
    artifact: str  # "model" (pbkit model file) or "onnx"
    description: str
    install_hint: str
    check: Callable[[], str | None] = field(repr=False)  # None when available, else the reason
    make: Callable[[Path, int, int, int], Runner] = field(repr=False)  # (artifact, input_size, batch, threads)


def _input(input_size: int, batch: int) -> Any:
    from pbkit.counts import example_input

    return example_input(input_size, batch=batch, seed=1)


def _torch_cpu(path: Path, input_size: int, batch: int, threads: int) -> Runner:
    import torch

    from pbkit.checkpoint import load_model

    torch.set_num_threads(threads)
    model, _, _ = load_model(path)
    x = _input(input_size, batch)

    def run() -> Any:
        with torch.inference_mode():
            return model(x)

    return run


def ort_session(path: Path, threads: int, providers: list[str] | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=providers or ["CPUExecutionProvider"])


def _ort_cpu(path: Path, input_size: int, batch: int, threads: int) -> Runner:
    sess = ort_session(path, threads)
    feed = {sess.get_inputs()[0].name: _input(input_size, batch).numpy()}

    def run() -> Any:
        return sess.run(None, feed)

    return run


def _has(module: str) -> str | None:
    import importlib.util

    return None if importlib.util.find_spec(module) is not None else f"python package {module!r} is not installed"


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in [
        Backend("torch-cpu", "cpu", "fp32", "model", "PyTorch eager on the CPU (inference_mode)", "torch",
                lambda: _has("torch"), _torch_cpu),
        Backend("ort-cpu", "cpu", "fp32", "onnx", "ONNX Runtime, CPUExecutionProvider, all graph optimisations",
                "onnxruntime", lambda: _has("onnxruntime"), _ort_cpu),
    ]
}


def get(name: str) -> Backend:
    if name not in BACKENDS:
        raise choices_error("backend", name, list(BACKENDS))
    b = BACKENDS[name]
    reason = b.check()
    if reason is not None:
        raise PbkitError(f"backend {name!r} is not available here: {reason}; install {b.install_hint}")
    return b


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


def _timed(fn: Runner) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6


def warm_up(fn: Runner, seconds: float, iters: int) -> tuple[float, int]:
    """Run until both ``seconds`` and ``iters`` are reached; return (first-call ms, count)."""
    first = _timed(fn)
    n, t_end = 1, time.perf_counter() + seconds
    while n < iters or time.perf_counter() < t_end:
        fn()
        n += 1
    return first, n


def measure_alternating(runners: dict[str, Runner], settings: dict[str, Any],
                        on_progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Measure every runner in ``rounds``, alternating order, each round by time AND count."""
    rounds = int(settings["rounds"])
    per_time = float(settings["min_time_s"]) / rounds
    per_iters = max(math.ceil(int(settings["min_iters"]) / rounds), 1)
    firsts: dict[str, tuple[float, int]] = {}
    for name, fn in runners.items():
        firsts[name] = warm_up(fn, float(settings["warmup_s"]), int(settings["warmup_iters"]))
    samples: dict[str, list[float]] = {k: [] for k in runners}
    wall: dict[str, float] = dict.fromkeys(runners, 0.0)
    order = list(runners)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            fn, t0, n = runners[name], time.perf_counter(), 0
            while n < per_iters or time.perf_counter() - t0 < per_time:
                samples[name].append(_timed(fn))
                n += 1
            wall[name] += time.perf_counter() - t0
        if on_progress is not None:
            on_progress(f"round {r + 1}/{rounds}")
    out: dict[str, dict[str, Any]] = {}
    for name in runners:
        s = stats(samples[name])
        reasons = [f"cov {s['cov']:.1%} > {settings['cov_limit']:.1%}"] if s["cov"] > settings["cov_limit"] else []
        out[name] = {**s, "first_call_ms": firsts[name][0], "warmup_n": firsts[name][1], "duration_s": wall[name],
                     "stable": not reasons, "unstable_reasons": reasons}
    return out


def measure_point(runners: dict[str, Runner], settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The stability gate: measure (alternating); while any model's point is unstable, measure
    again, up to ``max_repeats`` times. Each model keeps the statistics of its last attempt, with
    ``median_ms`` replaced by the median of the attempts' medians, their list and spread."""
    attempts = []
    for _ in range(max(int(settings.get("max_repeats", 1)), 1)):
        attempts.append(measure_alternating(runners, settings))
        if all(r["stable"] for r in attempts[-1].values()):
            break
    out = {}
    for name in runners:
        medians = [a[name]["median_ms"] for a in attempts]
        last = dict(attempts[-1][name])
        last.update(median_ms=float(np.median(medians)), attempts=len(attempts), medians_ms=medians,
                    spread_ms=max(medians) - min(medians),
                    n=sum(a[name]["n"] for a in attempts), duration_s=sum(a[name]["duration_s"] for a in attempts))
        out[name] = last
    return out
