"""The backends that run a model for measurement, one registry, discoverable by name.

A backend makes a :class:`Runner`: one model, one batch, one precision, ready to be queried. Every
runner answers one query end to end (host input in, host outputs out, synchronised) and, on a GPU,
also times the engine call alone with CUDA events on its stream. ``pbkit list backends`` shows
which backends are available here and, if not, why and what to install.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pbkit.errors import PbkitError, choices_error

PRECISIONS = ("fp32", "fp16")
GPU_HINT = ("an NVIDIA GPU machine with a CUDA build of torch (pip install -r requirements/gpu.lock, "
            "or the GPU image)")


@dataclass
class RunSpec:
    """What a runner is made from: the artifact file, the query input, and the runtime options."""

    path: Path
    x: Any  # torch.Tensor on the CPU, float32, NCHW: the query (and the parity batch)
    precision: str = "fp32"
    threads: int = 1
    channels_last: bool = False
    compile_mode: str = "default"
    cache_dir: Path | None = None  # engine and timing caches (ort-trt)
    device_index: int = 0


class Runner:
    """One model ready to be queried. Subclasses implement :meth:`_query` (host in, host out)."""

    def __init__(self) -> None:
        self.flags: dict[str, Any] = {}  # how it ran (cuda_graph, io_binding, ...), into the record
        self._last: list[np.ndarray] = []

    def _query(self) -> list[np.ndarray]:
        raise NotImplementedError

    def __call__(self) -> None:
        self._last = self._query()

    def timed(self) -> tuple[float, float | None]:
        """One query: (end-to-end host wall-clock ms, GPU compute ms or None)."""
        t0 = time.perf_counter_ns()
        self._last = self._query()
        return (time.perf_counter_ns() - t0) / 1e6, None

    def outputs(self) -> list[np.ndarray]:
        """The outputs of one query on the runner's input, as float32 arrays (for parity)."""
        self()
        return [np.asarray(o, dtype=np.float32) for o in self._last]

    def memory(self) -> dict[str, Any]:
        """Backend-specific memory figures (engine device memory, plan bytes, ...)."""
        return {}

    def close(self) -> None:
        """Release what the runner holds."""


@dataclass(frozen=True)
class Backend:
    name: str
    device: str  # cpu | cuda
    precisions: tuple[str, ...]
    artifact: str  # model (a pbkit model file) | onnx | engine (a TensorRT plan)
    description: str
    install_hint: str
    check: Callable[[], str | None] = field(repr=False)  # None when available, else the reason
    make: Callable[[RunSpec], Runner] = field(repr=False)


# ------------------------------------------------------------------------------------ helpers


def _flatten(out: Any) -> list[Any]:
    from pbkit.export import output_tensors  # torch is imported on first use, not with the registry

    return output_tensors(out)


def has_module(module: str) -> str | None:
    return None if importlib.util.find_spec(module) is not None else f"python package {module!r} is not installed"


def cuda_reason() -> str | None:
    """None when torch sees a CUDA device, else why not."""
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    return None


def ort_provider_reason(provider: str) -> str | None:
    reason = has_module("onnxruntime")
    if reason:
        return reason
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no {provider}"
    return cuda_reason()


def _load_torch(spec: RunSpec, device: str) -> Any:
    import torch

    from pbkit.checkpoint import load_model

    model, _, _ = load_model(spec.path)
    model = model.eval().to(device)
    if spec.precision == "fp16":
        model = model.half()
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _dtype(precision: str) -> Any:
    import torch

    return torch.float16 if precision == "fp16" else torch.float32


def strict_fp32() -> None:
    """fp32 on a GPU means fp32: no TF32 in convolutions or matmuls (the parity gate needs it)."""
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


# ---------------------------------------------------------------------------------------- CPU


class TorchCPU(Runner):
    def __init__(self, spec: RunSpec, compile_: bool = False) -> None:
        super().__init__()
        import torch

        torch.set_num_threads(spec.threads)
        model = _load_torch(spec, "cpu")
        self.x = spec.x.contiguous(memory_format=torch.channels_last) if spec.channels_last else spec.x
        if compile_:
            model = torch.compile(model, mode=spec.compile_mode)
            self.flags["compile_mode"] = spec.compile_mode
        self.model = model
        self.flags.update(channels_last=spec.channels_last, inference_mode=True)

    def _query(self) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            return [t.float().numpy() for t in _flatten(self.model(self.x))]


def ort_session(path: Path, threads: int, providers: list[Any] | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=providers or ["CPUExecutionProvider"])


class OrtCPU(Runner):
    def __init__(self, spec: RunSpec) -> None:
        super().__init__()
        self.sess = ort_session(spec.path, spec.threads)
        self.feed = {self.sess.get_inputs()[0].name: spec.x.numpy()}
        self.flags.update(provider="CPUExecutionProvider", graph_optimization="all")

    def _query(self) -> list[np.ndarray]:
        return list(self.sess.run(None, self.feed))


# --------------------------------------------------------------------------------------- CUDA


class CudaRunner(Runner):
    """A GPU runner on its own CUDA stream. One query: copy the pinned host input to the device,
    run the engine between two CUDA events, copy the outputs back to pinned host buffers,
    synchronise the stream. Wall clock spans all of it; the events span the engine call."""

    def __init__(self, spec: RunSpec, in_dtype: Any = None) -> None:
        super().__init__()
        import torch

        self.torch = torch
        self.device = torch.device("cuda", spec.device_index)
        torch.cuda.set_device(self.device)
        self.stream = torch.cuda.Stream(self.device)
        dtype = in_dtype if in_dtype is not None else _dtype(spec.precision)
        x = spec.x.to(dtype)
        self.h_in = x.pin_memory()
        self.d_in = torch.empty_like(x, device=self.device)
        if spec.channels_last:
            self.d_in = self.d_in.contiguous(memory_format=torch.channels_last)
        self.ev0 = torch.cuda.Event(enable_timing=True)
        self.ev1 = torch.cuda.Event(enable_timing=True)
        self.h_out: list[Any] = []
        self.flags.update(cuda_graph=False, io_binding=False, data_transfers=True, channels_last=spec.channels_last,
                          sync="cudaStreamSynchronize", tf32=False)

    def _compute(self) -> list[Any]:
        """Enqueue the engine call on ``self.stream``; return the device output tensors."""
        raise NotImplementedError

    def _round_trip(self) -> float | None:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            self.d_in.copy_(self.h_in, non_blocking=True)
            self.ev0.record(self.stream)
            outs = self._compute()
            self.ev1.record(self.stream)
            if not self.h_out:
                self.h_out = [torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in outs]
            for h, o in zip(self.h_out, outs, strict=True):
                h.copy_(o, non_blocking=True)
        self.stream.synchronize()
        return float(self.ev0.elapsed_time(self.ev1))

    def _query(self) -> list[np.ndarray]:
        self._round_trip()
        return [h.float().numpy() for h in self.h_out]

    def __call__(self) -> None:
        self._round_trip()

    def timed(self) -> tuple[float, float | None]:
        t0 = time.perf_counter_ns()
        gpu = self._round_trip()
        return (time.perf_counter_ns() - t0) / 1e6, gpu

    def outputs(self) -> list[np.ndarray]:
        return self._query()

    def close(self) -> None:
        self.stream.synchronize()


class TorchCuda(CudaRunner):
    def __init__(self, spec: RunSpec, mode: str = "eager") -> None:
        super().__init__(spec)
        torch = self.torch
        if spec.precision == "fp32":
            strict_fp32()
        self.model = _load_torch(spec, "cuda")
        self.graph: Any = None
        self.flags["mode"] = mode
        if mode == "compile":
            self.model = torch.compile(self.model, mode=spec.compile_mode)
            self.flags["compile_mode"] = spec.compile_mode
        elif mode == "graph":
            self._capture()

    def _eager(self) -> list[Any]:
        with self.torch.inference_mode():
            return _flatten(self.model(self.d_in))

    def _capture(self) -> None:
        """Warm up on the side stream, then capture one forward into a CUDA graph."""
        torch = self.torch
        self.d_in.copy_(self.h_in)
        with torch.cuda.stream(self.stream):
            for _ in range(3):
                self._eager()
        self.stream.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph, stream=self.stream):
            self.static_out = _flatten(self.model(self.d_in))
        self.flags["cuda_graph"] = True

    def _compute(self) -> list[Any]:
        if self.graph is not None:
            self.graph.replay()
            return list(self.static_out)
        return self._eager()


class OrtCuda(CudaRunner):
    """ONNX Runtime on the GPU with IO binding: the input is bound in device memory on our stream
    (the provider runs on it too), the outputs are allocated and kept on the device."""

    def __init__(self, spec: RunSpec, provider: str = "CUDAExecutionProvider") -> None:
        spec = dataclasses.replace(spec, channels_last=False)  # ONNX Runtime binds a contiguous NCHW input
        super().__init__(spec, in_dtype=_dtype("fp32"))
        self.d_in.copy_(self.h_in)
        stream = str(self.stream.cuda_stream)
        cuda_opts = {"device_id": str(spec.device_index), "user_compute_stream": stream,
                     "has_user_compute_stream": "1"}
        providers: list[Any] = []
        if provider == "TensorrtExecutionProvider":
            cache = Path(spec.cache_dir or spec.path.parent / "trt-cache") / "ort-trt"
            cache.mkdir(parents=True, exist_ok=True)
            self.cache_hit = any(cache.glob("*.engine"))
            name = self._input_name(spec.path)
            shape = "x".join(str(d) for d in spec.x.shape)
            providers.append(("TensorrtExecutionProvider", {
                "device_id": str(spec.device_index), "user_compute_stream": stream, "has_user_compute_stream": "1",
                "trt_fp16_enable": spec.precision == "fp16", "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
                "trt_profile_min_shapes": f"{name}:{shape}", "trt_profile_opt_shapes": f"{name}:{shape}",
                "trt_profile_max_shapes": f"{name}:{shape}"}))
            self.flags.update(trt_fp16_enable=spec.precision == "fp16", engine_cache=str(cache),
                              engine_cache_hit=self.cache_hit, timing_cache=True)
        providers.append(("CUDAExecutionProvider", cuda_opts))
        self.sess = ort_session(spec.path, spec.threads, providers)
        self.flags.update(provider=provider, providers=self.sess.get_providers(), io_binding=True)
        if self.sess.get_providers()[0] != provider:
            raise PbkitError(f"onnxruntime did not take {provider} (got {self.sess.get_providers()})")
        self.io = self.sess.io_binding()
        inp = self.sess.get_inputs()[0]
        self.io.bind_input(inp.name, "cuda", spec.device_index, np.float32, list(self.d_in.shape), self.d_in.data_ptr())
        for o in self.sess.get_outputs():
            self.io.bind_output(o.name, "cuda", spec.device_index)

    @staticmethod
    def _input_name(path: Path) -> str:
        import onnx

        return str(onnx.load(str(path), load_external_data=False).graph.input[0].name)

    def _round_trip(self) -> float | None:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            self.d_in.copy_(self.h_in, non_blocking=True)
            self.ev0.record(self.stream)
            self.sess.run_with_iobinding(self.io)
            self.ev1.record(self.stream)
        self._host = self.io.copy_outputs_to_cpu()  # synchronous device-to-host copies
        self.stream.synchronize()
        return float(self.ev0.elapsed_time(self.ev1))

    def _query(self) -> list[np.ndarray]:
        self._round_trip()
        return [np.asarray(h, dtype=np.float32) for h in self._host]


def _tensorrt_runner(spec: RunSpec) -> Runner:
    from pbkit import trt

    return trt.EngineRunner(spec)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in [
        Backend("torch-cpu", "cpu", ("fp32",), "model", "PyTorch eager on the CPU (inference_mode)", "pip install torch",
                lambda: has_module("torch"), TorchCPU),
        Backend("torch-compile-cpu", "cpu", ("fp32",), "model",
                "torch.compile (inductor) on the CPU; compile time is the first call",
                "pip install torch; a C++ compiler (gcc)", lambda: has_module("torch"), lambda s: TorchCPU(s, compile_=True)),
        Backend("ort-cpu", "cpu", ("fp32",), "onnx", "ONNX Runtime, CPUExecutionProvider, all graph optimisations",
                "pip install onnxruntime", lambda: has_module("onnxruntime"), OrtCPU),
        Backend("torch-cuda", "cuda", PRECISIONS, "model", "PyTorch eager on the GPU (fp32 without TF32, fp16; "
                "bench.channels_last)", GPU_HINT, cuda_reason,
                lambda s: TorchCuda(s, "eager")),
        Backend("torch-cuda-graph", "cuda", PRECISIONS, "model", "PyTorch, one forward captured as a CUDA graph "
                "and replayed", GPU_HINT, cuda_reason,
                lambda s: TorchCuda(s, "graph")),
        Backend("torch-compile", "cuda", PRECISIONS, "model", "torch.compile (inductor, bench.compile_mode) on "
                "the GPU; compile time is the first call", GPU_HINT + "; triton",
                cuda_reason, lambda s: TorchCuda(s, "compile")),
        Backend("ort-cuda", "cuda", ("fp32",), "onnx", "ONNX Runtime, CUDAExecutionProvider, IO binding on our "
                "stream", "pip install onnxruntime-gpu (requirements/gpu.lock) on an NVIDIA GPU machine",
                lambda: ort_provider_reason("CUDAExecutionProvider"), OrtCuda),
        Backend("ort-trt", "cuda", PRECISIONS, "onnx", "ONNX Runtime, TensorrtExecutionProvider (engine and "
                "timing caches, IO binding); the engine build is the first call",
                "pip install onnxruntime-gpu and tensorrt-cu13 (requirements/gpu.lock) on an NVIDIA GPU machine",
                lambda: ort_provider_reason("TensorrtExecutionProvider"),
                lambda s: OrtCuda(s, "TensorrtExecutionProvider")),
        Backend("tensorrt", "cuda", PRECISIONS, "engine", "TensorRT 10/11 engine built by `pbkit export --format "
                "tensorrt`, tensor-address API, execute_async_v3 on our stream",
                "pip install tensorrt-cu13 (requirements/gpu.lock) on an NVIDIA GPU machine", lambda: _tensorrt_reason(), _tensorrt_runner),
    ]
}


def _tensorrt_reason() -> str | None:
    from pbkit import trt

    return trt.unavailable_reason() or cuda_reason()


def get(name: str) -> Backend:
    if name not in BACKENDS:
        raise choices_error("backend", name, list(BACKENDS))
    b = BACKENDS[name]
    reason = b.check()
    if reason is not None:
        raise PbkitError(f"backend {name!r} is not available here: {reason}; to use it: {b.install_hint}")
    return b
