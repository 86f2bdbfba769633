"""Running TensorRT engines: the tensor-address API (``set_tensor_address``) and
``execute_async_v3`` on our CUDA stream; the binding-index API and ``execute_async_v2`` are gone
since TensorRT 10. Type-checked with mypy (``make lint``) against ``typings/tensorrt``, our stubs of
the TensorRT version the GPU image installs."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from pbkit.core.errors import PbkitError
from pbkit.export import tensorrt as build
from pbkit.measure.cuda import CudaRunner
from pbkit.measure.runner import RunSpec

if TYPE_CHECKING:  # mypy checks every use of `trt` below against typings/tensorrt
    import tensorrt as trt
else:
    trt = None  # set by _load(): importing pbkit never needs TensorRT


def _load() -> None:
    globals()["trt"] = build.load()


def _torch_dtype(dt: trt.DataType) -> Any:
    import torch

    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.INT8: torch.int8,
        trt.DataType.BF16: torch.bfloat16,
    }
    if dt not in table:
        raise PbkitError(f"TensorRT tensor type {dt} is not supported by pbkit's runner")
    return table[dt]


def profile_for_batch(engine: trt.ICudaEngine, name: str, batch: int) -> int:
    """The optimisation profile whose batch range holds ``batch`` (exact fit first)."""
    ranges = [
        (
            k,
            build.dims(engine.get_tensor_profile_shape(name, k)[0])[0],
            build.dims(engine.get_tensor_profile_shape(name, k)[2])[0],
        )
        for k in range(engine.num_optimization_profiles)
    ]
    for k, lo, hi in sorted(ranges, key=lambda r: r[2] - r[1]):
        if lo <= batch <= hi:
            return k
    have = ", ".join(f"{lo}-{hi}" if lo != hi else str(lo) for _, lo, hi in ranges)
    raise PbkitError(
        f"the engine has no optimisation profile for batch {batch} (profiles: {have}); rebuild it"
        " with `pbkit export RUN_DIR --format tensorrt` after setting bench.batches"
    )


class EngineRunner(CudaRunner):
    """A TensorRT engine on our stream: input and outputs live in device tensors whose addresses
    are set once; each query is ``execute_async_v3`` between the CUDA events."""

    def __init__(self, spec: RunSpec) -> None:
        _load()
        self.plan_bytes = spec.path.stat().st_size
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime: trt.Runtime = trt.Runtime(logger)
        engine = self.runtime.deserialize_cuda_engine(spec.path.read_bytes())
        if engine is None:
            raise PbkitError(
                f"TensorRT could not load {spec.path.name} (built by another TensorRT version or"
                " GPU?)"
            )
        self.engine: trt.ICudaEngine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise PbkitError(f"expected one input tensor in {spec.path.name}, found {len(inputs)}")
        self.in_name = inputs[0]
        super().__init__(
            dataclasses.replace(spec, channels_last=False),
            in_dtype=_torch_dtype(engine.get_tensor_dtype(self.in_name)),
        )
        import torch

        context = engine.create_execution_context()
        if context is None:
            raise PbkitError(
                "TensorRT could not create an execution context (out of device memory?)"
            )
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
            t = torch.empty(
                build.dims(context.get_tensor_shape(n)),
                dtype=_torch_dtype(engine.get_tensor_dtype(n)),
                device=self.device,
            )
            context.set_tensor_address(n, t.data_ptr())
            self.d_out.append(t)
        self.flags.update(
            engine="tensorrt", tensorrt=trt.__version__, profile=self.profile, io_binding=True
        )

    def _compute(self) -> list[Any]:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise PbkitError("TensorRT execute_async_v3 failed")
        return self.d_out

    def memory(self) -> dict[str, Any]:
        return {
            "engine_device_memory_bytes": int(self.engine.device_memory_size_v2),
            "plan_bytes": self.plan_bytes,
        }
