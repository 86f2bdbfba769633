"""INT8 after pruning: post-training static quantization of a run's fp32 ONNX, calibrated on the
same images for the dense and the pruned model (../shared/reference/deployment.md, sections 1-3).

- ``ort`` (ONNX Runtime, ``ort-cpu``): ``quantize_static`` in the QDQ format, weights QInt8 (per
  channel as ``export.int8.per_channel`` says), activations **QUInt8**: the CPU execution provider
  on x86 fuses U8/S8 QDQ into QLinearConv and friends, while signed activations run as
  DequantizeLinear -> float op -> QuantizeLinear, slower than fp32 (deployment.md, section 1).
  The model is pre-processed first (shape inference and ORT's optimisation pass: a Conv bias fed
  through an Identity is folded, not quantized as an activation).
- ``ov`` (OpenVINO, ``ov-cpu``): the ONNX read by ``core.read_model`` (not the OVC converter, which
  opens a telemetry session), quantized by ``nncf.quantize`` (preset MIXED: symmetric weights,
  asymmetric activations, as ONNX Runtime's), saved as an fp32 IR.
- ``trt`` (TensorRT): the same QDQ quantization with symmetric QInt8 activations and weights (zero
  points 0, which explicit quantization needs); the engine is built from it as a strongly typed
  network (:mod:`pbkit.export.tensorrt`).

Telemetry: NNCF's is replaced by a stub when ``NNCF_CI`` is set before it is imported (set here);
ONNX Runtime's is off with ``ORT_DISABLE_TELEMETRY`` (deployment.md, section 7).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pbkit.core import record
from pbkit.core.config import Int8Cfg
from pbkit.core.errors import PbkitError, first_line
from pbkit.core.fileio import atomic_write, check_target, sha256_file

FAMILIES = ("ort", "ov", "trt")
FAMILY_TITLES = {
    "ort": "ONNX Runtime QDQ",
    "ov": "OpenVINO (NNCF)",
    "trt": "TensorRT QDQ (symmetric)",
}
CALIBRATION_BATCH = 16  # images per calibration call


class QuantizeError(PbkitError):
    """A quantizer failed on a model (an operator it does not take, a shape it cannot infer)."""


@dataclass(frozen=True)
class CalibrationSet:
    """The images that calibrate every INT8 model of a run (float32, NCHW), and where they come
    from."""

    images: np.ndarray
    source: str  # the dataset's name | synthetic
    split: str  # train | synthetic
    seed: int

    def describe(self, cfg: Int8Cfg) -> record.QuantCalibration:
        return record.QuantCalibration(
            source=self.source,
            split=self.split,
            images=int(self.images.shape[0]),
            method=cfg.method,
            per_channel=cfg.per_channel,
            seed=self.seed,
            input_shape=[int(d) for d in self.images.shape[1:]],
            sha256=hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).hexdigest(),
        )

    def batches(self) -> Iterator[np.ndarray]:
        for i in range(0, len(self.images), CALIBRATION_BATCH):
            yield self.images[i : i + CALIBRATION_BATCH]


def synthetic(n: int, input_size: int, seed: int) -> CalibrationSet:
    """Seeded N(0, 1) images, the distribution pbkit's latency inputs are drawn from: right for
    measuring an INT8 model's speed, meaningless for its accuracy."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, 3, input_size, input_size), dtype=np.float32)
    return CalibrationSet(images, "synthetic", "synthetic", seed)


def telemetry_off() -> None:
    """Before ONNX Runtime or NNCF is first imported: no telemetry (deployment.md, section 7)."""
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    os.environ["NNCF_CI"] = "1"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizers' progress bars and warnings kept off the terminal (pbkit shows Steps)."""
    sink = io.StringIO()
    # (NNCF imports torch's extension loader, which logs that this machine has no CUDA runtime)
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def file_name(variant: str, family: str) -> str:
    return f"{variant}.int8.{family}.xml" if family == "ov" else f"{variant}.int8.{family}.onnx"


def _base(family: str, variant: str, src: Path) -> dict[str, Any]:
    return {
        "family": family,
        "variant": variant,
        "source": src.name,
        "source_sha256": sha256_file(src),
    }


def failed(family: str, variant: str, src: Path, reason: str) -> record.QuantArtifact:
    return record.QuantArtifact(**_base(family, variant, src), status="failed", reason=reason)


def quantize(
    family: str, variant: str, src: Path, dst: Path, calib: CalibrationSet, cfg: Int8Cfg
) -> record.QuantArtifact:
    """Quantize ``src`` (an fp32 ONNX) for ``family`` into ``dst``, atomically; its record entry.
    A quantizer failure is :class:`QuantizeError` (one line: which model, which quantizer, why)."""
    telemetry_off()
    t0 = time.perf_counter()
    try:
        with _quiet():
            if family == "ov":
                info = _ov(src, dst, calib, cfg)
            elif family in ("ort", "trt"):
                info = _ort(src, dst, calib, cfg, symmetric=family == "trt")
            else:
                raise PbkitError(f"no INT8 quantizer {family!r}; choose one of {FAMILIES}")
    except PbkitError:
        raise
    except Exception as e:  # a quantizer's failures come in many types (an unusual operator)
        raise QuantizeError(
            f"{FAMILY_TITLES.get(family, family)} could not quantize the {variant} model"
            f" ({src.name}): {first_line(e)}"
        ) from e
    return record.QuantArtifact(
        **_base(family, variant, src),
        status="ok",
        path=dst.name,
        sha256=sha256_file(dst),
        bytes=dst.stat().st_size,
        **info,
        seconds=round(time.perf_counter() - t0, 3),
    )


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a calibration set."""

    def __init__(self, calib: CalibrationSet, name: str) -> None:
        self.it = calib.batches()
        self.name = name

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.it, None)
        return None if x is None else {self.name: x}


def _ort(
    src: Path, dst: Path, calib: CalibrationSet, cfg: Int8Cfg, symmetric: bool
) -> dict[str, Any]:
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    activations = QuantType.QInt8 if symmetric else QuantType.QUInt8
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {}
    name = _input_name(src)

    class Reader(_Reader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)

        def write(path: Path) -> None:
            quantize_static(
                str(pre),
                str(path),
                Reader(calib, name),
                quant_format=QuantFormat.QDQ,
                per_channel=cfg.per_channel,
                activation_type=activations,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[cfg.method],
                extra_options=extra,
            )

        atomic_write(dst, write)
    return {
        "tool": f"onnxruntime.quantization {onnxruntime.__version__} (quantize_static)",
        "settings": {
            "format": "QDQ",
            "activations": "QInt8 symmetric" if symmetric else "QUInt8 asymmetric",
            "weights": "QInt8 symmetric",
            "per_channel": cfg.per_channel,
            "calibrate_method": cfg.method,
            "pre_process": "quant_pre_process (shape inference, ORT optimisation)",
        },
    }


def _input_name(src: Path) -> str:
    import onnx

    return str(onnx.load(str(src), load_external_data=False).graph.input[0].name)


NNCF_RANGES = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE", "entropy": "HISTOGRAM"}


def _ov(src: Path, dst: Path, calib: CalibrationSet, cfg: Int8Cfg) -> dict[str, Any]:
    # (neither ships type information; both imported with their telemetry declined)
    from pbkit.export import openvino_env

    nncf = openvino_env.nncf()
    ov = openvino_env.openvino()
    from nncf.quantization.advanced_parameters import (  # type: ignore[import-untyped]
        AdvancedQuantizationParameters,
        QuantizationParameters,
    )
    from nncf.quantization.range_estimator import (  # type: ignore[import-untyped]
        RangeEstimatorParametersSet,
    )

    core = ov.Core()
    model = core.read_model(str(src))
    items = [calib.images[i : i + 1] for i in range(len(calib.images))]
    ranges = NNCF_RANGES[cfg.method]
    advanced = AdvancedQuantizationParameters(
        weights_quantization_params=QuantizationParameters(per_channel=cfg.per_channel),
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, ranges),
    )
    quantized = nncf.quantize(
        model,
        nncf.Dataset(items),
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(items),
        advanced_parameters=advanced,
    )
    bin_path = dst.with_suffix(".bin")
    check_target(dst)
    check_target(bin_path)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".int8-") as tmp:
        tmp_xml = Path(tmp) / dst.name
        ov.save_model(quantized, str(tmp_xml), compress_to_fp16=False)
        # the weights first: an IR is its .xml, which names no other file than its own .bin
        os.replace(tmp_xml.with_suffix(".bin"), bin_path)
        os.replace(tmp_xml, dst)
    return {
        "weights_path": bin_path.name,
        "weights_sha256": sha256_file(bin_path),
        "tool": f"nncf {nncf.__version__} (nncf.quantize), openvino {ov.get_version()}",
        "settings": {
            "format": "OpenVINO IR (FakeQuantize), fp32 weights file",
            "preset": "MIXED (symmetric weights, asymmetric activations)",
            "per_channel": cfg.per_channel,
            "activations_range": f"{cfg.method} ({ranges})",
            "fast_bias_correction": True,
        },
    }


def remove(run_dir: Path, name: str | None) -> None:
    """Remove an artifact that failed to be made again (and an IR's weights file)."""
    if not name:
        return
    path = run_dir / name
    for p in (path, path.with_suffix(".bin") if path.suffix == ".xml" else None):
        if p is not None and p.is_file():
            p.unlink()


def have(run_dir: Path, art: record.QuantArtifact) -> bool:
    """The artifact is there, as its record entry names it."""
    if art.status != "ok" or not art.path:
        return False
    path = run_dir / art.path
    if not path.is_file() or sha256_file(path) != art.sha256:
        return False
    if art.weights_path:
        w = run_dir / art.weights_path
        return w.is_file() and sha256_file(w) == art.weights_sha256
    return True


__all__ = [
    "FAMILIES",
    "CalibrationSet",
    "QuantizeError",
    "failed",
    "file_name",
    "have",
    "quantize",
    "remove",
    "synthetic",
    "telemetry_off",
]
