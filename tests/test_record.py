from __future__ import annotations

import json
from pathlib import Path

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
