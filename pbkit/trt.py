"""TensorRT: build an engine from an ONNX file, and run it. Written against the TensorRT 10/11
Python API and type-checked with mypy against ``tensorrt-stubs`` (``make lint``).

- Build: builder -> network (OnnxParser) -> builder config (workspace limit, timing cache,
  builder optimisation level, one optimisation profile per batch of the sweep) -> serialised plan,
  written atomically with its sha256.
- fp16: TensorRT 10 takes the fp32 ONNX and the FP16 builder flag; TensorRT 11 removed that flag,
  so it builds a strongly typed network from an fp16 ONNX model (``needs_fp16_onnx``).
- fp32 means fp32: the TF32 builder flag is cleared where it exists.
- Run: the tensor-address API (``set_tensor_address``) and ``execute_async_v3`` on our CUDA
  stream; the binding-index API and ``execute_async_v2`` are gone since TensorRT 10.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pbkit.backends import CudaRunner, RunSpec
from pbkit.errors import PbkitError
from pbkit.fileio import atomic_write, sha256_file

if TYPE_CHECKING:  # mypy checks every use of `trt` below against tensorrt-stubs
    import tensorrt as trt
else:
    trt = None  # imported on first use by load(): importing pbkit never needs TensorRT

INSTALL_HINT = "pip install tensorrt-cu13 (requirements/gpu.lock), or use the GPU image"


def load() -> None:
    """Import the real ``tensorrt`` module (a stubs-only namespace package does not count)."""
    if trt is not None:
        return
    try:
        module = importlib.import_module("tensorrt")
    except Exception as e:  # ImportError, or a library that fails to load
        raise PbkitError(f"TensorRT is not available ({type(e).__name__}: {e}); to use it: {INSTALL_HINT}") from e
    if not hasattr(module, "Builder"):
        raise PbkitError(f"the installed 'tensorrt' package has no Builder (stubs only?); to use it: {INSTALL_HINT}")
    globals()["trt"] = module


def version() -> str:
    load()
    return str(trt.__version__)


def unavailable_reason() -> str | None:
    try:
        load()
    except PbkitError as e:
        return str(e).split("; to use it")[0]
    return None


def major_version(version: str) -> int:
    return int(version.split(".")[0])


def needs_fp16_onnx(precision: str, version: str) -> bool:
    """TensorRT 11 builds fp16 engines only from a strongly typed fp16 model."""
    return precision == "fp16" and major_version(version) >= 11


@dataclass(frozen=True)
class BuildOptions:
    precision: str  # fp32 | fp16
    batches: tuple[int, ...]  # one optimisation profile each (min = opt = max)
    workspace_bytes: int = 4 << 30
    optimization_level: int = 3
    timing_cache: Path | None = None


def _dims(d: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in d)


def build_engine(onnx_path: Path, plan_path: Path, opts: BuildOptions) -> dict[str, Any]:
    """Build and serialise an engine; return its description for the record."""
    load()
    strongly_typed = major_version(trt.__version__) >= 11
    logger = trt.Logger(trt.Logger.WARNING)
    builder: trt.Builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network: trt.INetworkDefinition = builder.create_network(flags)
    parser: trt.OnnxParser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PbkitError(f"TensorRT could not parse {onnx_path.name}: {errors or 'unknown error'}")
    config: trt.IBuilderConfig = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_bytes)
    config.builder_optimization_level = opts.optimization_level
    builder_flags: list[str] = []
    if not strongly_typed:
        if opts.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
            builder_flags.append("FP16")
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None and opts.precision == "fp32":
        config.clear_flag(tf32)
        builder_flags.append("-TF32")
    cache_bytes = opts.timing_cache.read_bytes() if opts.timing_cache and opts.timing_cache.is_file() else b""
    cache: trt.ITimingCache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    inp: trt.ITensor = network.get_input(0)
    shape = _dims(inp.shape)
    for b in opts.batches:
        profile: trt.IOptimizationProfile = builder.create_optimization_profile()
        fixed = (b, *shape[1:])
        profile.set_shape(inp.name, trt.Dims(list(fixed)), trt.Dims(list(fixed)), trt.Dims(list(fixed)))
        config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if plan is None:
        raise PbkitError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    data = bytes(memoryview(plan))
    _write_bytes(plan_path, data)
    if opts.timing_cache is not None:
        _write_bytes(opts.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return {"path": plan_path.name, "sha256": sha256_file(plan_path), "bytes": len(data),
            "tensorrt": trt.__version__, "precision": opts.precision, "strongly_typed": strongly_typed,
            "builder_flags": builder_flags, "workspace_bytes": opts.workspace_bytes,
            "builder_optimization_level": opts.optimization_level, "profiles": list(opts.batches),
            "input": {"name": inp.name, "shape": list(shape)}, "onnx": onnx_path.name,
            "onnx_sha256": sha256_file(onnx_path), "timing_cache": opts.timing_cache.name if opts.timing_cache else None,
            "build_s": build_s}


def _write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_write(path, write)


def _torch_dtype(dt: trt.DataType) -> Any:
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool, trt.DataType.INT8: torch.int8,
             trt.DataType.BF16: torch.bfloat16}
    if dt not in table:
        raise PbkitError(f"TensorRT tensor type {dt} is not supported by pbkit's runner")
    return table[dt]


def profile_for_batch(engine: trt.ICudaEngine, name: str, batch: int) -> int:
    """The optimisation profile whose batch range holds ``batch`` (exact fit first)."""
    ranges = [(k, _dims(engine.get_tensor_profile_shape(name, k)[0])[0],
               _dims(engine.get_tensor_profile_shape(name, k)[2])[0]) for k in range(engine.num_optimization_profiles)]
    for k, lo, hi in sorted(ranges, key=lambda r: r[2] - r[1]):
        if lo <= batch <= hi:
            return k
    have = ", ".join(f"{lo}-{hi}" if lo != hi else str(lo) for _, lo, hi in ranges)
    raise PbkitError(f"the engine has no optimisation profile for batch {batch} (profiles: {have}); rebuild it with "
                     f"`pbkit export RUN_DIR --format tensorrt` after setting bench.batches")


class EngineRunner(CudaRunner):
    """A TensorRT engine on our stream: input and outputs live in device tensors whose addresses
    are set once; each query is ``execute_async_v3`` between the CUDA events."""

    def __init__(self, spec: RunSpec) -> None:
        load()
        self.plan_bytes = spec.path.stat().st_size
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime: trt.Runtime = trt.Runtime(logger)
        engine = self.runtime.deserialize_cuda_engine(spec.path.read_bytes())
        if engine is None:
            raise PbkitError(f"TensorRT could not load {spec.path.name} (built by another TensorRT version or GPU?)")
        self.engine: trt.ICudaEngine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise PbkitError(f"expected one input tensor in {spec.path.name}, found {len(inputs)}")
        self.in_name = inputs[0]
        super().__init__(dataclasses.replace(spec, channels_last=False),
                         in_dtype=_torch_dtype(engine.get_tensor_dtype(self.in_name)))
        import torch

        context = engine.create_execution_context()
        if context is None:
            raise PbkitError("TensorRT could not create an execution context (out of device memory?)")
        self.context: trt.IExecutionContext = context
        batch = int(spec.x.shape[0])
        self.profile = profile_for_batch(engine, self.in_name, batch)
        context.set_optimization_profile_async(self.profile, self.stream.cuda_stream)
        context.set_input_shape(self.in_name, tuple(self.d_in.shape))
        context.set_tensor_address(self.in_name, self.d_in.data_ptr())
        self.d_out: list[Any] = []
        for n in names:
            if n == self.in_name:
                continue
            t = torch.empty(_dims(context.get_tensor_shape(n)), dtype=_torch_dtype(engine.get_tensor_dtype(n)),
                            device=self.device)
            context.set_tensor_address(n, t.data_ptr())
            self.d_out.append(t)
        self.flags.update(engine="tensorrt", tensorrt=trt.__version__, profile=self.profile, io_binding=True)

    def _compute(self) -> list[Any]:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise PbkitError("TensorRT execute_async_v3 failed")
        return self.d_out

    def memory(self) -> dict[str, Any]:
        return {"engine_device_memory_bytes": int(self.engine.device_memory_size_v2), "plan_bytes": self.plan_bytes}
