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
    precision: str  # fp32 | fp16
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


def build_engine(onnx_path: Path, plan_path: Path, opts: BuildOptions) -> dict[str, Any]:
    """Build and serialise an engine; return its description for the record."""
    load()
    strongly_typed = major_version(trt.__version__) >= 11
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 11: every network is strongly typed (the STRONGLY_TYPED creation flag is deprecated
    # and ignored); TensorRT 10: weakly typed, the precision comes from the builder flags below
    network = builder.create_network(0)
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
    if opts.precision == "fp32":  # TF32 is a builder flag in TensorRT 10 and 11
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
        "strongly_typed": strongly_typed,
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
