"""TensorRT logic that needs no GPU; the engine build and run are in the GPU suite (test_gpu.py).
The module itself is type-checked against tensorrt-stubs by `make lint`."""

from __future__ import annotations

import pytest

from pbkit.core.errors import PbkitError
from pbkit.export import tensorrt as trt
from pbkit.measure import tensorrt as trt_run


def test_fp16_engines_need_an_fp16_onnx_only_on_tensorrt_11() -> None:
    assert not trt.needs_fp16_onnx("fp16", "10.13.0.35")  # the FP16 builder flag
    assert trt.needs_fp16_onnx("fp16", "11.4.0.106")  # flag removed: strongly typed fp16 model
    assert not trt.needs_fp16_onnx("fp32", "11.4.0.106")


class FakeEngine:
    """Profiles as TensorRT reports them: (min, opt, max) shapes per profile."""

    def __init__(self, batches: list[tuple[int, int]]) -> None:
        self.batches = batches
        self.num_optimization_profiles = len(batches)

    def get_tensor_profile_shape(self, name: str, k: int) -> list[tuple[int, ...]]:
        lo, hi = self.batches[k]
        return [(lo, 3, 224, 224), (hi, 3, 224, 224), (hi, 3, 224, 224)]


def test_each_batch_runs_on_its_own_profile() -> None:
    engine = FakeEngine([(1, 1), (8, 8), (32, 32), (1, 64)])
    assert [trt_run.profile_for_batch(engine, "input", b) for b in (1, 8, 32, 16)] == [0, 1, 2, 3]  # type: ignore[arg-type]
    with pytest.raises(
        PbkitError, match="no optimisation profile for batch 128.*--format tensorrt"
    ):
        trt_run.profile_for_batch(engine, "input", 128)  # type: ignore[arg-type]


def test_missing_tensorrt_is_reported_not_raised() -> None:
    reason = trt.unavailable_reason()
    try:
        import tensorrt  # noqa: F401

        real = hasattr(tensorrt, "Builder")
    except ImportError:
        real = False
    assert (reason is None) == real
    if not real:
        with pytest.raises(PbkitError, match="tensorrt-cu13"):
            trt.load()
