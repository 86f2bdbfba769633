"""A point's sessions spread over several fresh processes (bench.processes): the merge of their
points (known per-session figures in, the pooled point out) and a real bench in 2 processes."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from pbkit.core import record
from pbkit.measure import processes, uncertainty


def _point(
    variant: str, medians: list[float], speedups: list[float] | None = None
) -> record.LatencyPoint:
    n = 10 * len(medians)
    data = {
        "backend": "ort-cpu",
        "device": "cpu",
        "variant": variant,
        "batch": 1,
        "precision": "fp32",
        "median_ms": math.exp(sum(map(math.log, medians)) / len(medians)),
        "mean_ms": sum(medians) / len(medians),
        "min_ms": min(medians) * 0.9,
        "p90_ms": max(medians) * 1.1,
        "p95_ms": max(medians) * 1.2,
        "p99_ms": max(medians) * 1.3,
        "max_ms": max(medians) * 1.5,
        "std_ms": 0.1,
        "cov": 0.01,
        "n": n,
        "first_call_ms": 5.0,
        "warmup_n": 3,
        "duration_s": 1.0,
        "throughput_ips": 100.0,
        "stable": True,
        "quick": False,
        "sessions": len(medians),
        "session_medians_ms": medians,
        "median_ci": [min(medians), max(medians)],
    }
    if speedups is not None:
        data["speedup_vs_dense"] = sum(speedups) / len(speedups)
        data["speedup_ci"] = [min(speedups), max(speedups)]
        data["ci"] = {
            "method": "t-interval over fresh sessions (log speed-ups)",
            "sessions": len(speedups),
            "session_speedups": speedups,
            "session_cis": [[s * 0.999, s * 1.001] for s in speedups],
            "block_s": 0.1,
        }
    return record.LatencyPoint.model_validate(data)


def test_sessions_are_shared_out_at_least_two_per_process() -> None:
    assert [processes.share(5, p) for p in (1, 2, 3, 5)] == [5, 3, 2, 2]


def test_merged_point_pools_every_sessions_medians_and_speedups() -> None:
    """Two processes that each agree within themselves but not with each other: the merged
    interval holds both processes' speed-ups, the median is the geometric mean of all sessions'."""
    a = [_point("dense", [10.0, 10.1]), _point("pruned", [5.0, 5.05], [2.0, 2.0])]
    b = [_point("dense", [10.0, 10.1]), _point("pruned", [5.5, 5.55], [1.82, 1.82])]
    merged = {p.variant: p for p in processes.merge([a, b], 0.95, 0.02)}
    dense, pruned = merged["dense"], merged["pruned"]
    assert dense.sessions == 4 and dense.session_medians_ms == [10.0, 10.1, 10.0, 10.1]
    assert pruned.median_ms == pytest.approx(
        math.exp(sum(map(math.log, [5.0, 5.05, 5.5, 5.55])) / 4)
    )
    assert pruned.speedup_vs_dense == pytest.approx(dense.median_ms / pruned.median_ms)
    lo, hi = pruned.speedup_ci or [0.0, 0.0]
    assert lo < 1.82 and hi > 2.0  # each process alone had an interval that missed the other
    want = uncertainty.session_ci([2.0, 2.0, 1.82, 1.82], [None] * 4, 0.95).ci
    assert [lo, hi] == pytest.approx(want, rel=1e-3)
    assert pruned.ci is not None and pruned.ci.stop == "processes" and pruned.ci.sessions == 4
    assert "2 processes" in (pruned.ci.method or "") and pruned.flags.processes == 2
    assert dense.n == pruned.n == 40 and dense.min_ms == pytest.approx(9.0)
    # the interval is wider than the ±2% target: both points say so, once
    assert not pruned.stable and not dense.stable
    assert sum("2 processes" in r for r in pruned.unstable_reasons) == 1


def test_points_merged_before_count_every_process_behind_them() -> None:
    """Two repeat benches, each already merged from 2 processes: 4 processes, not 2."""
    runs = []
    for s in (2.0, 1.9):
        points = [_point("dense", [10.0, 10.1]), _point("pruned", [5.0, 5.05], [s, s])]
        for p in points:
            p.flags.processes = 2
        runs.append(points)
    pruned = next(p for p in processes.merge(runs, 0.95, None) if p.variant == "pruned")
    assert pruned.flags.processes == 4 and "in 4 processes" in (pruned.ci.method or "")


def test_one_process_keeps_its_point() -> None:
    a = [_point("dense", [10.0, 10.1]), _point("pruned", [5.0, 5.05], [2.0, 1.99])]
    merged = processes.merge([a], 0.95, 0.02)
    assert [p.model_dump() for p in merged] == [p.model_dump() for p in a]


@pytest.mark.slow
def test_a_bench_in_two_processes_writes_one_merged_point_per_variant(
    pruned_run: Path,
    tmp_path: Path,
    pbkit,  # type: ignore[no-untyped-def]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    r = pbkit(
        "bench", run, "--backend", "ort-cpu",
        "--set", "bench.quick=false", "--set", "bench.processes=2", "--set", "bench.sessions=2",
        "--set", "bench.min_time_s=0.4", "--set", "bench.max_time_s=1",
        "--set", "bench.warmup_s=0.05", "--set", "bench.min_iters=20",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert "bench process 2/2" in r.err
    rec = record.read(run)
    pts = [p for p in rec.latency if p.backend == "ort-cpu"]
    assert sorted(p.variant for p in pts) == ["dense", "pruned"]
    pruned = next(p for p in pts if p.variant == "pruned")
    assert pruned.flags.processes == 2 and pruned.sessions == 4
    assert pruned.ci is not None and len(pruned.ci.session_speedups or []) == 4
    assert rec.bench is not None and rec.bench.processes == 2 and rec.bench.sessions == 2
