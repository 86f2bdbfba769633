"""TensorRT: build an engine from an ONNX file (running it: :mod:`pbkit.measure.tensorrt`). Written
against the TensorRT 10/11 Python API and type-checked with mypy (``make lint``) against
``typings/tensorrt``, our stubs of the TensorRT version the GPU image installs (11.4); the TensorRT
10 path reaches what 11 removed by name (``_trt10_builder_flag``).

- Build: builder -> network (OnnxParser) -> builder config (workspace limit, timing cache,
  builder optimisation level, one optimisation profile per batch of the sweep) -> serialised plan,
  written atomically with its sha256.
- fp16: TensorRT 10 takes the fp32 ONNX and the FP16 builder flag; TensorRT 11 removed that flag
  (every network is strongly typed), so it builds from an fp16 ONNX model (``needs_fp16_onnx``).
- fp32 means fp32: the TF32 builder flag is cleared where it exists.
- int8: explicit quantization. The engine is built from a QDQ ONNX with symmetric INT8 scales
  (``pbkit.export.quantize``, family ``trt``), as a strongly typed network (TensorRT 11: every
  network; TensorRT 10: the STRONGLY_TYPED creation flag), with no precision flag: the Q/DQ layers
  say which tensors are INT8. TensorRT 10.1 deprecated and 11 removed implicit (calibrator)
  quantization, so there is no calibrator here (deployment.md, section 3).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from pbkit.core.errors import PbkitError
from pbkit.core.fileio import atomic_write, sha256_file

if TYPE_CHECKING:  # mypy checks every use of `trt` below against typings/tensorrt
    import tensorrt as trt
else:
    trt = None  # imported on first use by load(): importing pbkit never needs TensorRT

INSTALL_HINT = "pip install tensorrt-cu13 (requirements/gpu.lock), or use the GPU image"


def load() -> ModuleType:
    """Import the real ``tensorrt`` module (a stubs-only namespace package does not count) and
    return it."""
    if trt is not None:
        return trt
    try:
        module = importlib.import_module("tensorrt")
    except Exception as e:  # ImportError, or a library that fails to load
        raise PbkitError(
            f"TensorRT is not available ({type(e).__name__}: {e}); to use it: {INSTALL_HINT}"
        ) from e
    if not hasattr(module, "Builder"):
        raise PbkitError(
            "the installed 'tensorrt' package has no Builder (stubs only?); to use it:"
            f" {INSTALL_HINT}"
        )
    globals()["trt"] = module
    return module


def version() -> str:
    load()
    return trt.__version__


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
    precision: str  # fp32 | fp16 | int8 (a QDQ ONNX)
    batches: tuple[int, ...]  # one optimisation profile each (min = opt = max)
    workspace_bytes: int = 4 << 30
    optimization_level: int = 3
    timing_cache: Path | None = None


def dims(d: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in d)


def _trt10_builder_flag(name: str) -> trt.BuilderFlag:
    """A builder flag that TensorRT 11 removed (FP16, INT8, ...), for the TensorRT 10 path: looked
    up by name, since the stubs describe TensorRT 11 and type-checking rejects the attribute."""
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise PbkitError(f"TensorRT {trt.__version__} has no BuilderFlag.{name}")
    return cast("trt.BuilderFlag", flag)


def network_flags(explicit_quantization: bool, strongly_typed_default: bool) -> int:
    """The network creation flags: STRONGLY_TYPED for an explicitly quantized model where it is not
    already the default (TensorRT 10), else none."""
    if not explicit_quantization or strongly_typed_default:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def check_qdq(onnx_path: Path) -> int:
    """The number of QuantizeLinear nodes of a model given for an int8 engine; a model without any
    is not explicitly quantized (a plain fp32 ONNX given for int8), refused in one line."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    n = sum(1 for node in graph.node if node.op_type == "QuantizeLinear")
    if n == 0:
        raise PbkitError(
            f"{onnx_path.name} has no QuantizeLinear nodes: an int8 engine is built from the QDQ"
            " model `pbkit export RUN_DIR --format tensorrt --precision int8` writes"
        )
    return n


def build_engine(onnx_path: Path, plan_path: Path, opts: BuildOptions) -> dict[str, Any]:
    """Build and serialise an engine; return its description for the record."""
    load()
    explicit = opts.precision == "int8"
    qdq_nodes = check_qdq(onnx_path) if explicit else None
    strongly_typed = major_version(trt.__version__) >= 11
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 11: every network is strongly typed (the STRONGLY_TYPED creation flag is deprecated
    # and ignored); TensorRT 10: weakly typed, the precision comes from the builder flags below,
    # but an explicitly quantized (QDQ) model is built strongly typed there too
    network = builder.create_network(network_flags(explicit, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PbkitError(f"TensorRT could not parse {onnx_path.name}: {errors or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_bytes)
    config.builder_optimization_level = opts.optimization_level
    builder_flags: list[str] = []
    if not strongly_typed and opts.precision == "fp16":
        config.set_flag(_trt10_builder_flag("FP16"))
        builder_flags.append("FP16")
    if opts.precision in ("fp32", "int8"):  # TF32 is a builder flag in TensorRT 10 and 11;
        # (an int8 model: what the QDQ nodes leave in float runs in fp32)
        config.clear_flag(trt.BuilderFlag.TF32)
        builder_flags.append("-TF32")
    cache_bytes = (
        opts.timing_cache.read_bytes() if opts.timing_cache and opts.timing_cache.is_file() else b""
    )
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    inp = network.get_input(0)
    shape = dims(inp.shape)
    for b in opts.batches:
        profile = builder.create_optimization_profile()
        fixed = (b, *shape[1:])
        profile.set_shape(
            inp.name, trt.Dims(list(fixed)), trt.Dims(list(fixed)), trt.Dims(list(fixed))
        )
        config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if plan is None:
        raise PbkitError(
            f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)"
        )
    data = bytes(memoryview(plan))
    _write_bytes(plan_path, data)
    if opts.timing_cache is not None:
        used = config.get_timing_cache() or cache  # the config's cache, updated by the build
        _write_bytes(opts.timing_cache, bytes(memoryview(used.serialize())))
    return {
        "path": plan_path.name,
        "sha256": sha256_file(plan_path),
        "bytes": len(data),
        "tensorrt": trt.__version__,
        "precision": opts.precision,
        "strongly_typed": strongly_typed or explicit,
        "quantize_nodes": qdq_nodes,
        "builder_flags": builder_flags,
        "workspace_bytes": opts.workspace_bytes,
        "builder_optimization_level": opts.optimization_level,
        "profiles": list(opts.batches),
        "input": {"name": inp.name, "shape": list(shape)},
        "onnx": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "timing_cache": opts.timing_cache.name if opts.timing_cache else None,
        "build_s": build_s,
    }


def _write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_write(path, write)
