"""The GPU suite: runs where torch sees a CUDA device (marker ``gpu``), skips cleanly elsewhere.

Every GPU backend is benchmarked dense vs pruned on the shared small run: parity against fp32
torch passes its gate (fp32 tolerance, fp16 cosine), CUDA-event compute time and NVML memory are
recorded, and the flags say how it ran.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pbkit import stages
from pbkit.core import record
from pbkit.machine import envinfo
from pbkit.measure import backends

pytestmark = pytest.mark.gpu


@pytest.fixture
def run(pruned_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(pruned_run, dst)
    return dst


def _bench(run: Path, backend: str, *sets: str) -> record.Record:
    if backends.BACKENDS[backend].check() is not None:
        pytest.skip(f"{backend}: {backends.BACKENDS[backend].check()}")
    return stages.bench_run(
        run,
        [f"bench.backends=[{backend}]", "bench.quick=true", "bench.batches=[1,4]", *sets],
        quiet=True,
    )


def _check(rec: record.Record, backend: str, precisions: set[str]) -> None:
    pts = [p for p in rec.latency if p.backend == backend]
    assert {(p.precision, p.batch, p.variant) for p in pts} == {
        (pr, b, v) for pr in precisions for b in (1, 4) for v in ("dense", "pruned")
    }
    for p in pts:
        assert p.device == "cuda" and p.gpu_compute is not None
        assert (
            0 < p.gpu_compute["median_ms"] <= p.median_ms * 1.05
        )  # the engine call fits in the round trip
        m = p.memory or {}
        assert m["torch_peak_reserved_bytes"] >= m[
            "torch_peak_allocated_bytes"
        ] > 0 or backend.startswith(("ort", "tensorrt"))
        if rec.env["gpus"][0].get("driver_version"):  # NVML present
            assert m["nvml_used_peak_bytes"] >= m["nvml_used_before_bytes"]
    par = [p for p in rec.parity if p.backend == backend]
    assert {p.precision for p in par} == precisions and all(p.passed for p in par), par
    gpu = rec.env["gpus"][0]
    assert gpu["name"] and gpu["compute_capability"] and "throttle_reasons_seen" in gpu
    assert rec.bench and rec.bench["gpu"]["name"] == gpu["name"]


@pytest.mark.parametrize("backend", ["torch-cuda", "torch-cuda-graph", "torch-compile"])
def test_torch_gpu_backends_fp32_and_fp16(run: Path, backend: str) -> None:
    rec = _bench(run, backend, "bench.precisions=[fp32,fp16]")
    _check(rec, backend, {"fp32", "fp16"})
    flags = [p.flags for p in rec.latency if p.backend == backend]
    assert all(
        f["cuda_graph"] == (backend == "torch-cuda-graph") and f["tf32"] is False for f in flags
    )


def test_channels_last_is_recorded_and_correct(run: Path) -> None:
    rec = _bench(run, "torch-cuda", "bench.channels_last=true")
    _check(rec, "torch-cuda", {"fp32"})
    assert all(p.flags["channels_last"] for p in rec.latency if p.backend == "torch-cuda")


def test_ort_cuda_with_io_binding(run: Path) -> None:
    rec = _bench(run, "ort-cuda")
    _check(rec, "ort-cuda", {"fp32"})
    assert all(p.flags["io_binding"] for p in rec.latency if p.backend == "ort-cuda")


def test_ort_tensorrt_provider_builds_on_first_call_and_caches(run: Path) -> None:
    rec = _bench(run, "ort-trt", "bench.precisions=[fp32,fp16]")
    _check(rec, "ort-trt", {"fp32", "fp16"})
    pts = [p for p in rec.latency if p.backend == "ort-trt"]
    assert all(p.first_call_ms > p.median_ms for p in pts)  # the engine build is the first call
    assert any((run / "trt-cache" / "ort-trt").iterdir())


def test_tensorrt_engines_build_run_and_record(run: Path) -> None:
    rec = _bench(run, "tensorrt", "bench.precisions=[fp32,fp16]")
    _check(rec, "tensorrt", {"fp32", "fp16"})
    built = rec.artifacts["tensorrt"]
    for precision in ("fp32", "fp16"):
        for variant in ("dense", "pruned"):
            info = built[precision][variant]
            assert (
                (run / info["path"]).is_file()
                and len(info["sha256"]) == 64
                and set(info["profiles"]) >= {1, 4}
            )
    for p in rec.latency:
        if p.backend == "tensorrt":
            assert (
                p.memory
                and p.memory["plan_bytes"] > 0
                and p.memory["engine_device_memory_bytes"] >= 0
            )


def test_machine_record_on_a_gpu() -> None:
    env = envinfo.collect()
    assert env["gpus"], "torch sees a GPU, so the record must list it"
    g = env["gpus"][0]
    assert g["memory_bytes"] > 0 and g["compute_capability"]
    if g.get("driver_version") is None:
        assert "gpu.nvml" in env["unavailable"]  # null, with the reason
    else:
        assert g["cuda_driver_version"] and g["state_start"]["sm_clock_mhz"] is not None
