"""Export to ONNX (opset >= 17) from the pruned model object itself, and check parity vs torch."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pbkit import counts
from pbkit.errors import PbkitError
from pbkit.fileio import atomic_write, sha256_file

INPUT_NAME = "input"


def output_tensors(out: Any) -> list[torch.Tensor]:
    """A model's outputs (tensors, or lists / tuples / dicts of them) as a flat list of tensors."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, list | tuple):
        return [t for o in out for t in output_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in output_tensors(o)]
    return []


def to_onnx(model: nn.Module, input_size: int, path: str | Path, opset: int = 18,
            exporter: str = "dynamo", dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Export with a dynamic batch axis; atomically. Returns the artifact's description.

    ``dtype`` torch.float16 writes a strongly typed fp16 model (weights, inputs and outputs in
    fp16), which is how TensorRT 11 builds fp16 engines."""
    model.eval()
    x = counts.example_input(input_size, batch=2).to(dtype)
    with torch.no_grad():
        n_out = len(output_tensors(model(x)))
    if n_out == 0:
        raise PbkitError("the model's forward returns no tensor; there is nothing to export")
    out_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    errors: list[str] = []
    order = ["dynamo", "torchscript"] if exporter == "dynamo" else ["torchscript"]
    for kind in order:
        try:
            def write(tmp: Path, kind: str = kind) -> None:
                _export(model, x, tmp, opset, kind, out_names)
                _check_dynamic_batch(tmp)

            atomic_write(path, write)
        except Exception as e:  # exporter failures come in many types; try the next exporter
            errors.append(f"{kind}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
            continue
        import onnx

        m = onnx.load(str(path), load_external_data=False)
        return {"path": Path(path).name, "sha256": sha256_file(path), "bytes": Path(path).stat().st_size,
                "opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
                "exporter": f"torch.onnx ({kind})", "torch": torch.__version__, "input_name": INPUT_NAME,
                "output_names": out_names, "dynamic_batch": True, "fallback_errors": errors,
                "dtype": str(dtype).removeprefix("torch.")}
    raise PbkitError(f"ONNX export failed: {'; '.join(errors)}")


class FixedBatchError(RuntimeError):
    pass


def _check_dynamic_batch(path: Path) -> None:
    """The batch sweep needs a symbolic batch axis; an exporter may specialise it silently."""
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    if not dim.dim_param:
        raise FixedBatchError(f"the batch axis was specialised to {dim.dim_value}")


def _export(model: nn.Module, x: torch.Tensor, path: Path, opset: int, kind: str, out_names: list[str]) -> None:
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        if kind == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=out_names, dynamic_shapes=({0: batch},), external_data=False,
                              optimize=True)
        else:
            axes = {n: {0: "batch"} for n in [INPUT_NAME, *out_names]}
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=out_names, dynamic_axes=axes)


def compare(out: list[np.ndarray], ref: list[np.ndarray], rtol: float, atol: float) -> dict[str, Any]:
    """max abs error, max error relative to the reference's largest magnitude, cosine, and the gate."""
    if len(out) != len(ref) or any(a.shape != b.shape for a, b in zip(out, ref, strict=False)):
        return {"max_abs": float("inf"), "max_rel": float("inf"), "cosine": 0.0, "passed": False}
    a = np.concatenate([o.astype(np.float64).ravel() for o in out])
    b = np.concatenate([r.astype(np.float64).ravel() for r in ref])
    diff = np.abs(a - b)
    finite = bool(np.isfinite(a).all())
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))
    return {
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "max_rel": float(diff.max() / max(np.abs(b).max(), 1e-12)) if diff.size else 0.0,
        "cosine": cosine,
        "passed": finite and bool(np.all(diff <= atol + rtol * np.abs(b))),
    }


def reference_outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    model.eval()
    with torch.no_grad():
        return [t.float().numpy() for t in output_tensors(model(x))]
