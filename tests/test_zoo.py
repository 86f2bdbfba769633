"""The committed zoo tables: each markdown table is what benchmarks/zoo.py renders from its json,
nothing in it by hand, and every row names the code it was measured with; rows from before rows
recorded it get the commit that first recorded them from git history (no model runs here)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from benchmarks import zoo
from tests.conftest import REPO

TABLES = sorted((REPO / "results" / "perf").glob("zoo-*.json"))


def _tag(path: Path) -> str:
    return path.name.removeprefix("zoo-").removesuffix(".json")


def test_there_are_zoo_tables() -> None:
    assert {_tag(p) for p in TABLES} >= {"tv-cpu-2core", "timm-sample-cpu-2core"}


@pytest.mark.parametrize("path", TABLES, ids=_tag)
def test_a_committed_zoo_table_is_its_json_rendered(path: Path) -> None:
    doc = json.loads(path.read_text())
    md = path.with_suffix(".md").read_text()
    assert zoo.render(doc, _tag(path)) == md  # python benchmarks/zoo.py --backfill-commits
    assert doc["summary"] == zoo.summarize(doc["rows"])
    assert set(doc["settings"]) <= set(zoo.SETTINGS)  # nothing the zoo does not write itself


@pytest.mark.parametrize("path", TABLES, ids=_tag)
def test_every_row_names_the_code_it_was_measured_with(path: Path) -> None:
    rows = json.loads(path.read_text())["rows"]
    for r in rows:
        assert r.get("code") or r.get("recorded_in"), r["model"]
        if not r.get("code"):
            assert len(r["recorded_in"]) == 40 and int(r["recorded_in"], 16) >= 0
    md = path.with_suffix(".md").read_text()
    assert "| unknown |" not in md


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _row(model: str, prune_s: float, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "prune_s": prune_s,
        "peak_rss_gib": 1.0,
        "status": "fail",
        "stage": "prune",
        "reason": "why",
        **extra,
    }


def test_backfill_names_the_commit_that_first_recorded_each_rows_result(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    path = tmp_path / "zoo-t.json"
    settings = {
        "method": "l2",
        "scope": "protected",
        "speedup": 1.5,
        "max_memory_gib": 8.0,
        "timeout_s": 300.0,
    }

    def commit(rows: list[dict[str, Any]], **more: Any) -> str:
        path.write_text(json.dumps({"settings": {**settings, **more}, "rows": rows}))
        _git(tmp_path, "add", path.name)
        _git(tmp_path, "commit", "-q", "-m", "rows")
        return _git(tmp_path, "rev-parse", "HEAD")

    first = commit([_row("tv:a", 1.0), _row("tv:b", 2.0)])
    second = commit([_row("tv:a", 1.0), _row("tv:b", 2.5), _row("tv:c", 3.0)], remark="by hand")
    commit(
        [
            _row("tv:a", 1.0, held_fixed=0),  # a field added later: the same measurement
            _row("tv:b", 2.5),
            _row("tv:c", 3.0),
            _row("tv:d", 4.0, code="abc1234-dirty"),
            _row("tv:e", 400.0),  # ran past the table's limit: under one it did not record
        ],
        remark="by hand",
    )
    assert zoo.backfill_commits(path) == (4, 0, ["remark"])
    doc = json.loads(path.read_text())
    got = {r["model"]: r.get("recorded_in") for r in doc["rows"]}
    assert got["tv:a"] == first and got["tv:b"] == second and got["tv:c"] == second
    assert got["tv:d"] is None and doc["rows"][3]["code"] == "abc1234-dirty"
    assert "remark" not in doc["settings"]
    md = (tmp_path / "zoo-t.md").read_text()
    assert md == zoo.render(doc, "t") and "by hand" not in md
    assert f"| tv:a | fail (prune) | - | - | 1.0 | - | 1.0 | before {first[:7]} | why |" in md
    assert "| abc1234-dirty | why |" in md
    assert "prune ran 400 s, past this table's 300 s limit" in md
    assert zoo.backfill_commits(path) == (0, 0, [])  # again: nothing left to fill


def test_a_row_run_under_other_settings_than_its_table_says_so() -> None:
    settings = {"max_memory_gib": 8.0, "timeout_s": 300.0, "iterative_steps": 100}
    same = {"model": "tv:a", "max_memory_gib": 8.0, "timeout_s": 300.0, "iterative_steps": 100}
    assert zoo._notes(same, settings) == []
    other = {**same, "timeout_s": 1200.0, "iterative_steps": None, "prune_s": 500.0}
    assert zoo._notes(other, settings) == [
        "prune.iterative_steps=default",
        "a wall-clock limit of 1200 s",
    ]  # its own limit recorded: no guess about it
