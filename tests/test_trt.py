"""TensorRT logic that needs no GPU; the engine build and run are in the GPU suite (test_gpu.py).
The modules themselves are type-checked by `make lint` against typings/tensorrt, our stubs of the
TensorRT the GPU image installs; the tests below keep those stubs at that version and honest."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from pbkit.core.errors import PbkitError
from pbkit.export import tensorrt as trt
from pbkit.measure import tensorrt as trt_run

REPO = Path(__file__).resolve().parents[1]
STUBS = REPO / "typings" / "tensorrt" / "__init__.pyi"


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


def pinned(path: Path, dist: str) -> str:
    found = re.findall(rf"^{re.escape(dist)}==(\S+)", path.read_text(encoding="utf-8"), re.M)
    assert len(found) == 1, f"expected one {dist}== pin in {path.name}, found {found}"
    return found[0]


def test_the_stubs_describe_the_tensorrt_the_gpu_image_installs() -> None:
    """One source of truth: the stubs `make lint` checks against say which TensorRT they describe,
    and that is the tensorrt-cu13 pin of requirements/gpu.in (and of gpu.lock, which the image
    installs). A TensorRT bump without re-checked stubs fails here."""
    described = re.findall(r"^# TensorRT version described: (\S+)$", STUBS.read_text(), re.M)
    assert len(described) == 1, f"{STUBS} must say once which TensorRT version it describes"
    pin = pinned(REPO / "requirements" / "gpu.in", "tensorrt-cu13")
    assert described[0] == pin, (
        f"typings/tensorrt describes TensorRT {described[0]} but requirements/gpu.in pins"
        f" tensorrt-cu13=={pin}: re-check the stubs against that version's Python API, then bump"
        " the version line in their header"
    )
    assert pinned(REPO / "requirements" / "gpu.lock", "tensorrt-cu13") == pin


def test_the_stubs_reject_what_tensorrt_11_removed(tmp_path: Path) -> None:
    """Type-checking TensorRT 11 code against the stubs: the API pbkit uses passes, each API that
    TensorRT 11 removed is an error (so a TensorRT 10 habit cannot slip into pbkit unnoticed)."""
    api = pytest.importorskip("mypy.api")
    code = textwrap.dedent(
        """\
        import tensorrt as trt


        class Layers(trt.IProfiler):
            def report_layer_time(self, layer_name: str, ms: float) -> None: ...


        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        config = builder.create_builder_config()
        config.clear_flag(trt.BuilderFlag.TF32)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        engine = trt.Runtime(logger).deserialize_cuda_engine(b"")
        assert engine is not None
        context = engine.create_execution_context()
        assert context is not None
        context.profiler = Layers()
        inspector = engine.create_engine_inspector()
        assert inspector is not None
        info: str = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
        memory: int = engine.device_memory_size_v2
        config.set_flag(trt.BuilderFlag.FP16)  # removed
        config.set_flag(trt.BuilderFlag.INT8)  # removed
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)  # removed
        explicit = trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH  # removed
        config.int8_calibrator = None  # removed
        print(engine.device_memory_size)  # removed: device_memory_size_v2 replaces it
        """
    )
    src = tmp_path / "trt11.py"
    src.write_text(code)
    out, err, _ = api.run(
        ["--config-file", str(REPO / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache")]
        + ["--no-error-summary", "--show-error-codes", str(src)]
    )
    assert not err, err
    errors = {
        int(m.group(1)): m.group(2) for m in re.finditer(r"trt11\.py:(\d+): error: (.*)", out)
    }
    removed = {i + 1 for i, line in enumerate(code.splitlines()) if "# removed" in line}
    assert set(errors) == removed, out
    assert all("[attr-defined]" in e for e in errors.values()), out
