"""NVML facts, throttle reasons and the stability gate, against a stand-in NVML library (the real
one needs an NVIDIA driver; the GPU suite covers it)."""

from __future__ import annotations

import time
import types
from typing import Any

import pytest

from pbkit.machine import envinfo, gpumon
from pbkit.measure import protocol as measure
from pbkit.measure.settings import BenchSettings


class NVMLError(Exception):
    pass


def fake_nvml(reasons: int = 0x1, broken: tuple[str, ...] = ()) -> Any:
    """An NVML with one H100-like device; functions named in ``broken`` raise NotSupported."""
    nv = types.SimpleNamespace(
        NVML_CLOCK_GRAPHICS=0, NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2, NVML_TEMPERATURE_GPU=0
    )
    used = {"bytes": 1 << 30}
    funcs = {
        "nvmlDeviceGetCount": lambda: 1,
        "nvmlDeviceGetHandleByIndex": lambda i: ("handle", i),
        "nvmlDeviceGetUUID": lambda h: b"GPU-1234-abcd",
        "nvmlDeviceGetName": lambda h: "NVIDIA H100 80GB HBM3",
        "nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(
            total=80 << 30, used=used["bytes"]
        ),
        "nvmlSystemGetDriverVersion": lambda: "580.65.06",
        "nvmlSystemGetCudaDriverVersion_v2": lambda: 13000,
        "nvmlDeviceGetPersistenceMode": lambda h: 1,
        "nvmlDeviceGetMigMode": lambda h: [0, 0],
        "nvmlDeviceGetEccMode": lambda h: [1, 1],
        "nvmlDeviceGetEnforcedPowerLimit": lambda h: 700000,
        "nvmlDeviceGetMaxClockInfo": lambda h, k: 1980,
        "nvmlDeviceGetCurrPcieLinkGeneration": lambda h: 5,
        "nvmlDeviceGetCurrPcieLinkWidth": lambda h: 16,
        "nvmlDeviceGetMaxPcieLinkGeneration": lambda h: 5,
        "nvmlDeviceGetMaxPcieLinkWidth": lambda h: 16,
        "nvmlDeviceGetClockInfo": lambda h, k: {0: 1755, 1: 1755, 2: 2619}[k],
        "nvmlDeviceGetTemperature": lambda h, s: 41,
        "nvmlDeviceGetPowerUsage": lambda h: 123456,
        "nvmlDeviceGetCurrentClocksEventReasons": lambda h: reasons,
    }
    for name, fn in funcs.items():
        if name in broken:

            def fail(*a: Any, _n: str = name) -> Any:
                raise NVMLError("Not Supported")

            fn = fail
        setattr(nv, name, fn)
    nv.used = used
    return nv


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(**kw: Any) -> Any:
        nv = fake_nvml(**kw)
        monkeypatch.setattr(gpumon, "_nvml", nv)
        monkeypatch.setattr(gpumon, "_nvml_error", None)
        return nv

    return install


def test_throttle_reason_bits_decode() -> None:
    assert gpumon.decode_reasons(0) == []
    assert gpumon.decode_reasons(0x1) == ["gpu_idle"]
    assert gpumon.decode_reasons(0x4 | 0x20) == ["sw_power_cap", "sw_thermal_slowdown"]
    assert gpumon.decode_reasons(0x1000) == ["other_0x1000"]


def test_gpu_record_reads_every_field(nvml: Any) -> None:
    nvml()
    miss: dict[str, str] = {}
    g = gpumon.gpu_record(0, {"index": 0, "name": "NVIDIA H100", "uuid": "GPU-1234-ABCD"}, miss)
    assert miss == {}
    assert (
        g["uuid"] == "GPU-1234-abcd"
        and g["driver_version"] == "580.65.06"
        and g["cuda_driver_version"] == "13.0"
    )
    assert g["persistence_mode"] is True and g["mig_mode"] is False and g["ecc_mode"] is True
    assert g["power_limit_w"] == 700.0 and (g["pcie_gen"], g["pcie_width"]) == (5, 16)
    s = g["state_start"]
    assert (s["sm_clock_mhz"], s["mem_clock_mhz"], s["temperature_c"]) == (1755, 2619, 41)
    assert s["power_w"] == pytest.approx(123.456) and s["throttle_reasons"] == ["gpu_idle"]


def test_fields_that_cannot_be_read_are_null_with_a_reason(nvml: Any) -> None:
    nvml(broken=("nvmlDeviceGetEccMode", "nvmlDeviceGetCurrPcieLinkGeneration"))
    miss: dict[str, str] = {}
    g = gpumon.gpu_record(0, {"index": 0, "name": "x", "uuid": None}, miss)
    assert g["ecc_mode"] is None and "Not Supported" in miss["gpu.ecc_mode"]
    assert g["pcie_gen"] is None and "gpu.pcie_gen" in miss
    assert "index" in miss["gpu.nvml_match"]  # no UUID from torch: matched by index, and said so
    assert g["driver_version"] == "580.65.06"


def test_without_nvml_every_gpu_field_is_null_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gpumon, "_nvml", None)
    monkeypatch.setattr(gpumon, "_nvml_error", "nvidia-ml-py (pynvml) is not installed")
    miss: dict[str, str] = {}
    g = gpumon.gpu_record(0, {"index": 0, "name": "x", "uuid": "GPU-1"}, miss)
    assert g["driver_version"] is None and g["state_start"] is None and g["name"] == "x"
    assert "pynvml" in miss["gpu.nvml"]


def _samples_after(s: gpumon.Sampler, n: int, timeout_s: float = 10.0) -> None:
    """Wait until the sampler's thread has finished ``n`` more samples (or fail past a deadline)."""
    target, deadline = s.samples + n, time.monotonic() + timeout_s
    while s.samples < target:
        assert time.monotonic() < deadline, f"the sampler took {s.samples} of {target} samples"
        time.sleep(0.001)


def test_sampler_tracks_nvml_peak_and_reasons(nvml: Any) -> None:
    nv = nvml(reasons=0x4)
    with gpumon.Sampler("handle", 0.001) as s:
        nv.used["bytes"] = 3 << 30
        _samples_after(s, 2)  # one that may have begun before the change, then one after it
        nv.used["bytes"] = 2 << 30
    assert s.nvml_peak == 3 << 30 and s.bad_reasons() == ["sw_power_cap"]


def test_machine_record_without_a_gpu_says_why() -> None:
    env = envinfo.collect()
    if env["gpus"]:
        pytest.skip("this machine has a GPU")
    assert "torch.cuda.is_available() is False" in env["unavailable"]["gpu"]
    for key in ("python", "torch", "torch_cuda", "onnxruntime", "numpy", "tensorrt"):
        assert key in env["software"]
    if env["software"]["tensorrt"] is None:
        assert "software.tensorrt" in env["unavailable"]
    assert env["host"]["cores_logical"] >= 1 and env["lock_sha256"]["requirements/dev.lock"]


class _Watch:
    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons

    def __enter__(self) -> _Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def bad_reasons(self) -> list[str]:
        return self.reasons


SETTINGS = BenchSettings(
    warmup_s=0.0,
    warmup_iters=1,
    min_time_s=0.0,
    min_iters=10,
    rounds=1,
    cov_limit=10.0,
    max_repeats=3,
)


def test_a_throttle_reason_other_than_idle_makes_a_point_unstable_and_repeated() -> None:
    res = measure.measure_point(
        {"a": lambda: None, "b": lambda: None},
        SETTINGS,
        monitor=lambda: _Watch(["sw_thermal_slowdown"]),
    )
    for r in res.runners.values():
        assert not r.stable and r.attempts == 3
        assert r.throttle_reasons == ["sw_thermal_slowdown"]
        assert any("gpu throttle" in why for why in r.unstable_reasons)


def test_no_throttle_keeps_a_steady_point_stable() -> None:
    res = measure.measure_point({"a": lambda: None}, SETTINGS, monitor=lambda: _Watch([]))
    assert res["a"].stable and res["a"].attempts == 1 and res["a"].throttle_reasons == []


def test_gpu_compute_samples_get_their_own_statistics() -> None:
    class Timed:
        def __call__(self) -> None:
            pass

        def timed(self) -> tuple[float, float | None]:
            return 2.0, 1.5

    res = measure.measure_point({"x": Timed()}, SETTINGS)
    g = res["x"].gpu_compute
    assert g is not None and g.medians_ms == [1.5]
    assert res["x"].median_ms == 2.0 and g.median_ms == 1.5 and g.n == res["x"].n >= 10


def test_a_point_measured_again_takes_its_median_and_interval_from_the_same_attempt() -> None:
    """The first attempt is throttled (and slow), the second is clean: the point's median, its
    interval and the speed-up all come from the clean attempt; the slow one stays in the list."""
    watches = iter([["hw_slowdown"], []])
    cost = {"a": iter([0.004] * 10_000), "b": iter([0.002] * 10_000)}
    slow = {"on": True}

    def runner(name: str) -> Any:
        def call() -> None:
            time.sleep(next(cost[name]) * (3 if slow["on"] else 1))

        return call

    class Watch(_Watch):
        def __exit__(self, *exc: object) -> None:
            slow["on"] = False  # the throttling ends with the first attempt

    res = measure.measure_point(
        {"a": runner("a"), "b": runner("b")}, SETTINGS, monitor=lambda: Watch(next(watches))
    )
    a = res["a"]
    assert a.attempts == 2 and a.stable and a.throttle_reasons == ["hw_slowdown"]
    assert len(a.medians_ms) == 2 and a.medians_ms[0] > 2 * a.medians_ms[1]
    assert a.median_ms == a.medians_ms[1]  # the clean attempt's, not the median of both
    assert a.median_ci is not None and a.median_ci[0] <= a.median_ms <= a.median_ci[1]
    sp = res.speedup
    assert sp is not None and sp.ci[0] <= sp.value <= sp.ci[1]
    assert sp.value == pytest.approx(a.median_ms / res["b"].median_ms, rel=0.1)
