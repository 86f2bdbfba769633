"""Which records a report reads: every ``record.json`` under the folders given (or the record files
themselves), each once, and which of them are finished runs."""

from __future__ import annotations

from pathlib import Path

from pbkit.core import record
from pbkit.core.errors import PbkitError


def find_records(*roots: str | Path) -> list[tuple[Path, record.Record]]:
    """The records under each folder (or the record files given), each once."""
    paths: dict[Path, Path] = {}
    for given in roots:
        root = Path(given).expanduser()
        if not root.exists():
            raise PbkitError(f"folder {str(root)!r} not found")
        found = (
            [root]
            if root.is_file()
            else sorted(
                p
                for p in root.rglob(record.RECORD_NAME)
                if not any(part.startswith(".tmp-") for part in p.parts)
            )
        )
        for p in found:
            paths.setdefault(p.resolve(), p)
    return [(p, record.read(p)) for p in paths.values()]


def unfinished(r: record.Record) -> bool:
    """A run whose configuration finetunes (or trains from scratch) but whose record has no
    finetune stage yet: still running, or stopped; left out of leaderboards."""
    cfg = r.config or {}
    wants = bool((cfg.get("dataset") or {}).get("name")) and (
        int((cfg.get("finetune") or {}).get("epochs") or 0) > 0 or cfg.get("init") == "scratch"
    )
    # 1.0 records finetuned inside their prune stage: their finetuned metric says it ran
    return wants and "finetune" not in r.stages and r.accuracy.finetuned is None
