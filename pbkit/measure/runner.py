"""A runner: one model, one batch, one precision, ready to be queried by the measurement protocol.

Every runner answers one query end to end (host input in, host outputs out, synchronised) and,
on a GPU, also times the engine call alone with CUDA events on its stream.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pbkit.core.errors import PbkitError, first_line


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
    # an in-memory model instead of the file (latency tables, closed-loop checks)
    module: Any = None
    trust: bool = False  # the model file may hold a pickled model (a user's pickled module)


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

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        """The outputs for another input batch (float32 NCHW, any batch size the artifact takes):
        how the task's metric is evaluated through the engine. Runners that measure one fixed
        input only refuse it."""
        raise PbkitError(f"{type(self).__name__} runs only its measurement input")

    def memory(self) -> dict[str, Any]:
        """Backend-specific memory figures (engine device memory, plan bytes, ...)."""
        return {}

    def close(self) -> None:
        """Release what the runner holds."""


def load_torch(spec: RunSpec, device: str) -> Any:
    """The run's model file (or the spec's in-memory module, copied) as an eval-mode module on
    ``device``, in the spec's precision and memory format."""
    import copy

    import torch

    from pbkit.models.checkpoint import load_model

    model = (
        copy.deepcopy(spec.module)
        if spec.module is not None
        else load_model(spec.path, spec.trust)[0]
    )
    model = model.eval().to(device)
    if spec.precision == "fp16":
        model = model.half()
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def dtype_of(precision: str) -> Any:
    import torch

    return torch.float16 if precision == "fp16" else torch.float32


def ort_session(
    path: Path, threads: int, providers: list[Any] | None = None, profile_prefix: str | None = None
) -> Any:
    """An ONNX Runtime session as measured (all graph optimizations, sequential); with
    ``profile_prefix``, ONNX Runtime's own per-kernel profiling on (``pbkit explain``)."""
    # ORT_DISABLE_TELEMETRY=1 before ONNX Runtime first starts keeps its telemetry (a device id in
    # ~/.cache, events sent to Microsoft) off for the process: pbkit makes no network attempt
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(
            str(path), sess_options=so, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as e:  # a corrupt or hostile file: ONNX Runtime's errors come in many types
        raise PbkitError(f"ONNX Runtime cannot load {Path(path).name}: {first_line(e)}") from e


ORT_FLOATS = ("tensor(float)", "tensor(float16)")


def ort_feed(sess: Any, x: np.ndarray, path: Path) -> dict[str, np.ndarray]:
    """The one input ``x`` by the session's input name, once the graph is seen to take it: one
    floating-point input of x's rank and (where fixed) sizes. Another model's ONNX is one line
    naming the file, not ONNX Runtime's error from the middle of a measurement."""
    inputs = sess.get_inputs()
    name = Path(path).name
    if len(inputs) != 1:
        raise PbkitError(
            f"{name} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}), not one "
            "image batch: it is not this run's model (pbkit export RUN_DIR writes it again)"
        )
    inp = inputs[0]
    dims = list(inp.shape or [])
    fixed = all(
        not isinstance(d, int) or d <= 0 or d == n for d, n in zip(dims, x.shape, strict=False)
    )
    if inp.type not in ORT_FLOATS or len(dims) != x.ndim or not fixed:
        raise PbkitError(
            f"{name} takes {inp.type} of shape {dims}, not the model's float input of shape "
            f"{list(x.shape)}: it is not this run's model (pbkit export RUN_DIR writes it again)"
        )
    return {inp.name: x}
