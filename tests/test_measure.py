from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from pbkit.core import config
from pbkit.core.errors import PbkitError
from pbkit.measure import backends
from pbkit.measure import protocol as measure
from pbkit.measure.results import PointResult
from pbkit.measure.settings import QUICK, BenchSettings, for_device


def test_stats_use_nearest_rank_percentiles() -> None:
    s = measure.stats([float(v) for v in range(1, 101)])  # 1..100 ms
    assert (s.median_ms, s.p90_ms, s.p95_ms, s.p99_ms) == (50.5, 90.0, 95.0, 99.0)
    assert (s.min_ms, s.max_ms, s.n) == (1.0, 100.0, 100)
    assert s.cov == pytest.approx(s.std_ms / s.mean_ms)
    one = measure.stats([2.0])
    assert one.std_ms == 0.0 and one.p99_ms == 2.0


def test_dense_and_pruned_alternate_and_respect_time_and_count() -> None:
    calls: list[str] = []

    def runner(name: str, seconds: float):  # type: ignore[no-untyped-def]
        def run() -> None:
            calls.append(name)
            time.sleep(seconds)

        return run

    settings = BenchSettings(
        warmup_s=0.01, warmup_iters=3, min_time_s=0.04, min_iters=8, rounds=4, cov_limit=0.5
    )
    res = measure.measure_alternating(
        {"dense": runner("dense", 0.002), "pruned": runner("pruned", 0.001)}, settings
    )
    # after warm-up, the measured sequence switches model at least 2 * rounds - 1 times
    measured = calls[res["dense"].warmup_n + res["pruned"].warmup_n :]
    switches = sum(1 for a, b in zip(measured, measured[1:], strict=False) if a != b)
    assert switches >= 3
    assert res["dense"].warmup_n >= 3 and res["dense"].n >= 8
    assert res["pruned"].n > res["dense"].n  # same time budget, faster model
    assert res["dense"].median_ms > res["pruned"].median_ms
    assert res["dense"].duration_s >= 0.04


def test_unstable_points_are_flagged() -> None:
    seq = iter([0.0005, 0.006] * 1000)
    settings = BenchSettings(
        warmup_s=0.0, warmup_iters=1, min_time_s=0.0, min_iters=20, rounds=1, cov_limit=0.025
    )
    res = measure.measure_alternating({"x": lambda: time.sleep(next(seq))}, settings)
    assert not res["x"].stable and res["x"].unstable_reasons[0].startswith("cov")
    assert res.speedup is None  # one runner: nothing to compare


def test_unknown_backend_lists_choices() -> None:
    with pytest.raises(PbkitError, match="ort-cpu"):
        backends.get("tensorrt-fast")


def test_unavailable_backend_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    b = backends.BACKENDS["ort-cpu"]
    monkeypatch.setitem(
        backends.BACKENDS,
        "ort-cpu",
        dataclasses.replace(b, check=lambda: "python package 'onnxruntime' is not installed"),
    )
    with pytest.raises(PbkitError, match="not available here.*install onnxruntime"):
        backends.get("ort-cpu")


def test_default_threads_leave_a_core_free() -> None:
    assert measure.default_threads() == max(measure.cores() - 1, 1)


def test_a_cpu_point_is_measured_until_its_speedup_is_known_well_enough() -> None:
    def sleeper(ms: float):  # type: ignore[no-untyped-def]
        return lambda: time.sleep(ms / 1e3)

    settings = BenchSettings(
        warmup_s=0.0,
        warmup_iters=2,
        min_time_s=0.05,
        min_iters=10,
        rounds=2,
        cov_limit=0.5,
        block_s=0.02,
        ci_target=0.05,
        max_time_s=3.0,
        confidence=0.95,
    )
    res = measure.measure_point({"dense": sleeper(4.0), "pruned": sleeper(2.0)}, settings)
    pruned, sp = res["pruned"], res.speedup
    assert sp is not None
    ci = sp.how
    assert ci.stop == "ci" and ci.met and ci.relative_half_width <= 0.05 and pruned.stable
    assert ci.method.startswith("paired block bootstrap") and ci.draws and ci.sessions is None
    lo, hi = sp.ci
    speedup = res["dense"].median_ms / pruned.median_ms
    assert (
        lo <= speedup <= hi and 1.5 < speedup < 2.1
    )  # 4 ms vs 2 ms sleeps (plus the timer's overhead)
    dense_ci = res["dense"].median_ci
    assert dense_ci is not None and dense_ci[0] <= res["dense"].median_ms <= dense_ci[1]
    assert (
        res["dense"].attempts == 1
        and pruned.blocks >= 2
        and set(pruned.outliers) == {"low_mild", "low_severe", "high_mild", "high_severe"}
    )
    # a target no noisy machine meets: measuring stops at the budget and says so
    noisy = iter([0.0005, 0.004] * 100000)
    tight = dataclasses.replace(settings, ci_target=0.0001, max_time_s=0.3)
    res = measure.measure_point(
        {"dense": lambda: time.sleep(next(noisy)), "pruned": sleeper(1.0)}, tight
    )
    assert res.speedup is not None
    ci = res.speedup.how
    assert ci.stop == "budget" and not ci.met and not res["pruned"].stable
    assert res["pruned"].unstable_reasons[0].startswith("speed-up CI ±")
    assert 0.3 <= res["pruned"].duration_s < 1.5


def test_stable_points_are_measured_once() -> None:
    settings = BenchSettings(
        warmup_s=0.0,
        warmup_iters=1,
        min_time_s=0.0,
        min_iters=10,
        rounds=1,
        cov_limit=10.0,
        max_repeats=3,
    )
    res = measure.measure_point({"a": lambda: None, "b": lambda: None}, settings)
    assert res["a"].attempts == res["b"].attempts == 1


class _Stub:
    """A runner whose latency is simulated: ``ms`` times the session's factor, with 2% jitter per
    query; each call sleeps 0.2 ms of real time so blocks hold a bounded number of queries."""

    def __init__(self, ms: float, rng: np.random.Generator) -> None:
        self.ms, self.rng, self.closed = ms, rng, False

    def __call__(self) -> None:
        self.timed()

    def timed(self) -> tuple[float, None]:
        time.sleep(0.0002)
        return float(self.ms * np.exp(self.rng.normal(0, 0.02))), None


def _opener(factors: list[float], opened: list[dict[str, _Stub]]):  # type: ignore[no-untyped-def]
    """Session k: dense 4 ms, pruned 2 ms, the pruned one slowed by ``factors[k]`` (what a fresh
    session changes)."""
    import contextlib

    rng = np.random.default_rng(0)

    @contextlib.contextmanager
    def session(k: int):  # type: ignore[no-untyped-def]
        runners = {"dense": _Stub(4.0, rng), "pruned": _Stub(2.0 * factors[k % len(factors)], rng)}
        opened.append(runners)
        try:
            yield runners, None
        finally:
            for r in runners.values():
                r.closed = True

    return session


SESSIONS = BenchSettings(
    warmup_s=0.0,
    warmup_iters=2,
    min_time_s=0.06,
    min_iters=30,
    rounds=2,
    cov_limit=0.5,
    block_s=0.01,
    confidence=0.95,
    sessions=3,
)


def test_a_point_is_measured_over_fresh_sessions_until_the_speedup_is_known_well_enough() -> None:
    factors = [1.0, 1.03, 0.97, 1.01, 0.99, 1.02, 0.98]
    opened: list[dict[str, _Stub]] = []
    seen: list[int] = []
    per_session: list[dict[str, int]] = []

    def on_session(k: int, r: PointResult) -> None:
        seen.append(k)
        per_session.append({name: x.n for name, x in r.runners.items()})

    res = measure.measure_sessions(
        _opener(factors, opened),
        dataclasses.replace(SESSIONS, ci_target=0.03, max_time_s=5.0),
        on_session=on_session,
    )
    pruned, dense, sp = res["pruned"], res["dense"], res.speedup
    assert sp is not None
    ci = sp.how
    assert ci.method.startswith("t-interval over fresh sessions") and ci.stop == "ci" and ci.met
    assert ci.sessions == len(opened) == len(seen) >= 3 and seen == list(range(1, len(opened) + 1))
    assert ci.draws is None and ci.session_speedups and len(ci.session_speedups) == ci.sessions
    assert all(r.closed for s in opened for r in s.values())  # every session's runners were closed
    assert ci.relative_half_width <= 0.03 and pruned.stable and pruned.sessions == ci.sessions
    assert pruned.attempts == 1  # sessions are not tries: nothing was measured again
    # the speed-up is the ratio of the two medians, each the geometric mean of the sessions' medians
    assert sp.value == pytest.approx(dense.median_ms / pruned.median_ms)
    assert pruned.session_medians_ms is not None
    assert pruned.median_ms == pytest.approx(
        float(np.exp(np.mean(np.log(pruned.session_medians_ms))))
    )
    truth = 2.0 / float(np.exp(np.mean(np.log(factors[: ci.sessions]))))
    assert sp.ci[0] <= truth <= sp.ci[1]
    # pooled: every session's queries count once, and the raw samples are not kept in the result
    assert pruned.n == sum(s["pruned"] for s in per_session) and dense.n == sum(
        s["dense"] for s in per_session
    )
    assert pruned.samples is None and pruned.pooled_median_ms is not None
    # per session, a share of the minimum: the sessions together measured at least min_time_s
    assert dense.duration_s >= 0.06 and dense.n >= 30


def test_a_point_whose_sessions_disagree_stops_at_the_budget_and_says_so() -> None:
    opened: list[dict[str, _Stub]] = []
    t0 = time.perf_counter()
    res = measure.measure_sessions(
        _opener([1.0, 1.3, 0.7], opened),
        dataclasses.replace(SESSIONS, ci_target=0.01, max_time_s=0.2),
    )
    wall = time.perf_counter() - t0
    assert res.speedup is not None
    ci = res.speedup.how
    assert ci.stop == "budget" and not ci.met and not res["pruned"].stable
    assert "sessions (time budget)" in res["pruned"].unstable_reasons[0]
    # the budget is the point's wall clock: 0.2 s per model, warm-ups included
    assert ci.sessions is not None
    assert 0.4 <= wall < 1.5 and len(opened) == ci.sessions >= 3


def test_one_session_is_the_block_bootstrap_of_one_measure_point() -> None:
    opened: list[dict[str, _Stub]] = []
    res = measure.measure_sessions(
        _opener([1.0], opened),
        dataclasses.replace(SESSIONS, sessions=1, ci_target=0.05, max_time_s=2.0),
    )
    assert res.speedup is not None
    assert len(opened) == 1 and res.speedup.how.method.startswith("paired block bootstrap")
    assert res["pruned"].sessions is None and res["pruned"].session_medians_ms is None


def _bench(**changes: object) -> config.BenchCfg:
    return config.load(None, [f"bench.{k}={v}" for k, v in changes.items()]).bench


def test_settings_are_made_for_each_device_with_quick_over_either() -> None:
    b = _bench()
    cpu, gpu = for_device(b, "cpu"), for_device(b, "cuda")
    assert (cpu.min_time_s, cpu.min_iters, cpu.max_time_s) == (
        b.min_time_s,
        b.min_iters,
        b.max_time_s,
    )
    assert (gpu.min_time_s, gpu.min_iters, gpu.max_time_s) == (
        b.gpu_min_time_s,
        b.gpu_min_iters,
        b.gpu_max_time_s,
    )
    assert cpu.sessions == b.sessions and cpu.ci_target == b.ci_target and not cpu.keep_samples
    with pytest.raises(dataclasses.FrozenInstanceError):
        cpu.min_time_s = 1.0  # type: ignore[misc]
    later = cpu.later_session()
    assert later.warmup_iters == min(b.warmup_iters, b.session_warmup_iters)
    quick = _bench(quick="true")
    for device in ("cpu", "cuda"):
        s = for_device(quick, device)
        assert (s.min_time_s, s.max_time_s, s.sessions, s.ci_target) == (
            QUICK.min_time_s,
            QUICK.max_time_s,
            1,
            None,
        )
        assert s.cov_limit == quick.cov_limit and s.confidence == quick.confidence


class _GpuStub(_Stub):
    """A stub that also reports GPU compute time: 80% of its host time."""

    def timed(self) -> tuple[float, float]:  # type: ignore[override]
        host, _ = super().timed()
        return host, 0.8 * host


def test_gpu_time_is_pooled_over_sessions_like_the_host_time() -> None:
    import contextlib

    rng = np.random.default_rng(1)

    @contextlib.contextmanager
    def session(k: int):  # type: ignore[no-untyped-def]
        yield {"dense": _GpuStub(4.0, rng), "pruned": _GpuStub(2.0, rng)}, None

    res = measure.measure_sessions(session, SESSIONS)
    for r in res.runners.values():
        g = r.gpu_compute
        assert g is not None and g.session_medians_ms is not None and g.medians_ms is None
        assert len(g.session_medians_ms) == SESSIONS.sessions and g.n == r.n
        assert g.median_ms == pytest.approx(float(np.exp(np.mean(np.log(g.session_medians_ms)))))
        assert list(g.as_dict())[-1] == "session_medians_ms" and "medians_ms" not in g.as_dict()


def test_memory_figures_are_written_in_the_records_layout() -> None:
    from pbkit.core import record
    from pbkit.measure.memory import GpuMemory, MemoryFigures

    m = MemoryFigures(rss_before_bytes=1, rss_peak_bytes=3, rss_after_bytes=2, samples=4)
    assert list(m.as_dict()) == ["rss_before_bytes", "rss_peak_bytes", "rss_after_bytes", "samples"]
    m.gpu = GpuMemory(
        nvml_used_before_bytes=None,
        torch_allocated_before_bytes=0,
        nvml_used_peak_bytes=None,
        nvml_used_after_bytes=None,
        torch_peak_allocated_bytes=5,
        torch_peak_reserved_bytes=6,
        nvml="unavailable (no NVML handle; see env.unavailable)",
    )
    m.backend = {"plan_bytes": 7}
    d = m.as_dict()
    assert list(d) == [
        "rss_before_bytes",
        "nvml_used_before_bytes",
        "torch_allocated_before_bytes",
        "rss_peak_bytes",
        "rss_after_bytes",
        "samples",
        "nvml_used_peak_bytes",
        "nvml_used_after_bytes",
        "torch_peak_allocated_bytes",
        "torch_peak_reserved_bytes",
        "nvml",
        "plan_bytes",
    ]
    assert d["nvml_used_before_bytes"] is None  # a GPU without NVML says so, as before
    mem = record.Memory(**d)
    assert mem.model_dump() == d and mem.plan_bytes == 7 and mem["samples"] == 4
