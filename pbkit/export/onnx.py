"""Export to ONNX (opset >= 17) from the pruned model object itself, and check parity vs torch."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbkit.core.errors import PbkitError, first_line
from pbkit.core.fileio import atomic_write, sha256_file
from pbkit.models import counts
from pbkit.models.outputs import output_tensors

INPUT_NAME = "input"


def to_onnx(
    model: nn.Module,
    input_size: int,
    path: str | Path,
    opset: int = 18,
    exporter: str = "dynamo",
    dtype: torch.dtype = torch.float32,
    example: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Export with a dynamic batch axis; atomically. Returns the artifact's description.

    ``dtype`` torch.float16 writes a strongly typed fp16 model (weights, inputs and outputs in
    fp16), which is how TensorRT 11 builds fp16 engines. ``example`` replaces the image batch
    traced (a single layer's input, for latency tables)."""
    model.eval()
    x = (counts.example_input(input_size, batch=2) if example is None else example).to(dtype)
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
            errors.append(f"{kind}: {first_line(e)}")
            continue
        import onnx

        m = onnx.load(str(path), load_external_data=False)
        return {
            "path": Path(path).name,
            "sha256": sha256_file(path),
            "bytes": Path(path).stat().st_size,
            "opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
            "exporter": f"torch.onnx ({kind})",
            "torch": torch.__version__,
            "input_name": INPUT_NAME,
            "output_names": out_names,
            "dynamic_batch": True,
            "fallback_errors": errors,
            "dtype": str(dtype).removeprefix("torch."),
        }
    raise PbkitError(f"ONNX export failed: {'; '.join(errors)}")


class FixedBatchError(RuntimeError):
    pass


def _check_dynamic_batch(path: Path) -> None:
    """The batch sweep needs a symbolic batch axis; an exporter may specialise it silently."""
    import onnx

    dim = (
        onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    )
    if not dim.dim_param:
        raise FixedBatchError(f"the batch axis was specialised to {dim.dim_value}")


def _export(
    model: nn.Module, x: torch.Tensor, path: Path, opset: int, kind: str, out_names: list[str]
) -> None:
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        if kind == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=out_names,
                dynamic_shapes=({0: batch},),
                external_data=False,
                optimize=True,
            )
        else:
            axes = {n: {0: "batch"} for n in [INPUT_NAME, *out_names]}
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=out_names,
                dynamic_axes=axes,
            )
