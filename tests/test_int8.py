"""INT8 after pruning (issue #36): quantized dense and pruned models on ort-cpu and ov-cpu, the
accuracy on the engine, the precision refused where a backend has no INT8 path, the calibration a
part of the comparison, and records made before all this still read and render."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pbkit.core import record
from pbkit.core.fileio import sha256_file
from tests.conftest import Result, once

# the bench settings of these tests: quick, a few calibration images
FAST = [
    "--quick",
    "--set",
    "export.exporter=torchscript",
    "--set",
    "export.int8.images=16",
]
# accuracy on the engine at fp32 equals PyTorch's on the same images within this many points
# (ONNX Runtime and OpenVINO at f32 inference precision differ from PyTorch by float rounding: an
# image whose two top logits are within 1e-6 may flip; 0.5 points is 1 image of 200)
FP32_TOLERANCE = 0.5


@pytest.fixture
def run_copy(pruned_run: Path, tmp_path: Path) -> Path:
    """The shared data-free run (resnet20_cifar, l1, 2x), copied: these tests write to it."""
    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    return run


@pytest.fixture(scope="session")
def digits_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real-data run: resnet20 on sklearn's digits (200 test images), a base trained 4
    epochs (about 95% top-1), pruned 2x (l1), not finetuned."""
    from pbkit import stages
    from pbkit.core import config

    def build(out: Path) -> str:
        cfg = config.load(
            None,
            [
                f"out={out}",
                "model.name=resnet20_cifar",
                "dataset.name=digits",
                "dataset.image_size=16",
                "dataset.test_limit=200",
                "base.epochs=4",
                "base.lr=0.05",
                "base.batch_size=64",
                "prune.method=l1",
                "prune.speedup=2",
                "export.exporter=torchscript",
            ],
        )
        return str(stages.run(cfg, until="prune", quiet=True).run_dir)

    return Path(once(tmp_path_factory, "digits_small", build))


def _points(rec: record.Record, precision: str) -> dict[tuple[str, str], record.LatencyPoint]:
    return {(p.backend, p.variant): p for p in rec.latency if p.precision == precision}


def test_quantized_dense_and_pruned_run_on_ort_and_openvino(
    run_copy: Path, pbkit: Callable[..., Result]
) -> None:
    r = pbkit(
        "bench",
        run_copy,
        "--backend",
        "ort-cpu",
        "ov-cpu",
        "--precision",
        "fp32",
        "int8",
        "--calibration",
        "synthetic",
        *FAST,
    )
    assert r.code == 0, r.err
    rec = record.read(run_copy)
    assert rec.schema_version == record.SCHEMA_VERSION
    int8 = _points(rec, "int8")
    assert set(int8) == {(b, v) for b in ("ort-cpu", "ov-cpu") for v in ("dense", "pruned")}
    q = rec.quantization
    assert q is not None and q.calibration is not None
    assert (q.calibration.source, q.calibration.split, q.calibration.images) == (
        "synthetic",
        "synthetic",
        16,
    )
    assert q.calibration.method == "minmax" and q.calibration.per_channel is True
    arts = {(a.family, a.variant): a for a in q.artifacts or []}
    assert set(arts) == {(f, v) for f in ("ort", "ov") for v in ("dense", "pruned")}
    onnx = rec.artifacts["onnx"]
    for (family, variant), a in arts.items():
        assert a.status == "ok" and a.path and a.sha256 == sha256_file(run_copy / a.path)
        assert a.source_sha256 == onnx[variant]["sha256"]  # quantized from the run's ONNX
        backend = {"ort": "ort-cpu", "ov": "ov-cpu"}[family]
        assert int8[(backend, variant)].artifact_sha256 == a.sha256  # measured what was made
        assert int8[(backend, variant)].flags.quantized == family
    assert arts[("ov", "dense")].weights_sha256 == sha256_file(
        run_copy / str(arts[("ov", "dense")].weights_path)
    )
    # the QDQ model is quantized: QuantizeLinear nodes, U8 activations for the CPU kernels
    import onnx as onnx_lib

    graph = onnx_lib.load(str(run_copy / str(arts[("ort", "pruned")].path))).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 5
    # OpenVINO's version and the CPU plugin's properties are in the record; fp32 means f32
    ov = int8[("ov-cpu", "pruned")].flags
    assert ov.openvino and ov.ov_properties is not None
    assert ov.ov_properties["INFERENCE_PRECISION_HINT"] in ("f32", "float32")
    assert "INFERENCE_NUM_THREADS" in ov.ov_properties and "PERFORMANCE_HINT" in ov.ov_properties
    # int8 parity is a sanity gate (cosine), not the fp32 max-abs gate
    gates = {p.gate for p in rec.parity if p.precision == "int8"}
    assert gates == {"int8"} and all(p.passed for p in rec.parity)
    assert "pruned int8 over dense fp32" in r.out and "INT8 calibrated on 16 synthetic" in r.out


@pytest.mark.slow
def test_accuracy_on_the_engine_equals_pytorch_at_fp32_and_is_recorded_at_int8(
    digits_small: Path, tmp_path: Path, pbkit: Callable[..., Result]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(digits_small, run)
    r = pbkit(
        "bench",
        run,
        "--backend",
        "ort-cpu",
        "ov-cpu",
        "--precision",
        "fp32",
        "int8",
        *FAST,
        "--set",
        "bench.engine_accuracy=all",
    )
    assert r.code == 0, r.err
    rec = record.read(run)
    q = rec.quantization
    assert q is not None and q.calibration is not None
    assert (q.calibration.source, q.calibration.split) == ("digits", "train")  # never the test
    acc = {(a.backend, a.precision, a.variant): a for a in rec.engine_accuracy}
    assert set(acc) == {
        (b, p, v)
        for b in ("ort-cpu", "ov-cpu")
        for p in ("fp32", "int8")
        for v in ("dense", "pruned")
    }
    for (_, precision, variant), a in acc.items():
        assert a.status == "ok" and a.metric == "top1" and a.images == 200 and a.split == "test"
        assert a.value is not None and a.torch_value is not None and a.agreement is not None
        if precision == "fp32":
            assert abs(a.value - a.torch_value) <= FP32_TOLERANCE
            assert a.agreement >= 99.0
        # PyTorch's on the same images is the record's own accuracy of that model
        own = rec.accuracy.base if variant == "dense" else rec.accuracy.pruned
        assert own is not None and abs(a.torch_value - own) < 1e-3  # (recorded to 4 decimals)
    # the dense model was trained (digits: far above chance): INT8 kept most of it
    assert acc[("ort-cpu", "fp32", "dense")].value > 50
    assert acc[("ort-cpu", "int8", "dense")].value > 50
    assert "top1 on ort-cpu int8 (test)" in r.out


def test_int8_without_calibration_data_is_one_line(
    run_copy: Path, pbkit: Callable[..., Result]
) -> None:
    r = pbkit("bench", run_copy, "--backend", "ort-cpu", "--precision", "int8", *FAST)
    assert r.code == 2 and r.err.count("\n") == 1
    assert "--calibration synthetic" in r.err and "dataset.name is null" in r.err
    r = pbkit("export", run_copy, "--precision", "int8", "--set", "export.exporter=torchscript")
    assert r.code == 2 and "--calibration synthetic" in r.err
    assert record.read(run_copy).quantization is None  # nothing was made


def test_a_backend_without_int8_is_refused_naming_those_that_have_it(
    run_copy: Path, pbkit: Callable[..., Result]
) -> None:
    r = pbkit(
        "bench",
        run_copy,
        "--backend",
        "torch-cpu",
        "--precision",
        "int8",
        "--calibration",
        "synthetic",
        *FAST,
    )
    assert r.code == 2 and r.err.count("\n") == 1
    assert "'torch-cpu' has no int8 path" in r.err
    assert "ort-cpu" in r.err and "ov-cpu" in r.err
    r = pbkit("export", run_copy, "--precision", "fp16")
    assert r.code == 2 and "--format tensorrt" in r.err
    r = pbkit("bench", run_copy, "--precision", "int4")
    assert r.code == 2  # not a precision at all (click's choices)


def test_a_quantizer_failure_is_recorded_and_the_fp32_results_kept(
    run_copy: Path, pbkit: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pbkit.export import quantize

    def fails(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Unsupported operator: FancyOp\nwith a traceback below")

    monkeypatch.setattr(quantize, "_ort", fails)
    r = pbkit(
        "bench",
        run_copy,
        "--backend",
        "ort-cpu",
        "--precision",
        "fp32",
        "int8",
        "--calibration",
        "synthetic",
        *FAST,
    )
    last = r.err.strip().splitlines()[-1]  # (the progress lines go to stderr before it)
    assert r.code == 2 and last.startswith("error: INT8 quantization failed")
    assert "ort-cpu/int8" in last and "FancyOp" in last
    rec = record.read(run_copy)
    assert _points(rec, "fp32").keys() >= {("ort-cpu", "dense"), ("ort-cpu", "pruned")}
    assert not _points(rec, "int8")
    failed = [a for a in (rec.quantization.artifacts or []) if a.status == "failed"]  # type: ignore[union-attr]
    assert {a.variant for a in failed} == {"dense", "pruned"}
    assert all("FancyOp" in (a.reason or "") and "\n" not in (a.reason or "") for a in failed)
    assert not list(run_copy.glob("*.int8.ort.onnx"))  # no half-made model left
    # `pbkit export --precision int8` says so in one line too
    r = pbkit("export", run_copy, "--precision", "int8", "--set", "export.exporter=torchscript")
    assert r.code == 2 and "FancyOp" in r.err


def test_quantizing_again_only_when_the_onnx_or_the_calibration_changed(
    run_copy: Path, pbkit: Callable[..., Result]
) -> None:
    args = ["export", run_copy, "--precision", "int8", "--calibration", "synthetic"]
    args += ["--set", "export.exporter=torchscript", "--set", "export.int8.images=8"]
    assert pbkit(*args).code == 0
    first = record.read(run_copy).quantization
    assert first is not None and {a.status for a in first.artifacts or []} == {"ok"}
    assert pbkit(*args).code == 0  # the same settings: the same models, not made again
    again = record.read(run_copy).quantization
    assert again is not None
    assert [a.seconds for a in again.artifacts or []] == [a.seconds for a in first.artifacts or []]
    r = pbkit(*args, "--set", "export.int8.method=percentile", "--set", "export.int8.seed=3")
    assert r.code == 0
    third = record.read(run_copy).quantization
    assert third is not None and third.calibration is not None
    assert (third.calibration.method, third.calibration.seed) == ("percentile", 3)
    assert third.calibration.sha256 != first.calibration.sha256  # type: ignore[union-attr]


def test_config_validation_of_the_precision_axis() -> None:
    from pbkit.core import config
    from pbkit.core.errors import PbkitError

    cfg = config.load(
        None,
        ["bench.precisions=[fp32,int8]", "export.int8.calibration=synthetic"],
    )
    assert cfg.bench.precisions == ["fp32", "int8"] and cfg.export.int8.images == 128
    with pytest.raises(PbkitError, match="int8 needs calibration images"):
        config.load(None, ["bench.precisions=[int8]"])
    with pytest.raises(PbkitError, match="method"):
        config.load(None, ["export.int8.method=kl", "export.int8.calibration=synthetic"])
    with pytest.raises(PbkitError, match="limits.iters"):
        config.load(None, ["export.int8.images=100000000"])


REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"


def test_records_made_before_int8_still_read_and_render() -> None:
    from pbkit.report import deployed, setups
    from pbkit.report import leaderboard as rep
    from pbkit.report.tables import run_table

    path = REFERENCE / "bench-example-cpu-2core" / "record.json"
    data = json.loads(path.read_text())
    assert "quantization" not in data and "engine_accuracy" not in data
    rec = record.read(path)
    assert rec.quantization is None and rec.engine_accuracy == []
    assert str(run_table(rec).title).startswith("resnet18_cifar")
    assert deployed.calibration_line(rec) is None
    assert all(dp.vs_dense_fp32 == dp.speedup for dp in deployed.points(rec))
    assert setups.from_record(rec)["quant"] is None
    rows = rep.rows([(path, rec)])
    assert rows and rows[0].vs_dense_fp32 == {} and rows[0].engine_acc == {}
    text = rep.markdown(rows)
    assert "pruned-int8" not in text and "measured x ort-cpu@b1" in text


def _with_int8(rec: record.Record, images: int, speedup: float) -> record.Record:
    """A copy of ``rec`` with int8 points and a calibration of ``images`` images."""
    out = rec.model_copy(deep=True)
    extra = []
    dense_ms = next(
        p.median_ms
        for p in rec.latency
        if (p.precision, p.backend, p.variant) == ("fp32", "ort-cpu", "dense")
    )
    for p in rec.latency:
        if p.precision == "fp32" and p.backend == "ort-cpu":
            q = p.model_copy(deep=True)
            q.precision = "int8"  # twice as fast as fp32 dense, and the pruned `speedup` faster
            q.median_ms = dense_ms / (2.0 if p.variant == "dense" else 2.0 * speedup)
            q.speedup_vs_dense = speedup if p.variant == "pruned" else None
            q.speedup_ci = [speedup * 0.98, speedup * 1.02] if p.variant == "pruned" else None
            extra.append(q)
    out.latency = [*rec.latency, *extra]
    out.quantization = record.Quantization(
        calibration=record.QuantCalibration(
            source="synthetic",
            split="synthetic",
            images=images,
            method="minmax",
            per_channel=True,
            seed=0,
        ),
        artifacts=[],
    )
    return out


def test_calibration_is_part_of_the_setup_and_the_leaderboard_shows_int8(tmp_path: Path) -> None:
    from pbkit.report import leaderboard as rep
    from pbkit.report import setups

    path = REFERENCE / "bench-example-cpu-2core" / "record.json"
    rec = record.read(path)
    a, b = _with_int8(rec, 128, 1.5), _with_int8(rec, 64, 1.4)
    level, why = setups.infer([setups.from_record(a), setups.from_record(b)])
    assert level is None and why is not None and "INT8 calibration" in why and "images" in why
    assert setups.infer([setups.from_record(a), setups.from_record(a)])[0] == "S4.2"
    rows = rep.rows([(tmp_path / "a.json", a)])
    assert rows[0].measured["ort-cpu/int8@b1"] == 1.5
    assert rows[0].vs_dense_fp32["ort-cpu/int8@b1"] == pytest.approx(3.0, rel=1e-3)
    text = rep.markdown(rows)
    assert "pruned-int8 vs dense-int8 ort-cpu@b1" in text
    assert "pruned-int8 vs dense-fp32 ort-cpu" in text
    # two rows calibrated differently are never ranked in one group
    board = rep.leaderboard(rep.rows([(tmp_path / "a.json", a), (tmp_path / "b.json", b)]))
    assert len(board) == 2


def test_pareto_plot_from_records(tmp_path: Path) -> None:
    from pbkit.core.errors import PbkitError
    from pbkit.report import plots

    rec = _with_int8(record.read(REFERENCE / "bench-example-cpu-2core" / "record.json"), 64, 1.5)
    with pytest.raises(PbkitError, match="no accuracy on the engine"):
        plots.plot_deployed([rec], tmp_path / "none.png")
    rec.engine_accuracy = [
        record.EngineAccuracy(
            backend=be,
            precision=prec,
            variant=v,
            status="ok",
            metric="top1",
            value=90.0 - (1.0 if v == "pruned" else 0.0) - (0.5 if prec == "int8" else 0.0),
            torch_value=90.0,
            agreement=99.0,
            images=100,
        )
        for be in ("ort-cpu",)
        for prec in ("fp32", "int8")
        for v in ("dense", "pruned")
    ]
    out = plots.plot_deployed([rec], tmp_path / "pareto.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_openvino_gpu_is_listed_unavailable_with_its_reason(pbkit: Callable[..., Result]) -> None:
    r = pbkit("list", "backends", "--json")
    assert r.code == 0
    rows = {b["name"]: b for b in r.json()["backends"]}
    assert rows["ov-cpu"]["available"] is True and "int8" in rows["ov-cpu"]["precisions"]
    assert "int8" in rows["ort-cpu"]["precisions"] and "int8" in rows["tensorrt"]["precisions"]
    gpu = rows["ov-gpu"]
    assert gpu["available"] is False and "Intel GPU" in gpu["reason"]


def test_int8_artifact_names_and_synthetic_calibration_are_fixed() -> None:
    from pbkit.core.config import Int8Cfg
    from pbkit.export import quantize

    assert quantize.file_name("pruned", "ov") == "pruned.int8.ov.xml"
    assert quantize.file_name("dense", "trt") == "dense.int8.trt.onnx"
    a, b = quantize.synthetic(4, 8, 0), quantize.synthetic(4, 8, 0)
    assert a.images.shape == (4, 3, 8, 8) and a.images.dtype.name == "float32"
    assert a.describe(Int8Cfg()).sha256 == b.describe(Int8Cfg()).sha256
    assert quantize.synthetic(4, 8, 1).describe(Int8Cfg()).sha256 != a.describe(Int8Cfg()).sha256
    assert [len(x) for x in quantize.synthetic(40, 8, 0).batches()] == [16, 16, 8]


def test_telemetry_is_off_before_the_quantizers_import(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from pbkit.export import quantize

    monkeypatch.delenv("NNCF_CI", raising=False)
    quantize.telemetry_off()
    assert os.environ["NNCF_CI"] == "1" and os.environ["ORT_DISABLE_TELEMETRY"] == "1"


def test_tensorrt_int8_is_built_from_a_symmetric_qdq_model(run_copy: Path) -> None:
    """The QDQ model TensorRT builds its INT8 engine from (explicit quantization): symmetric INT8
    scales (every zero point 0, signed); the builder refuses a model without Q/DQ nodes. The
    engine build itself needs a GPU (tests/test_trt.py); this is what can be checked here."""
    import numpy as np
    import onnx as onnx_lib
    from onnx import numpy_helper

    from pbkit.core.config import Int8Cfg
    from pbkit.core.errors import PbkitError
    from pbkit.export import quantize, tensorrt

    src = run_copy / "pruned.onnx"
    dst = run_copy / quantize.file_name("pruned", "trt")
    art = quantize.quantize("trt", "pruned", src, dst, quantize.synthetic(8, 32, 0), Int8Cfg())
    assert art.status == "ok" and art.settings and "symmetric" in art.settings["activations"]
    graph = onnx_lib.load(str(dst)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    zero_points = [
        inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
    ]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert tensorrt.check_qdq(dst) == sum(n.op_type == "QuantizeLinear" for n in graph.node)
    with pytest.raises(PbkitError, match="no QuantizeLinear nodes"):
        tensorrt.check_qdq(src)


def test_the_deployed_page_is_what_its_script_renders_from_the_committed_records() -> None:
    """docs/deployed.md's measured block, results/reference/int8/README.md and LEADERBOARD.md are
    rendered by benchmarks/int8_reference.py from the committed records alone."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "int8_reference.py"
    spec = importlib.util.spec_from_file_location("int8_reference", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    files = mod.expected()
    assert len(files) == 3, "the records under results/reference/int8/ are committed"
    stale = [str(p) for p, text in files.items() if p.read_text(encoding="utf-8") != text]
    assert not stale, f"stale: {stale}; python benchmarks/int8_reference.py renders them"
    page = files[mod.PAGE]
    for name in ("ort-cpu", "ov-cpu", "resnet18_cifar", "yolov8n", "digits"):
        assert name in page


def test_openvino_and_nncf_import_without_telemetry(tmp_path: Path) -> None:
    """``import openvino`` would write a client id under ~/intel and queue an analytics event;
    through pbkit it declines consent, leaves CI unset, and NNCF's telemetry is a no-op."""
    import subprocess
    import sys

    code = (
        "import os\n"
        "from pbkit.export import openvino_env\n"
        "openvino_env.nncf()\n"
        "import openvino_telemetry as tm\n"
        "print(tm.Telemetry().consent, 'CI' in os.environ, os.environ.get('NNCF_CI'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NNCF_CI")}
    env["HOME"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False", "1"]
    assert not (tmp_path / "intel").exists()


def test_the_run_page_shows_the_accuracy_on_each_engine(tmp_path: Path) -> None:
    """The committed digits INT8 reference: its HTML run page lists the accuracy on each engine
    next to PyTorch's, and the calibration, as the run table does."""
    from pbkit.core import record
    from pbkit.report import html
    from tests.test_report_html import _unpack

    folder = Path(__file__).resolve().parents[1] / "results/reference/int8/digits-resnet20"
    rec = record.read(folder)
    page = _unpack(html.page([(folder / "record.json", rec)], [str(folder)]))["pages"][rec.run_id]
    assert "on ort-cpu int8 (test)" in page and "on ov-cpu int8 (test)" in page
    assert "PyTorch" in page and "INT8 calibration" in page
