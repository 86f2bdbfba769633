"""Parity: a backend's outputs against fp32 torch on the same fixed batch.

Gates (measurement.md): fp32 ``|a-b| <= atol*scale + rtol*|b|`` element-wise, where ``scale`` is the
reference's largest magnitude when that exceeds 1 (else 1): an output element that is the small
difference of terms far larger than itself carries fp32 rounding of their size, which no
element-wise relative bound can admit (torchvision's Inception v3 at random init gives logits of
1e12: errors of 5e5 are 4e-7 of its scale); for logits of order 1 the gate is measurement.md's.
fp16: cosine similarity >= ``fp16_cosine``. int8: not this element-wise gate (quantization moves
every output by design): finite outputs with cosine >= ``export.int8.cosine_min``, a check that
the model is not broken; whether INT8 kept the model's accuracy is judged by the task's metric on
the engine and the top-1 agreement with PyTorch (the bench's ``engine_accuracy``). Which outputs
are compared is the task's choice (a detector's raw head outputs, a classifier's logits); the
record names them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from pbkit.core.config import ExportCfg
from pbkit.core.errors import PbkitError
from pbkit.models.outputs import output_tensors


def compare(
    out: list[np.ndarray],
    ref: list[np.ndarray],
    rtol: float,
    atol: float,
    what: str = "the exported model",
) -> dict[str, Any]:
    """max abs error, max error relative to the reference's largest magnitude, cosine, and the gate
    (with the scale its atol was multiplied by). Errors that are not finite (an output of NaN)
    are None and fail the gate; outputs of another count or shape are not this model's: one line
    naming ``what``."""
    if len(out) != len(ref) or any(a.shape != b.shape for a, b in zip(out, ref, strict=False)):
        raise PbkitError(
            f"{what} gives {len(out)} output(s) of shape {_shapes(out)} where the model gives "
            f"{len(ref)} of shape {_shapes(ref)}: it is not this run's model"
        )
    a = np.concatenate([o.astype(np.float64).ravel() for o in out])
    b = np.concatenate([r.astype(np.float64).ravel() for r in ref])
    with np.errstate(all="ignore"):
        diff = np.abs(a - b)
        finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
        denom = float(np.linalg.norm(a) * np.linalg.norm(b))
        cosine = (
            float(a @ b / denom)
            if denom > 0 and np.isfinite(denom)
            else float(np.array_equal(a, b))
        )
        scale = max(1.0, float(np.abs(b).max())) if b.size and np.isfinite(b).all() else 1.0
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float(diff.max() / max(np.abs(b).max(), 1e-12)) if diff.size else 0.0
        passed = finite and bool(np.all(diff <= atol * scale + rtol * np.abs(b)))
    return {
        "max_abs": _finite(max_abs),
        "max_rel": _finite(max_rel),
        "cosine": _finite(cosine) if finite else 0.0,
        "passed": passed,
        "atol_scale": scale,
    }


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _shapes(arrays: list[np.ndarray]) -> str:
    return ", ".join(str(list(a.shape)) for a in arrays) or "none"


def reference_outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    model.eval()
    with torch.no_grad():
        return [t.float().numpy() for t in output_tensors(model(x))]


def check(
    got: list[np.ndarray],
    ref: list[np.ndarray],
    e: ExportCfg,
    precision: str,
    outputs: str = "all outputs",
    what: str = "the exported model",
) -> dict[str, Any]:
    """The parity record fields: the fp32 gate (rtol/atol), for fp16 cosine >= fp16_cosine, for
    int8 cosine >= int8.cosine_min."""
    cmp = compare(got, ref, e.rtol, e.atol, what)
    out = {**cmp, "rtol": e.rtol, "atol": e.atol, "outputs": outputs, "gate": precision}
    if precision == "fp16":
        out.update(
            passed=bool(cmp["max_abs"] is not None and cmp["cosine"] >= e.fp16_cosine),
            cosine_min=e.fp16_cosine,
        )
    elif precision == "int8":  # a sanity gate: INT8 is judged by the metric on the engine
        out.update(
            passed=bool(cmp["max_abs"] is not None and cmp["cosine"] >= e.int8.cosine_min),
            cosine_min=e.int8.cosine_min,
        )
    return out
