from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pbkit.core import fileio, record
from pbkit.core.errors import PbkitError


def test_record_on_disk_validates_and_carries_the_contract(pruned_run: Path) -> None:
    data = json.loads((pruned_run / "record.json").read_text())
    for key in (
        "schema_version",
        "run_id",
        "created_utc",
        "model",
        "method",
        "counts",
        "accuracy",
        "finetune",
        "artifacts",
        "latency",
        "parity",
        "env",
    ):
        assert key in data
    assert set(data["model"]) >= {"name", "source", "weights", "weights_sha256"}
    assert set(data["method"]) >= {
        "key",
        "scope",
        "target_speedup",
        "achieved_speedup",
        "steps",
        "round_to",
    }
    assert set(data["counts"]) >= {"macs_base", "macs_pruned", "params_base", "params_pruned"}
    assert set(data["accuracy"]) >= {"metric", "base", "pruned", "finetuned"}
    assert data["accuracy"]["base"] is None  # data-free run
    assert len(data["artifacts"]["onnx_sha256"]) == 64
    point = data["latency"][0]
    assert set(point) >= {
        "backend",
        "device",
        "batch",
        "precision",
        "median_ms",
        "mean_ms",
        "p90_ms",
        "p99_ms",
        "std_ms",
        "cov",
        "n",
        "stable",
        "speedup_vs_dense",
    }
    assert set(data["parity"][0]) >= {"backend", "max_abs", "max_rel", "cosine", "passed"}
    assert data["env"]["software"]["torch"].startswith("2.13")
    rec = record.read(pruned_run)
    assert rec.method.achieved_speedup >= rec.method.target_speedup


def test_records_of_another_major_schema_are_refused(pruned_run: Path, tmp_path: Path) -> None:
    data = json.loads((pruned_run / "record.json").read_text())
    data["schema_version"] = "2.0"
    (tmp_path / "record.json").write_text(json.dumps(data))
    with pytest.raises(PbkitError, match="schema"):
        record.read(tmp_path)


def test_unknown_fields_are_kept_for_forward_compatibility(
    pruned_run: Path, tmp_path: Path
) -> None:
    data = json.loads((pruned_run / "record.json").read_text())
    data["added_later"] = {"x": 1}
    (tmp_path / "record.json").write_text(json.dumps(data))
    rec = record.read(tmp_path)
    record.write(tmp_path, rec)
    assert json.loads((tmp_path / "record.json").read_text())["added_later"] == {"x": 1}


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    fileio.atomic_write_json(target, {"v": 1})

    def explode(p: Path) -> None:
        p.write_text('{"v": 2, "half')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write(target, explode)
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_invalid_json_record_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "record.json").write_text("{")
    with pytest.raises(PbkitError, match="not valid JSON"):
        record.read(tmp_path)


def test_json_schema_names_the_contract() -> None:
    schema = record.json_schema()
    assert {"model", "method", "counts", "latency", "parity", "env"} <= set(schema["properties"])


# ------------------------------------------------------------------------------------------------
# every field the bench stage writes is declared (`pbkit schema` shows it)

SECTIONS = {  # record section -> its model in the schema
    "ci": "CiInfo",
    "memory": "Memory",
    "flags": "Flags",
    "gpu_compute": "GpuCompute",
}


def _declared(schema: dict[str, Any], name: str) -> set[str]:
    return set(schema["$defs"][name]["properties"])


def test_pbkit_schema_lists_the_latency_sections_and_the_bench_settings(pbkit: Any) -> None:
    r = pbkit("schema")
    assert r.code == 0, r.err
    schema = r.json()
    assert _declared(schema, "LatencyPoint") >= {
        "sessions",
        "session_medians_ms",
        "pooled_median_ms",
        "ci",
        "median_ci",
        "speedup_ci",
        "outliers",
        "blocks",
        "memory",
        "flags",
        "gpu_compute",
    }
    assert _declared(schema, "CiInfo") >= {
        "method",
        "confidence",
        "draws",
        "sessions",
        "session_speedups",
        "session_cis",
        "blocks",
        "block_s",
        "relative_half_width",
        "target",
        "stop",
        "met",
    }
    assert _declared(schema, "BenchInfo") >= {
        "sessions",
        "session_warmup_iters",
        "ci_target",
        "max_time_s",
        "quick",
        "threads",
        "measured_utc",
        "host",
        "cpu_state",
        "gpu",
    }
    assert _declared(schema, "Memory") >= {"rss_peak_bytes", "nvml_used_peak_bytes", "plan_bytes"}
    assert _declared(schema, "GpuCompute") >= {"median_ms", "medians_ms", "session_medians_ms"}
    assert {"pinned_core", "cuda_graph", "io_binding", "provider"} <= _declared(schema, "Flags")
    for name in ("BenchInfo", "CiInfo", "Memory", "Flags", "GpuCompute", "LatencyPoint"):
        assert schema["$defs"][name].get("additionalProperties") is True  # later fields still read
    bench = schema["properties"]["bench"]["anyOf"][0]["$ref"]
    assert bench.endswith("/BenchInfo")


def test_every_key_the_bench_stage_writes_is_declared(pruned_run: Path, tmp_path: Path) -> None:
    """A point measured over fresh sessions (the widest one): every key of its latency points, of
    their sections and of ``bench`` is a declared field, and the record writes back as read."""
    import shutil

    from pbkit import stages

    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    rec = stages.bench_run(
        run,
        [
            "bench.backends=[torch-cpu,ort-cpu]",
            "bench.quick=false",
            "bench.sessions=2",
            "bench.min_time_s=0.04",
            "bench.min_iters=6",
            "bench.max_time_s=0.04",
            "bench.warmup_s=0",
            "bench.warmup_iters=2",
            "bench.session_warmup_iters=1",
            "bench.block_s=0.01",
            "bench.rounds=1",
        ],
        quiet=True,
    )
    schema = record.json_schema()
    data = json.loads((run / "record.json").read_text())
    assert set(data["bench"]) <= _declared(schema, "BenchInfo")
    assert set(data["bench"]["gpu"] or {}) <= _declared(schema, "BenchGpu")
    assert data["bench"]["sessions"] == 2
    for p in data["latency"]:
        assert set(p) <= _declared(schema, "LatencyPoint")
        assert p["sessions"] == 2 and len(p["session_medians_ms"]) == 2 and p["pooled_median_ms"]
        for key, model in SECTIONS.items():
            assert set(p.get(key) or {}) <= _declared(schema, model), key
    pruned = [p for p in data["latency"] if p["variant"] == "pruned"]
    assert pruned and all(p["ci"]["method"].startswith("t-interval") for p in pruned)
    # the typed sections hold what was written, in its order, and nothing more
    point = rec.latency[-1]
    assert point.ci is not None and point.ci.sessions == 2 and point.ci["sessions"] == 2
    assert point.flags.pinned_core == point.flags.get("pinned_core")
    record.write(run, record.read(run))
    assert json.loads((run / "record.json").read_text())["latency"] == data["latency"]


def test_every_flag_and_memory_figure_a_backend_sets_is_declared() -> None:
    """The GPU backends cannot run here: their runners' source names what they set (flags, and
    the dict their memory() returns); the measured memory figures are MemoryFigures'."""
    import ast
    import dataclasses

    from pbkit.measure import memory

    flags: set[str] = {"pinned_core"}  # set by the bench stage
    figures: set[str] = set()
    for path in sorted((Path(memory.__file__).parent).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (  # x.flags.update(key=...)
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "update"
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "flags"
            ):
                flags |= {k.arg for k in node.keywords if k.arg}
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "flags"
                and isinstance(node.slice, ast.Constant)
            ):
                flags.add(node.slice.value)
            if isinstance(node, ast.FunctionDef) and node.name == "memory":
                for ret in ast.walk(node):
                    if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Dict):
                        figures |= {k.value for k in ret.value.keys if isinstance(k, ast.Constant)}
    assert {"cuda_graph", "io_binding", "provider", "compile_mode"} <= flags  # the scan works
    figures |= {f.name for f in dataclasses.fields(memory.GpuMemory)}
    figures |= {f.name for f in dataclasses.fields(memory.MemoryFigures)} - {"gpu", "backend"}
    schema = record.json_schema()
    assert flags <= _declared(schema, "Flags")
    assert figures <= _declared(schema, "Memory")


def test_the_cache_is_pbkit_cache_or_the_users_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PBKIT_CACHE", str(tmp_path))
    assert fileio.cache_dir("drift.json") == tmp_path / "drift.json"
    assert fileio.cache_dir("study-work", "n", "s") == tmp_path / "study-work" / "n" / "s"
    monkeypatch.setenv("PBKIT_CACHE", "")  # set but empty: the default, never the working folder
    assert fileio.cache_dir() == Path.home() / ".cache" / "pbkit"
