from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pbkit.core.errors import PbkitError
from pbkit.export import onnx as onnx_export
from pbkit.export import parity
from pbkit.measure.runner import ort_session
from pbkit.models import checkpoint, counts
from tests.conftest import prune_model


def test_parity_gate() -> None:
    ref = [np.array([1.0, -2.0, 3.0], dtype=np.float32)]
    ok = parity.compare([ref[0] + 1e-6], ref, rtol=1e-3, atol=1e-5)
    assert ok["passed"] and ok["cosine"] == pytest.approx(1.0)
    bad = parity.compare(
        [ref[0] + np.array([0, 0, 0.1], dtype=np.float32)], ref, rtol=1e-3, atol=1e-5
    )
    assert not bad["passed"] and bad["max_abs"] == pytest.approx(0.1, rel=1e-4)
    assert bad["max_rel"] == pytest.approx(0.1 / 3, rel=1e-3)
    nan = parity.compare([np.array([np.nan, 0, 0], dtype=np.float32)], ref, 1e-3, 1e-5)
    assert not nan["passed"] and nan["max_abs"] is None  # a record holds no NaN
    with pytest.raises(PbkitError, match=r"pruned.onnx gives 1 output\(s\) of shape \[2\]"):
        parity.compare([ref[0][:2]], ref, 1e-3, 1e-5, what="pruned.onnx")
    # outputs of 1e12 (Inception v3 at random init): fp32 rounding of that size passes on a
    # near-zero element, an error of 1e-4 of the scale does not
    huge = [np.array([1e12, -1e12, 3.0], dtype=np.float32)]
    fine = parity.compare([huge[0] + np.array([0, 0, 5e5], dtype=np.float32)], huge, 1e-3, 1e-5)
    assert fine["passed"] and fine["atol_scale"] == pytest.approx(1e12)
    assert not parity.compare(
        [huge[0] + np.array([0, 0, 1e8], dtype=np.float32)], huge, 1e-3, 1e-5
    )["passed"]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_pruned_model_exports_with_dynamic_batch_and_parity(
    pruned_run: Path, tmp_path: Path, exporter: str
) -> None:
    model, spec, _ = checkpoint.load_model(pruned_run / "pruned.pt")
    info = onnx_export.to_onnx(
        model, spec.input_size, tmp_path / "m.onnx", opset=18, exporter=exporter
    )
    assert info["opset"] >= 17 and exporter in info["exporter"]
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    sess = ort_session(tmp_path / "m.onnx", 1)
    for batch in (1, 5):
        x = counts.example_input(spec.input_size, batch=batch)
        got = sess.run(None, {"input": x.numpy()})
        assert parity.compare(list(got), parity.reference_outputs(model, x), 1e-3, 1e-5)["passed"]
    # the exported graph carries the pruned widths, not the dense ones
    dense, _, _ = checkpoint.load_model(pruned_run / "dense.pt")
    assert (tmp_path / "m.onnx").stat().st_size < 0.9 * sum(
        p.numel() * 4 for p in dense.parameters()
    )


def test_vit_exports_with_parity(tmp_path: Path) -> None:
    from pbkit import models

    spec = models.resolve(
        "timm:vit_small_patch16_224",
        input_size=32,
        num_classes=10,
        kwargs={"depth": 2, "patch_size": 8},
    )
    m = models.build(spec).eval()
    prune_model(m, spec, "l1", iterative_steps=100)
    onnx_export.to_onnx(m, 32, tmp_path / "vit.onnx", exporter="torchscript")
    sess = ort_session(tmp_path / "vit.onnx", 1)
    x = counts.example_input(32, batch=2)
    assert parity.compare(
        list(sess.run(None, {"input": x.numpy()})), parity.reference_outputs(m, x), 1e-3, 1e-5
    )["passed"]


def test_export_falls_back_then_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pbkit.core.errors import PbkitError

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    tried: list[str] = []
    real = onnx_export._export

    def flaky(m, x, path, opset, kind, names):  # type: ignore[no-untyped-def]
        tried.append(kind)
        if kind == "dynamo":
            raise RuntimeError("unsupported op")
        real(m, x, path, opset, kind, names)

    monkeypatch.setattr(onnx_export, "_export", flaky)
    info = onnx_export.to_onnx(model, 8, tmp_path / "ok.onnx", exporter="dynamo")
    assert tried == ["dynamo", "torchscript"] and "torchscript" in info["exporter"]
    assert info["fallback_errors"] == ["dynamo: RuntimeError: unsupported op"]

    def broken(*a: object) -> None:
        raise RuntimeError("nope")

    monkeypatch.setattr(onnx_export, "_export", broken)
    with pytest.raises(
        PbkitError, match="ONNX export failed: dynamo: RuntimeError: nope; torchscript"
    ):
        onnx_export.to_onnx(model, 8, tmp_path / "w.onnx", exporter="dynamo")
    assert not (tmp_path / "w.onnx").exists()


def test_models_returning_no_tensor_are_refused(tmp_path: Path) -> None:
    from pbkit.core.errors import PbkitError

    class Scalar(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> float:
            return float(x.sum())

    with pytest.raises(PbkitError, match="no tensor"):
        onnx_export.to_onnx(Scalar(), 8, tmp_path / "s.onnx")
