"""OpenVINO runners (``ov-cpu``, ``ov-gpu``): the run's fp32 ONNX read by ``core.read_model`` (no
OVC converter, which opens a telemetry session) or its NNCF-quantized INT8 IR, compiled for the
device with the latency hint and ``INFERENCE_PRECISION_HINT=f32``.

fp32 means fp32: on a CPU with BF16 (AVX-512 BF16, AMX) the plugin's default inference precision
is bf16, so an "fp32" model would run in bf16 (deployment.md, section 2); pbkit sets f32 and
records the compiled model's properties (threads, hint, precision, streams, pinning) in the
point's flags. An INT8 IR runs its quantized layers in INT8 and the rest in f32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pbkit.core.errors import PbkitError, first_line
from pbkit.export import openvino_env
from pbkit.measure.runner import Runner, RunSpec

# what the record keeps of a compiled model (those it answers)
PROPERTIES = (
    "INFERENCE_NUM_THREADS",
    "PERFORMANCE_HINT",
    "INFERENCE_PRECISION_HINT",
    "EXECUTION_MODE_HINT",
    "NUM_STREAMS",
    "ENABLE_CPU_PINNING",
    "ENABLE_HYPER_THREADING",
    "SCHEDULING_CORE_TYPE",
    "OPTIMAL_NUMBER_OF_INFER_REQUESTS",
    "EXECUTION_DEVICES",
)


def _import() -> Any:
    return openvino_env.openvino()  # (its telemetry declined: no network attempt)


def version() -> str:
    return str(_import().get_version())


def device_reason(device: str) -> str | None:
    """None when OpenVINO sees ``device`` (CPU, GPU), else why not."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return "python package 'openvino' is not installed"
    ov = _import()
    try:
        devices = list(ov.Core().available_devices)
    except Exception as e:  # a plugin that fails to load
        return f"OpenVINO could not list its devices: {first_line(e)}"
    if not any(d == device or d.startswith(device + ".") for d in devices):
        what = "Intel GPU" if device == "GPU" else f"device {device}"
        return f"OpenVINO {version()} sees no {what} (devices: {', '.join(devices) or 'none'})"
    return None


def config_for(spec: RunSpec, device: str) -> dict[str, Any]:
    """The compile configuration: latency hint, one stream, the bench's threads (CPU), f32."""
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if device == "CPU":
        cfg.update(INFERENCE_NUM_THREADS=int(spec.threads), NUM_STREAMS=1)
    return cfg


def _plain(value: Any) -> Any:
    """A property value as JSON holds it: an element type by its name (``f32``), an enum by its
    name (``PERFORMANCE``), a list item by item."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "get_type_name"):  # ov.Type
        return str(value.get_type_name())
    name = getattr(value, "name", None)
    return str(name) if isinstance(name, str) else str(value)


class OvRunner(Runner):
    """``perf_count``: also OpenVINO's per-layer counters (``request.get_profiling_info()``),
    for ``pbkit explain``; the bench never turns them on."""

    def __init__(self, spec: RunSpec, device: str = "CPU", perf_count: bool = False) -> None:
        super().__init__()
        if spec.precision == "fp16":
            raise PbkitError("OpenVINO runs fp32 and int8 here; fp16 is not measured on it")
        ov = _import()
        core = ov.Core()
        try:
            model = core.read_model(str(spec.path))
            cfg = config_for(spec, device) | ({"PERF_COUNT": True} if perf_count else {})
            self.compiled = core.compile_model(model, device, cfg)
        except Exception as e:  # a corrupt file, an operator the plugin lacks
            raise PbkitError(f"OpenVINO cannot compile {spec.path.name}: {first_line(e)}") from e
        self.request = self.compiled.create_infer_request()
        self.x = np.ascontiguousarray(spec.x.numpy())
        self.outputs_ = list(self.compiled.outputs)
        self.flags.update(
            openvino=str(ov.get_version()),
            ov_device=device,
            ov_properties=self._properties(),
        )

    def _properties(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in PROPERTIES:
            try:
                value = self.compiled.get_property(key)
            except Exception:  # a property this device does not answer
                continue
            out[key] = _plain(value)
        return out

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        res = self.request.infer({0: x})
        return [np.asarray(res[o]) for o in self.outputs_]

    def _query(self) -> list[np.ndarray]:
        return self._run(self.x)

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        return [o.copy() for o in self._run(np.ascontiguousarray(x, dtype=np.float32))]

    def close(self) -> None:
        self.request = None
        self.compiled = None
