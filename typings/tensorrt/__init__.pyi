# Typed stubs of the part of the TensorRT Python API (`import tensorrt`) that pbkit uses and will
# use; written by hand for this repository (no tensorrt-stubs download).
# TensorRT version described: 11.4.0.106
# That line tracks the `tensorrt-cu13==` pin in requirements/gpu.in (what the GPU image installs);
# tests/test_trt.py fails when they differ. Bump both together, re-checking the signatures below.
# `make lint` type-checks pbkit/export/tensorrt.py and pbkit/measure/tensorrt.py against this file
# (mypy_path in pyproject.toml); nothing imports it at run time.
#
# What TensorRT 11 removed is absent, so using it fails type-checking: BuilderFlag FP16, BF16, INT8,
# FP8, INT4, FP4, OBEY/PREFER_PRECISION_CONSTRAINTS (and DIRECT_IO, see below);
# NetworkDefinitionCreationFlag.EXPLICIT_BATCH; IBuilderConfig.int8_calibrator,
# set/get_calibration_profile, the quantization flags; IInt8*Calibrator; Builder.platform_has_*;
# ICudaEngine.device_memory_size (-> device_memory_size_v2). pbkit's TensorRT 10 branch reaches the
# FP16 flag by name (pbkit/export/tensorrt.py, _trt10_builder_flag).
#
# Where each part was checked (pages under docs.nvidia.com/deeplearning/tensorrt/, and the
# github.com/NVIDIA/TensorRT repository):
# - Removals: 11.4.0/api/migration/tensorrt-10x-to-11x-python-api-reference.html ("Removed Python
#   APIs and Replacements"); 11.4.0 and 11.4.1 .../tensorrt-10x-to-11x-c-api-reference.html.
#   BuilderFlag.DIRECT_IO: that 11.4.0 Python page says removed, the 11.4.1 C++ page says
#   "deprecated, not removed", the 11.1 bindings still export it: left out (pbkit never uses it).
# - Every class, method, property and enum member below: the pybind11 bindings and their docstrings
#   in NVIDIA/TensorRT, python/src/infer/pyCore.cpp, pyFoundationalTypes.cpp, pyGraph.cpp,
#   python/src/parsers/pyOnnx.cpp, python/docstrings/, python/packaging/bindings_wheel/tensorrt/
#   __init__.py (__version__, Logger.<severity>, DataType.itemsize, volume), at tag v11.1 (the
#   newest stored; the 11.2, 11.3 and 11.4 GitHub release notes name no Python-binding change).
#   Compared with release/10.13 for what the TensorRT 10 path uses.
# - 11.4.0/_static/python-api/infer/Core/EngineInspector.html (class name EngineInspector, not
#   IEngineInspector; execution_context; get_layer_information(layer_index, format) -> str);
#   11.4.0/_static/python-api/infer/Core/ExecutionContext.html (profiler, engine, name, debug_sync).
# - 11.0.0/_static/python-api/infer/Core/Builder.html (NetworkDefinitionCreationFlag members:
#   STRONGLY_TYPED deprecated and ignored, EXPLICIT_BATCH gone; no platform_has_* on Builder) and
#   11.0.0/_static/python-api/infer/Core/Engine.html (num_io_tensors, device_memory_size_v2,
#   num_optimization_profiles; no device_memory_size, no has_implicit_batch_dimension).
# - latest/_static/python-api/infer/FoundationalTypes/DataType.html (DataType members).
# - IProfiler: pyCore.cpp + pyCoreDoc.h (report_layer_time(layer_name: str, ms: float); a subclass
#   calls IProfiler.__init__(self)); C++ IProfiler::reportLayerTime(char const*, float).
# Conventions: integer parameters are `int` (the 11.4 pages render them SupportsInt, pybind11 3);
# CUDA streams and device pointers are integer handles; `X | None` where the docs say None comes
# back (get_timing_cache, deserialize_cuda_engine) or the C++ call returns nullptr on failure
# (build_serialized_network, create_execution_context, create_engine_inspector); enums are pybind11
# enums (int(), hashable, .name/.value), not enum.Enum.

from collections.abc import Iterator, Sequence
from typing import ClassVar, overload

from typing_extensions import Buffer

__version__: str

def volume(iterable: Sequence[int] | Dims) -> int: ...

class _Enum:
    """pybind11 enum behaviour shared by the enums below (not a TensorRT class)."""

    __members__: ClassVar[dict[str, _Enum]]
    def __init__(self, value: int) -> None: ...
    def __int__(self) -> int: ...
    def __index__(self) -> int: ...
    def __hash__(self) -> int: ...
    def __eq__(self, other: object) -> bool: ...
    def __ne__(self, other: object) -> bool: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...

# -- foundational types (pyFoundationalTypes.cpp) --

class DataType(_Enum):
    FLOAT: ClassVar[DataType]
    HALF: ClassVar[DataType]
    BF16: ClassVar[DataType]
    INT8: ClassVar[DataType]
    INT32: ClassVar[DataType]
    INT64: ClassVar[DataType]
    BOOL: ClassVar[DataType]
    UINT8: ClassVar[DataType]
    FP8: ClassVar[DataType]
    INT4: ClassVar[DataType]
    FP4: ClassVar[DataType]
    E8M0: ClassVar[DataType]
    @property
    def itemsize(self) -> int: ...

float32: DataType
float16: DataType
bfloat16: DataType
int8: DataType
int32: DataType
int64: DataType
uint8: DataType

class Dims:
    MAX_DIMS: ClassVar[int]
    @overload
    def __init__(self) -> None: ...
    @overload
    def __init__(self, shape: Sequence[int]) -> None: ...
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[int, ...]: ...
    def __setitem__(self, index: int, value: int) -> None: ...
    # The bindings define __len__/__getitem__ only; Python iterates them through the sequence
    # protocol. Declared so that a Dims is an Iterable[int] to the type checker.
    def __iter__(self) -> Iterator[int]: ...
    def __eq__(self, other: object) -> bool: ...

class IHostMemory:
    """A buffer (memoryview(), bytes()) holding a serialised engine or timing cache."""

    @property
    def dtype(self) -> DataType: ...
    @property
    def nbytes(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

# -- logging and profiling (pyCore.cpp) --

class ILogger:
    class Severity(_Enum):
        INTERNAL_ERROR: ClassVar[ILogger.Severity]
        ERROR: ClassVar[ILogger.Severity]
        WARNING: ClassVar[ILogger.Severity]
        INFO: ClassVar[ILogger.Severity]
        VERBOSE: ClassVar[ILogger.Severity]

    # export_values(): the severities are attributes of ILogger (and of Logger) too
    INTERNAL_ERROR: ClassVar[ILogger.Severity]
    ERROR: ClassVar[ILogger.Severity]
    WARNING: ClassVar[ILogger.Severity]
    INFO: ClassVar[ILogger.Severity]
    VERBOSE: ClassVar[ILogger.Severity]
    def __init__(self) -> None: ...
    def log(self, severity: ILogger.Severity, msg: str) -> None: ...

class Logger(ILogger):
    min_severity: ILogger.Severity
    def __init__(self, min_severity: ILogger.Severity = ...) -> None: ...

class IProfiler:
    """Per-layer timing: subclass it, call IProfiler.__init__(self) in __init__, override
    report_layer_time, and set it as IExecutionContext.profiler."""

    def __init__(self) -> None: ...
    def report_layer_time(self, layer_name: str, ms: float) -> None: ...

class Profiler(IProfiler):
    """TensorRT's own IProfiler: prints each layer's time to stdout."""

# -- network definition (pyGraph.cpp) and ONNX parser (pyOnnx.cpp) --

class ITensor:
    name: str
    shape: Dims
    @property
    def dtype(self) -> DataType: ...
    @property
    def is_network_input(self) -> bool: ...
    @property
    def is_network_output(self) -> bool: ...

class NetworkDefinitionCreationFlag(_Enum):
    # Deprecated in 11.0: every network is strongly typed; the flag is accepted and ignored.
    STRONGLY_TYPED: ClassVar[NetworkDefinitionCreationFlag]
    PREFER_AOT_PYTHON_PLUGINS: ClassVar[NetworkDefinitionCreationFlag]
    PREFER_JIT_PYTHON_PLUGINS: ClassVar[NetworkDefinitionCreationFlag]

class INetworkDefinition:
    name: str
    @property
    def num_layers(self) -> int: ...
    @property
    def num_inputs(self) -> int: ...
    @property
    def num_outputs(self) -> int: ...
    @property
    def flags(self) -> int: ...
    def get_flag(self, flag: NetworkDefinitionCreationFlag) -> bool: ...
    def get_input(self, index: int) -> ITensor: ...
    def get_output(self, index: int) -> ITensor: ...
    def mark_output(self, tensor: ITensor) -> None: ...
    def __len__(self) -> int: ...

class ParserError:
    def desc(self) -> str: ...
    def node(self) -> int: ...
    def node_name(self) -> str: ...
    def node_operator(self) -> str: ...

class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None: ...
    def parse(self, model: Buffer, path: str | None = None) -> bool: ...
    def parse_from_file(self, model: str) -> bool: ...
    def supports_operator(self, op_name: str) -> bool: ...
    @property
    def num_errors(self) -> int: ...
    def get_error(self, index: int) -> ParserError: ...
    def clear_errors(self) -> None: ...

# -- builder (pyCore.cpp) --

class BuilderFlag(_Enum):
    # TensorRT 11 (11.1 bindings); FP16/BF16/INT8/FP8/INT4/FP4, OBEY_/PREFER_PRECISION_CONSTRAINTS
    # were removed in 11.0; DIRECT_IO is left out (see the header).
    DEBUG: ClassVar[BuilderFlag]
    GPU_FALLBACK: ClassVar[BuilderFlag]
    REFIT: ClassVar[BuilderFlag]
    DISABLE_TIMING_CACHE: ClassVar[BuilderFlag]
    EDITABLE_TIMING_CACHE: ClassVar[BuilderFlag]
    TF32: ClassVar[BuilderFlag]
    SPARSE_WEIGHTS: ClassVar[BuilderFlag]
    SAFETY_SCOPE: ClassVar[BuilderFlag]
    VERSION_COMPATIBLE: ClassVar[BuilderFlag]
    EXCLUDE_LEAN_RUNTIME: ClassVar[BuilderFlag]
    ERROR_ON_TIMING_CACHE_MISS: ClassVar[BuilderFlag]
    DISABLE_COMPILATION_CACHE: ClassVar[BuilderFlag]
    STRIP_PLAN: ClassVar[BuilderFlag]
    REFIT_IDENTICAL: ClassVar[BuilderFlag]
    WEIGHT_STREAMING: ClassVar[BuilderFlag]
    REFIT_INDIVIDUAL: ClassVar[BuilderFlag]
    STRICT_NANS: ClassVar[BuilderFlag]
    MONITOR_MEMORY: ClassVar[BuilderFlag]
    DISTRIBUTIVE_INDEPENDENCE: ClassVar[BuilderFlag]

class MemoryPoolType(_Enum):
    WORKSPACE: ClassVar[MemoryPoolType]
    DLA_MANAGED_SRAM: ClassVar[MemoryPoolType]
    DLA_LOCAL_DRAM: ClassVar[MemoryPoolType]
    DLA_GLOBAL_DRAM: ClassVar[MemoryPoolType]
    TACTIC_DRAM: ClassVar[MemoryPoolType]
    TACTIC_SHARED_MEMORY: ClassVar[MemoryPoolType]

class ProfilingVerbosity(_Enum):
    LAYER_NAMES_ONLY: ClassVar[ProfilingVerbosity]
    DETAILED: ClassVar[ProfilingVerbosity]
    NONE: ClassVar[ProfilingVerbosity]

class IOptimizationProfile:
    def set_shape(
        self,
        input: str,
        min: Dims | Sequence[int],
        opt: Dims | Sequence[int],
        max: Dims | Sequence[int],
    ) -> None: ...
    def get_shape(self, input: str) -> list[Dims]: ...
    def __bool__(self) -> bool: ...

class ITimingCache:
    def serialize(self) -> IHostMemory: ...
    def combine(self, input_cache: ITimingCache, ignore_mismatch: bool) -> bool: ...
    def reset(self) -> bool: ...

class IBuilderConfig:
    avg_timing_iterations: int
    builder_optimization_level: int
    flags: int
    profiling_verbosity: ProfilingVerbosity
    max_aux_streams: int
    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None: ...
    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int: ...
    def set_flag(self, flag: BuilderFlag) -> None: ...
    def clear_flag(self, flag: BuilderFlag) -> None: ...
    def get_flag(self, flag: BuilderFlag) -> bool: ...
    def reset(self) -> None: ...
    def add_optimization_profile(self, profile: IOptimizationProfile) -> int: ...
    @property
    def num_optimization_profiles(self) -> int: ...
    def create_timing_cache(self, serialized_timing_cache: Buffer) -> ITimingCache: ...
    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool: ...
    def get_timing_cache(self) -> ITimingCache | None: ...

class Builder:
    max_threads: int
    def __init__(self, logger: ILogger) -> None: ...
    @property
    def logger(self) -> ILogger: ...
    @property
    def num_DLA_cores(self) -> int: ...
    def create_network(self, flags: int = 0) -> INetworkDefinition: ...
    def create_builder_config(self) -> IBuilderConfig: ...
    def create_optimization_profile(self) -> IOptimizationProfile: ...
    def build_serialized_network(
        self, network: INetworkDefinition, config: IBuilderConfig
    ) -> IHostMemory | None: ...
    def is_network_supported(self, network: INetworkDefinition, config: IBuilderConfig) -> bool: ...

# -- runtime (pyCore.cpp) --

class TensorIOMode(_Enum):
    NONE: ClassVar[TensorIOMode]
    INPUT: ClassVar[TensorIOMode]
    OUTPUT: ClassVar[TensorIOMode]

class TensorLocation(_Enum):
    DEVICE: ClassVar[TensorLocation]
    HOST: ClassVar[TensorLocation]

class ExecutionContextAllocationStrategy(_Enum):
    STATIC: ClassVar[ExecutionContextAllocationStrategy]
    ON_PROFILE_CHANGE: ClassVar[ExecutionContextAllocationStrategy]
    USER_MANAGED: ClassVar[ExecutionContextAllocationStrategy]

class LayerInformationFormat(_Enum):
    ONELINE: ClassVar[LayerInformationFormat]
    JSON: ClassVar[LayerInformationFormat]

class EngineInspector:
    """ICudaEngine.create_engine_inspector(): layer information of an engine (how much depends on
    the profiling verbosity it was built with); JSON in TensorRT 11 names I/O "I/O Tensors"."""

    execution_context: IExecutionContext | None
    def get_layer_information(self, layer_index: int, format: LayerInformationFormat) -> str: ...
    def get_engine_information(self, format: LayerInformationFormat) -> str: ...

class IExecutionContext:
    name: str
    debug_sync: bool
    # per-layer times go to the profiler after each execute_v2 / execute_async_v3 (or on
    # report_to_profiler() when enqueue_emits_profile is False)
    profiler: IProfiler | None
    enqueue_emits_profile: bool
    nvtx_verbosity: ProfilingVerbosity
    @property
    def engine(self) -> ICudaEngine: ...
    @property
    def active_optimization_profile(self) -> int: ...
    @property
    def all_binding_shapes_specified(self) -> bool: ...
    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool: ...
    def set_input_shape(self, name: str, shape: Dims | Sequence[int]) -> bool: ...
    def get_tensor_shape(self, name: str) -> Dims: ...
    def get_tensor_strides(self, name: str) -> Dims: ...
    def set_tensor_address(self, name: str, memory: int) -> bool: ...
    def get_tensor_address(self, name: str) -> int: ...
    def infer_shapes(self) -> list[str]: ...
    def execute_v2(self, bindings: Sequence[int]) -> bool: ...
    def execute_async_v3(self, stream_handle: int) -> bool: ...
    def report_to_profiler(self) -> bool: ...
    def update_device_memory_size_for_shapes(self) -> int: ...

class ICudaEngine:
    @property
    def name(self) -> str: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def num_io_tensors(self) -> int: ...
    @property
    def num_optimization_profiles(self) -> int: ...
    @property
    def device_memory_size_v2(self) -> int: ...
    @property
    def refittable(self) -> bool: ...
    @property
    def profiling_verbosity(self) -> ProfilingVerbosity: ...
    def get_tensor_name(self, index: int) -> str: ...
    def get_tensor_mode(self, name: str) -> TensorIOMode: ...
    def get_tensor_dtype(self, name: str) -> DataType: ...
    def get_tensor_shape(self, name: str) -> Dims: ...
    def get_tensor_location(self, name: str) -> TensorLocation: ...
    def is_shape_inference_io(self, name: str) -> bool: ...
    # [min, opt, max] shapes of an input under an optimisation profile
    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]: ...
    def get_device_memory_size_for_profile_v2(self, profile_index: int) -> int: ...
    def create_execution_context(
        self, strategy: ExecutionContextAllocationStrategy = ...
    ) -> IExecutionContext | None: ...
    def create_engine_inspector(self) -> EngineInspector | None: ...
    def serialize(self) -> IHostMemory: ...
    def __getitem__(self, index: int) -> str: ...

class Runtime:
    DLA_core: int
    max_threads: int
    engine_host_code_allowed: bool
    def __init__(self, logger: ILogger) -> None: ...
    @property
    def logger(self) -> ILogger: ...
    @property
    def num_DLA_cores(self) -> int: ...
    def deserialize_cuda_engine(self, serialized_engine: Buffer) -> ICudaEngine | None: ...
