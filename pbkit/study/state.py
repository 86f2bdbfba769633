"""``study.json``: the study's resolved grid and every trial's state, rewritten atomically after
each trial, so a killed driver leaves it valid and a rerun knows what is done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pbkit.core import record
from pbkit.core.clock import utc_now
from pbkit.core.errors import PbkitError
from pbkit.core.fileio import atomic_write_json

FORMAT = "pbkit-study/1"
STATE_NAME = "study.json"
STATUSES = ("done", "failed", "skipped", "pending")


def read(study_dir: str | Path) -> dict[str, Any]:
    path = Path(study_dir).expanduser() / STATE_NAME
    if not path.is_file():
        raise PbkitError(
            f"{str(path.parent)!r} is not a study folder (no {STATE_NAME}); make one with "
            "`pbkit study run STUDY.yaml`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PbkitError(f"{str(path)!r} is not valid JSON ({e})") from e
    if data.get("format") != FORMAT:
        raise PbkitError(f"{str(path)!r} is not a pbkit study state ({FORMAT})")
    return data


def read_if_any(study_dir: Path) -> dict[str, Any] | None:
    return read(study_dir) if (study_dir / STATE_NAME).is_file() else None


def counts(trials: list[dict[str, Any]]) -> dict[str, int]:
    return {s: sum(1 for t in trials if t["status"] == s) for s in STATUSES}


def write(study_dir: Path, state: dict[str, Any]) -> None:
    state["updated_utc"] = utc_now()
    state["counts"] = counts(state["trials"])
    atomic_write_json(study_dir / STATE_NAME, state)


def record_path(study_dir: Path, run_id: str) -> Path:
    return study_dir / "runs" / run_id / record.RECORD_NAME


def write_record(study_dir: Path, rec: dict[str, Any]) -> Path:
    """A trial's record, as it came back from its worker, validated and written atomically."""
    validated = record.validate(rec, f"record of {rec.get('run_id')}")
    return record.write(study_dir / "runs" / validated.run_id, validated)
