"""The backend registry, the CPU runners, the bench plan, memory, alignment and the fp16 gate."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from pbkit import cli, models, stages
from pbkit.core import config, record
from pbkit.core.errors import PbkitError
from pbkit.export import onnx as onnx_export
from pbkit.export import parity
from pbkit.machine import gpumon
from pbkit.measure import backends
from pbkit.measure.runner import ort_session
from pbkit.models import counts
from pbkit.stages import bench
from tests.conftest import Result


def test_list_backends_says_which_are_available_and_why_not(pbkit: Callable[..., Result]) -> None:
    r = pbkit("list", "backends", "--json")
    assert r.code == 0
    rows = {b["name"]: b for b in r.json()["backends"]}
    assert set(rows) == {
        "torch-cpu",
        "torch-compile-cpu",
        "ort-cpu",
        "torch-cuda",
        "torch-cuda-graph",
        "torch-compile",
        "ort-cuda",
        "ort-trt",
        "tensorrt",
        "ov-cpu",
        "ov-gpu",
    }
    for name in ("torch-cpu", "ort-cpu", "ov-cpu"):
        assert rows[name]["available"] and rows[name]["reason"] is None
    for b in rows.values():
        assert b["available"] == (b["reason"] is None)
        if not b["available"]:
            assert b["install"] and "install" in b["install"]  # names what to install
    assert set(rows["torch-cuda"]["precisions"]) == {"fp32", "fp16"} and rows["ort-cpu"][
        "precisions"
    ] == ["fp32", "int8"]
    if backends.cuda_reason():
        assert not rows["torch-cuda"]["available"] and "CUDA" in rows["torch-cuda"]["reason"]


@pytest.mark.parametrize("name", ["torch-cuda", "tensorrt", "ort-trt"])
def test_choosing_an_unavailable_backend_is_one_clear_line(
    pbkit: Callable[..., Result], pruned_run: Path, name: str
) -> None:
    if backends.BACKENDS[name].check() is None:
        pytest.skip(f"{name} is available here")
    before = (pruned_run / "record.json").read_bytes()
    r = pbkit("bench", pruned_run, "--backend", name, "--quick")
    assert r.code == 2
    line = r.err.strip()
    assert (
        "\n" not in line
        and line.startswith("error: backend")
        and "to use it:" in line
        and "pip install" in line
    )
    assert (
        pruned_run / "record.json"
    ).read_bytes() == before  # nothing measured, nothing rewritten


def test_a_precision_no_chosen_backend_runs_is_an_error(
    pbkit: Callable[..., Result], pruned_run: Path
) -> None:
    r = pbkit("bench", pruned_run, "--backend", "torch-cpu", "--precision", "fp16", "--quick")
    assert r.code == 2 and "torch-cpu' runs fp32" in r.err


def test_unsupported_pairs_of_a_sweep_are_skipped_with_a_note(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    both = dataclasses.replace(
        backends.BACKENDS["torch-cpu"], name="fake-fp16", precisions=("fp32", "fp16")
    )
    monkeypatch.setitem(backends.BACKENDS, "fake-fp16", both)
    cfg = config.load(
        None, ["bench.backends=[torch-cpu,fake-fp16]", "bench.precisions=[fp32,fp16]"]
    )
    pairs = bench.pairs(cfg, quiet=False)
    assert [(b.name, p) for b, p in pairs] == [
        ("torch-cpu", "fp32"),
        ("fake-fp16", "fp32"),
        ("fake-fp16", "fp16"),
    ]
    assert "torch-cpu/fp16" in capsys.readouterr().err


def test_several_values_after_one_flag() -> None:
    assert cli.expand_greedy(
        ["bench", "r", "--batch", "1", "8", "32", "--precision", "fp32", "fp16", "--quick"]
    ) == [
        "bench",
        "r",
        "--batch",
        "1",
        "--batch",
        "8",
        "--batch",
        "32",
        "--precision",
        "fp32",
        "--precision",
        "fp16",
        "--quick",
    ]
    assert cli.expand_greedy(["bench", "--backend", "torch-cpu", "ort-cpu", "run7"]) == [
        "bench",
        "--backend",
        "torch-cpu",
        "--backend",
        "ort-cpu",
        "run7",
    ]  # the run folder is not a backend
    assert cli.expand_greedy(["bench", "--batch", "1", "--batch", "8", "x", "9"]) == [
        "bench",
        "--batch",
        "1",
        "--batch",
        "8",
        "x",
        "9",
    ]


def test_batch_sweep_on_two_backends_records_every_point_with_memory(
    pbkit: Callable[..., Result], pruned_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    r = pbkit(
        "bench", run, "--backend", "torch-cpu", "ort-cpu", "--batch", "1", "3", "--quick", "--json"
    )
    assert r.code == 0, r.err
    rec = record.validate(r.json()["record"])
    got = {(p.backend, p.batch, p.variant) for p in rec.latency}
    assert got == {
        (b, n, v) for b in ("torch-cpu", "ort-cpu") for n in (1, 3) for v in ("dense", "pruned")
    }
    for p in rec.latency:
        assert p.input_shape == [p.batch, 3, 32, 32] and p.dtype == "fp32" and p.gpu_compute is None
        m = p.memory or {}
        assert (
            m["rss_before_bytes"] > 0
            and m["rss_peak_bytes"] >= m["rss_before_bytes"]
            and m["samples"] >= 2
        )
        assert p.throughput_ips > 0 and p.flags
    assert {p.batch for p in rec.parity if p.backend == "ort-cpu"} >= {
        1,
        3,
    }  # parity at every point
    assert all(p.passed for p in rec.parity)
    assert rec.counts.channel_alignment is not None


def test_sampler_sees_a_transient_allocation() -> None:
    with gpumon.Sampler(None, 0.001) as s:
        before = s.rss_peak
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        s.sample()
        del block
    assert s.rss_peak - before >= 48 * 2**20
    assert s.nvml_peak is None and s.bad_reasons() == []


def test_channel_alignment_counts_pruned_layers_only() -> None:
    before = {"a": (3, 64), "b": (64, 64), "c": (64, 10)}
    after = {"a": (3, 48), "b": (48, 36), "c": (36, 10)}
    al = counts.channel_alignment(before, after, 8)
    assert (al["pruned_layers"], al["aligned_layers"]) == (3, 1)  # a: 48 ok; b: 36 no; c: 36 no
    assert al["share"] == pytest.approx(1 / 3)
    assert counts.channel_alignment(before, before)["share"] == 1.0


def test_round_to_8_aligns_every_pruned_width(tmp_path: Path) -> None:
    cfg = config.load(
        None,
        [
            f"out={tmp_path}",
            "model.name=resnet20_cifar",
            "prune.round_to=8",
            "prune.speedup=1.5",
            "bench.quick=true",
        ],
    )
    rec = stages.run(cfg, until="finetune", quiet=True).record
    al = rec.counts.channel_alignment or {}
    assert al["pruned_layers"] > 0 and al["share"] == 1.0


def _ref_and_noisy(scale: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    ref = [rng.standard_normal((4, 100)).astype(np.float32)]
    return ref, [ref[0] + scale * rng.standard_normal((4, 100)).astype(np.float32)]


def test_fp16_gate_is_cosine_and_fp32_gate_is_tolerance() -> None:
    e = config.load().export
    ref, near = _ref_and_noisy(1e-3)  # fp16-like error: fails the fp32 gate, passes cosine 0.999
    assert not parity.check(near, ref, e, "fp32")["passed"]
    fp16 = parity.check(near, ref, e, "fp16")
    assert fp16["passed"] and fp16["gate"] == "fp16" and fp16["cosine_min"] == 0.999
    _, far = _ref_and_noisy(0.2)
    assert not parity.check(far, ref, e, "fp16")["passed"]


def test_fp16_onnx_is_strongly_typed_and_close(tmp_path: Path) -> None:
    """What TensorRT 11 builds fp16 engines from: fp16 weights, inputs and outputs."""
    model = models.build(models.resolve("resnet20_cifar")).eval()
    x = counts.example_input(32, batch=2, seed=2)
    ref = parity.reference_outputs(model, x)
    info = onnx_export.to_onnx(model.half(), 32, tmp_path / "m.fp16.onnx", dtype=torch.float16)
    g = onnx.load(str(tmp_path / "m.fp16.onnx")).graph
    assert info["dtype"] == "float16"
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    sess = ort_session(tmp_path / "m.fp16.onnx", 1)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy().astype(np.float16)})
    assert parity.check(got, ref, config.load().export, "fp16")["passed"]


def test_torch_compile_cpu_backend_measures_with_parity(pruned_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    rec = stages.bench_run(
        run,
        [
            "bench.backends=[torch-compile-cpu]",
            "bench.quick=false",
            "bench.memory=false",
            "bench.sessions=3",
            "bench.min_time_s=0.05",
            "bench.min_iters=5",
            "bench.max_time_s=0.05",
            "bench.warmup_s=0",
            "bench.warmup_iters=2",
        ],
        quiet=True,
    )
    pts = [p for p in rec.latency if p.backend == "torch-compile-cpu"]
    assert {p.variant for p in pts} == {"dense", "pruned"}
    assert all(p.flags["compile_mode"] == "default" and p.first_call_ms > p.median_ms for p in pts)
    assert all(p.memory is None for p in pts)
    assert all(
        "sessions" not in (p.model_extra or {}) for p in pts
    )  # compiled once: one session, not three
    par = [p for p in rec.parity if p.backend == "torch-compile-cpu"]
    assert len(par) == 2 and all(p.passed for p in par)


def test_record_carries_the_new_fields_in_its_schema() -> None:
    props = json.dumps(record.json_schema())
    for field in (
        "gpu_compute",
        "gpu_speedup_vs_dense",
        "throttle_reasons",
        "memory",
        "channel_alignment",
        "cosine_min",
        "flags",
    ):
        assert field in props


def test_old_records_without_the_new_fields_still_read(pruned_run: Path, tmp_path: Path) -> None:
    data: dict[str, Any] = json.loads((pruned_run / "record.json").read_text())
    for p in data["latency"]:
        for k in ("gpu_compute", "flags", "memory", "throttle_reasons", "input_shape", "dtype"):
            p.pop(k, None)
    data["counts"].pop("channel_alignment", None)
    rec = record.validate(data)
    assert rec.latency[0].gpu_compute is None and rec.counts.channel_alignment is None


def test_bench_fills_alignment_for_records_made_before_it(pruned_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    data = json.loads((run / "record.json").read_text())
    data["counts"].pop("channel_alignment")
    (run / "record.json").write_text(json.dumps(data))
    rec = stages.bench_run(run, ["bench.backends=[torch-cpu]", "bench.quick=true"], quiet=True)
    assert rec.counts.channel_alignment == record.read(pruned_run).counts.channel_alignment


def test_export_tensorrt_without_tensorrt_is_a_clear_error(
    pbkit: Callable[..., Result], pruned_run: Path
) -> None:
    from pbkit.export import tensorrt as trt

    if trt.unavailable_reason() is None and backends.cuda_reason() is None:
        pytest.skip("TensorRT and a GPU are available here")
    r = pbkit("export", pruned_run, "--format", "tensorrt", "--precision", "fp16")
    assert r.code == 2 and r.err.count("\n") == 1
    assert "tensorrt-cu13" in r.err or "NVIDIA GPU" in r.err


def test_precision_and_batch_need_tensorrt_format(
    pbkit: Callable[..., Result], pruned_run: Path
) -> None:
    r = pbkit("export", pruned_run, "--precision", "fp16")
    assert r.code == 2 and "--format tensorrt" in r.err


def test_unknown_backend_in_a_config_fails_before_pruning(
    pbkit: Callable[..., Result], tmp_path: Path
) -> None:
    r = pbkit(
        "prune", "--model", "resnet20_cifar", "--method", "l1", "--speedup", "2", "--out", tmp_path
    )
    assert r.code == 0  # prune alone does not need backends
    with pytest.raises(PbkitError, match="unknown backend"):
        stages.run(
            config.load(None, [f"out={tmp_path}", "bench.backends=[tensorrt-fast]"]), quiet=True
        )
    assert len(list(tmp_path.iterdir())) == 1  # the failed run made no folder
