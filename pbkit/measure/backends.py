"""The backends that run a model for measurement, one registry, discoverable by name.

A backend makes a :class:`~pbkit.measure.runner.Runner` from a run's artifact (a model file, an
ONNX file or a TensorRT plan). ``pbkit list backends`` shows which backends are available here
and, if not, why and what to install.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pbkit.core.errors import PbkitError, choices_error
from pbkit.core.runtime import strict_fp32
from pbkit.measure.runner import Runner, RunSpec, load_torch, ort_feed, ort_session
from pbkit.models.outputs import output_tensors

PRECISIONS = ("fp32", "fp16")
GPU_HINT = (
    "an NVIDIA GPU machine with a CUDA build of torch (pip install -r requirements/gpu.lock, "
    "or the GPU image)"
)


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
    # False: a fresh runner compiles again (torch.compile: minutes, and dynamo's recompile limit),
    # so a point is measured in one session whatever bench.sessions says
    fresh_sessions: bool = True
    # int8: the quantized artifact it runs (pbkit.export.quantize: ort | ov | trt); None: no int8
    int8: str | None = None


def int8_backends() -> list[str]:
    """The backends that have an INT8 path."""
    return [b.name for b in BACKENDS.values() if b.int8 is not None]


def no_int8(name: str) -> PbkitError:
    return PbkitError(
        f"backend {name!r} has no int8 path; int8 runs on: {', '.join(int8_backends())}"
    )


def has_module(module: str) -> str | None:
    return (
        None
        if importlib.util.find_spec(module) is not None
        else f"python package {module!r} is not installed"
    )


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
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # before ONNX Runtime starts: no telemetry
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no {provider}"
    return cuda_reason()


def cxx_reason() -> str | None:
    """None when inductor finds the C++ compiler it builds CPU kernels with, else why not: looked
    up the way inductor does (``torch._inductor.config.cpp.cxx``: ``$CXX``, else ``g++``; a
    conda-installed gcc only where ``TORCH_INDUCTOR_INSTALL_GXX`` asks for it), each candidate
    answering ``--version``."""
    reason = has_module("torch")
    if reason:
        return reason
    cfg = sys.modules.get("torch._inductor.config")  # (importing it costs a second: only if loaded)
    default = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
    cxx = cfg.cpp.cxx if cfg is not None else (None, default)
    search = tuple(cxx) if isinstance(cxx, (list, tuple)) else (cxx,)
    if None in search and os.environ.get("TORCH_INDUCTOR_INSTALL_GXX"):
        return None  # inductor installs gcc itself
    names = [c for c in search if c]
    for name in names:
        path = shutil.which(name)
        if path is None:
            continue
        try:
            subprocess.run([path, "--version"], capture_output=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError):
            continue
        return None
    return (
        f"no C++ compiler for inductor ({' or '.join(names) or 'none configured'} not found;"
        " set CXX to one): torch.compile builds its CPU kernels with it"
    )


class TorchCPU(Runner):
    def __init__(self, spec: RunSpec, compile_: bool = False) -> None:
        super().__init__()
        import torch

        torch.set_num_threads(
            spec.threads
        )  # process-wide: the stage's isolated() scope restores it
        strict_fp32()
        model = load_torch(spec, "cpu")
        self.x = (
            spec.x.contiguous(memory_format=torch.channels_last) if spec.channels_last else spec.x
        )
        if compile_:
            model = torch.compile(model, mode=spec.compile_mode)
            self.flags["compile_mode"] = spec.compile_mode
        self.model = model
        self.flags.update(channels_last=spec.channels_last, inference_mode=True)

    def _query(self) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            return [t.float().numpy() for t in output_tensors(self.model(self.x))]

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            return [t.float().numpy() for t in output_tensors(self.model(torch.from_numpy(x)))]


class OrtCPU(Runner):
    def __init__(self, spec: RunSpec) -> None:
        super().__init__()
        self.sess = ort_session(spec.path, spec.threads)
        self.feed = ort_feed(self.sess, spec.x.numpy(), spec.path)
        self.flags.update(provider="CPUExecutionProvider", graph_optimization="all")

    def _query(self) -> list[np.ndarray]:
        return list(self.sess.run(None, self.feed))

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        (name,) = self.feed
        return list(self.sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)}))


def _cuda(mode: str) -> Callable[[RunSpec], Runner]:
    def make(spec: RunSpec) -> Runner:
        from pbkit.measure.cuda import TorchCuda

        return TorchCuda(spec, mode)

    return make


def _ort_cuda(provider: str) -> Callable[[RunSpec], Runner]:
    def make(spec: RunSpec) -> Runner:
        from pbkit.measure.cuda import OrtCuda

        return OrtCuda(spec, provider)

    return make


def _openvino(device: str) -> Callable[[RunSpec], Runner]:
    def make(spec: RunSpec) -> Runner:
        from pbkit.measure.openvino import OvRunner

        return OvRunner(spec, device)

    return make


def _openvino_reason(device: str) -> str | None:
    from pbkit.measure.openvino import device_reason

    return device_reason(device)


OV_HINT = "pip install openvino nncf (requirements/dev.lock)"


def _tensorrt_runner(spec: RunSpec) -> Runner:
    from pbkit.measure.tensorrt import EngineRunner

    return EngineRunner(spec)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in [
        Backend(
            "torch-cpu",
            "cpu",
            ("fp32",),
            "model",
            "PyTorch eager on the CPU (inference_mode)",
            "pip install torch",
            lambda: has_module("torch"),
            TorchCPU,
        ),
        Backend(
            "torch-compile-cpu",
            "cpu",
            ("fp32",),
            "model",
            "torch.compile (inductor) on the CPU; compile time is the first call",
            "pip install torch; a C++ compiler (gcc)",
            cxx_reason,
            lambda s: TorchCPU(s, compile_=True),
            fresh_sessions=False,
        ),
        Backend(
            "ort-cpu",
            "cpu",
            ("fp32", "int8"),
            "onnx",
            "ONNX Runtime, CPUExecutionProvider, all graph optimisations; int8: a QDQ model"
            " (U8 activations, S8 weights) the CPU kernels fuse",
            "pip install onnxruntime",
            lambda: has_module("onnxruntime"),
            OrtCPU,
            int8="ort",
        ),
        Backend(
            "ov-cpu",
            "cpu",
            ("fp32", "int8"),
            "onnx",
            "OpenVINO CPU plugin, the ONNX read directly (latency hint, f32 inference precision);"
            " int8: an IR quantized by NNCF",
            OV_HINT,
            lambda: _openvino_reason("CPU"),
            _openvino("CPU"),
            int8="ov",
        ),
        Backend(
            "ov-gpu",
            "gpu",
            ("fp32", "int8"),
            "onnx",
            "OpenVINO GPU plugin (an Intel GPU), as ov-cpu",
            OV_HINT + " on a machine with an Intel GPU and its compute runtime",
            lambda: _openvino_reason("GPU"),
            _openvino("GPU"),
            int8="ov",
        ),
        Backend(
            "torch-cuda",
            "cuda",
            PRECISIONS,
            "model",
            "PyTorch eager on the GPU (fp32 without TF32, fp16; bench.channels_last)",
            GPU_HINT,
            cuda_reason,
            _cuda("eager"),
        ),
        Backend(
            "torch-cuda-graph",
            "cuda",
            PRECISIONS,
            "model",
            "PyTorch, one forward captured as a CUDA graph and replayed",
            GPU_HINT,
            cuda_reason,
            _cuda("graph"),
        ),
        Backend(
            "torch-compile",
            "cuda",
            PRECISIONS,
            "model",
            "torch.compile (inductor, bench.compile_mode) on "
            "the GPU; compile time is the first call",
            GPU_HINT + "; triton",
            cuda_reason,
            _cuda("compile"),
            fresh_sessions=False,
        ),
        Backend(
            "ort-cuda",
            "cuda",
            ("fp32",),
            "onnx",
            "ONNX Runtime, CUDAExecutionProvider, IO binding on our stream",
            "pip install onnxruntime-gpu (requirements/gpu.lock) on an NVIDIA GPU machine",
            lambda: ort_provider_reason("CUDAExecutionProvider"),
            _ort_cuda("CUDAExecutionProvider"),
        ),
        Backend(
            "ort-trt",
            "cuda",
            PRECISIONS,
            "onnx",
            "ONNX Runtime, TensorrtExecutionProvider (engine and "
            "timing caches, IO binding); the engine build is the first call",
            "pip install onnxruntime-gpu and tensorrt-cu13 (requirements/gpu.lock) on an NVIDIA GPU"
            " machine",
            lambda: ort_provider_reason("TensorrtExecutionProvider"),
            _ort_cuda("TensorrtExecutionProvider"),
        ),
        Backend(
            "tensorrt",
            "cuda",
            (*PRECISIONS, "int8"),
            "engine",
            "TensorRT 10/11 engine built by `pbkit export --format "
            "tensorrt`, tensor-address API, execute_async_v3 on our stream",
            "pip install tensorrt-cu13 (requirements/gpu.lock) on an NVIDIA GPU machine",
            lambda: _tensorrt_reason(),
            _tensorrt_runner,
            int8="trt",
        ),
    ]
}


def _tensorrt_reason() -> str | None:
    from pbkit.export import tensorrt

    return tensorrt.unavailable_reason() or cuda_reason()


def get(name: str) -> Backend:
    if name not in BACKENDS:
        raise choices_error("backend", name, list(BACKENDS))
    b = BACKENDS[name]
    reason = b.check()
    if reason is not None:
        raise PbkitError(
            f"backend {name!r} is not available here: {reason}; to use it: {b.install_hint}"
        )
    return b
