"""The study driver: expand the grid, skip what is done, build the shared bases once, run the rest
on the executor, and write every record and ``study.json`` atomically as results come back.

A rerun of the same study skips finished trials (by hash) and completes the rest; a trial that
failed stays failed (with its one-line error) until ``--retry-failed``; adding a value to an axis
runs only the new trials. Records come back to the driver as data: no shared filesystem is needed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbkit.core import lock, record
from pbkit.core.clock import utc_now
from pbkit.core.console import Board, note
from pbkit.core.errors import PbkitError
from pbkit.core.fileio import atomic_write, ensure_writable_dir
from pbkit.core.runtime import isolated
from pbkit.report import leaderboard
from pbkit.stages import rundir
from pbkit.study import state
from pbkit.study.executors import Executor, Job, LocalExecutor, RayExecutor
from pbkit.study.spec import Study, Trial

DEFAULT_ROOT = Path("results/studies")


@dataclass
class Summary:
    study_dir: Path
    executor: str
    address: str | None
    counts: dict[str, int]
    failures: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "study_dir": str(self.study_dir),
            "executor": self.executor,
            "address": self.address,
            **self.counts,
            "ran": self.ran,
            "failures": [
                {k: f.get(k) for k in ("hash", "run_id", "params", "error")} for f in self.failures
            ],
        }


@dataclass
class TrialEvent:
    """A trial that just finished, and where the study stands: what ``on_trial`` hooks get
    (``pbkit study run --push``: its record and the study's progress to a service)."""

    study: str
    run_id: str
    status: str  # done | failed
    error: str | None
    wall_s: float
    record: Path | None  # the record written in the study folder (done trials)
    counts: dict[str, int]  # done, failed, skipped, pending
    running: int
    eta_s: float | None


def make_executor(
    kind: str, study: Study, address: str | None, max_parallel: int | None
) -> Executor:
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(
            address or study.file.address,
            study.file.resources,
            max_parallel,
            study.file.max_retries,
        )
    raise PbkitError(f"unknown executor {kind!r}; choose one of: local, ray")


def _complete(study_dir: Path, trial: Trial, old: dict[str, Any]) -> bool:
    """A trial the last run finished, whose record is here and shows every stage done as now
    asked."""
    path = state.record_path(study_dir, old.get("run_id") or trial.run_id)
    if old.get("status") != "done" or not path.is_file():
        return False
    rec = record.read(path)
    return all(rundir.stage_done(rec, s, trial.cfg) for s in rundir.wanted_stages(trial.cfg))


def _entries(
    study: Study, study_dir: Path, prev: dict[str, Any] | None, retry_failed: bool
) -> list[dict[str, Any]]:
    before = {t["hash"]: t for t in (prev or {}).get("trials", [])}
    entries: dict[str, dict[str, Any]] = {}
    for t in study.trials:
        if t.hash in entries:  # another grid point with the same identity: the same run
            entries[t.hash].setdefault("same_as", []).append(t.params)
            continue
        old = before.get(t.hash, {})
        entry = {
            "hash": t.hash,
            "run_id": t.run_id,
            "params": t.params,
            "status": "pending",
            "error": None,
        }
        if t.skip:
            entry.update(status="skipped", note=t.skip)
        elif _complete(study_dir, t, old):
            entry.update({k: v for k, v in old.items() if k not in ("params",)}, status="done")
        elif old.get("status") == "failed" and not retry_failed:
            entry.update({k: v for k, v in old.items() if k not in ("params",)}, status="failed")
        entries[t.hash] = entry
    return list(entries.values())


def run(
    study: Study,
    out: str | Path | None = None,
    executor: str = "ray",
    address: str | None = None,
    max_parallel: int | None = None,
    retry_failed: bool = False,
    quiet: bool = False,
    on_trial: Callable[[TrialEvent], None] | None = None,
) -> Summary:
    study_dir = ensure_writable_dir(Path(out) if out else DEFAULT_ROOT / study.name)
    with (
        isolated(),
        lock.exclusive(
            study_dir / ".study.lock",
            on_wait=lambda who: note(
                f"study {study.name} is being run by {who}; waiting for it", quiet
            ),
        ),
    ):
        prev = state.read_if_any(study_dir)
        entries = _entries(study, study_dir, prev, retry_failed)
        ex = make_executor(executor, study, address, max_parallel)
        doc: dict[str, Any] = {
            "format": state.FORMAT,
            "name": study.name,
            "study_file": str(study.path.resolve()),
            # where trials last ran (a rerun with nothing to run keeps it)
            "executor": (prev or {}).get("executor", ex.name),
            "address": (prev or {}).get("address"),
            "resources": study.file.resources.model_dump(),
            "storage": study.file.storage,
            "max_parallel": max_parallel,
            "grid": study.file.grid,
            "exclude": study.file.exclude,
            "config": {k: v for k, v in study.shared.items() if k not in ("out", "run_id")},
            "bases": (prev or {}).get("bases", {}),
            "trials": entries,
            "created_utc": (prev or {}).get("created_utc", utc_now()),
        }
        state.write(study_dir, doc)
        trials = {t.hash: t for t in study.trials}
        todo = [e for e in entries if e["status"] == "pending"]
        ran = 0
        if todo:
            ex.start()
            try:
                doc.update(executor=ex.name, address=ex.address)
                ran = _drive(
                    ex,
                    study,
                    study_dir,
                    doc,
                    [trials[e["hash"]] for e in todo],
                    quiet,
                    on_trial,
                )
            finally:
                ex.stop()
        counts = state.counts(doc["trials"])
        failures = [e for e in doc["trials"] if e["status"] == "failed"]
        return Summary(study_dir, doc["executor"], doc["address"], counts, failures, ran)


def _work(ex: Executor, study: Study, study_dir: Path) -> str | None:
    """The folder workers keep runs in: the study folder when they share this disk, the study's
    storage path when it names one, else (None) each node's own folder."""
    if study.file.storage:
        return str(Path(study.file.storage).expanduser() / study.name)
    return str(study_dir.resolve()) if ex.shared_storage else None


def _payload(trial: Trial, study: Study, work: str | None) -> dict[str, Any]:
    return {
        "hash": trial.hash,
        "study": study.name,
        "work": work,
        "threads": study.file.resources.threads,
        "cfg": trial.cfg.model_dump(mode="json"),
    }


def _drive(
    ex: Executor,
    study: Study,
    study_dir: Path,
    doc: dict[str, Any],
    todo: list[Trial],
    quiet: bool,
    on_trial: Callable[[TrialEvent], None] | None = None,
) -> int:
    work = _work(ex, study, study_dir)
    board = Board(f"study {study.name}", quiet)
    entries = {e["hash"]: e for e in doc["trials"]}
    t0 = time.perf_counter()
    try:
        blobs = _bases(ex, study, study_dir, doc, todo, work, board)
        queue = [t for t in todo if entries[t.hash]["status"] == "pending"]
        slots, finished, walls = ex.slots(), 0, []
        submitted: dict[str, float] = {}
        while queue or ex.running():
            while queue and ex.running() < slots:
                t = queue.pop(0)
                submitted[t.hash] = time.perf_counter()
                ex.submit(
                    Job("trial", t.hash, _payload(t, study, work), blobs.get(t.base_key or ""))
                )
            got = ex.next_result(timeout_s=1.0)
            if got is not None:
                job, res = got
                finished += 1
                walls.append(float(res.get("wall_s") or 0.0))
                board.line(_finish(study_dir, entries[job.key], res, finished, len(todo)))
                # what the executor added to the trial's own time: scheduling, transfer, worker
                # start
                entries[job.key]["overhead_s"] = round(
                    time.perf_counter() - submitted[job.key] - walls[-1], 3
                )
                state.write(study_dir, doc)
            c = state.counts(doc["trials"])
            elapsed = time.perf_counter() - t0
            left = len(queue) + ex.running()
            eta_s = sum(walls) / len(walls) * left / max(slots, 1) if walls else None
            eta = f", ETA {eta_s:.0f} s" if eta_s is not None else ""
            if got is not None and on_trial is not None:
                e = entries[got[0].key]
                on_trial(
                    TrialEvent(
                        study=study.name,
                        run_id=str(e.get("run_id")),
                        status=str(e["status"]),
                        error=e.get("error"),
                        wall_s=float(e.get("wall_s") or 0.0),
                        record=study_dir / e["record"] if e.get("record") else None,
                        counts=c,
                        running=ex.running(),
                        eta_s=eta_s,
                    )
                )
            board.status(
                f"{c['done']} done, {c['failed']} failed, {ex.running()} running, {len(queue)}"
                f" pending, {elapsed:.0f} s{eta}"
            )
        return finished
    finally:
        board.close()


def _bases(
    ex: Executor,
    study: Study,
    study_dir: Path,
    doc: dict[str, Any],
    todo: list[Trial],
    work: str | None,
    board: Board,
) -> dict[str, tuple[str, bytes]]:
    """Train (or find) each base the pending trials share, once, before them; keep its file in
    the study folder and hand its bytes to every trial that needs it."""
    needed = {t.base_key: t for t in todo if t.base_key}
    blobs: dict[str, tuple[str, bytes]] = {}
    for key, info in doc["bases"].items():
        path = study_dir / "bases" / info["file"]
        if key in needed and path.is_file():
            blobs[key] = (info["file"], path.read_bytes())
    missing = [k for k in needed if k not in blobs]
    for key in missing:
        t = needed[key]
        ex.submit(Job("base", key, {**_payload(t, study, work), "key": key}))
    while ex.running():
        got = ex.next_result(timeout_s=1.0)
        if got is None:
            board.status(f"training {ex.running()} shared base(s)")
            continue
        job, res = got
        if res.get("status") != "done":
            for t in todo:
                if t.base_key == job.key:
                    doc_entry = next(e for e in doc["trials"] if e["hash"] == t.hash)
                    doc_entry.update(
                        status="failed", error=f"its base could not be made: {res.get('error')}"
                    )
            board.line(f"base {job.key[:10]} failed: {res.get('error')}")
            continue
        data: bytes = res["data"]
        path = study_dir / "bases" / res["file"]
        if not path.is_file():
            atomic_write(path, functools.partial(_write_bytes, data=data))
        doc["bases"][job.key] = {
            "file": res["file"],
            "sha256": res["sha256"],
            "node_id": res.get("node_id"),
            "host": res.get("host"),
            "wall_s": res.get("wall_s"),
        }
        blobs[job.key] = (res["file"], data)
        board.line(f"base {res['file']} ready ({res.get('wall_s', 0):.0f} s on {res.get('host')})")
        state.write(study_dir, doc)
    return blobs


def _finish(study_dir: Path, entry: dict[str, Any], res: dict[str, Any], i: int, n: int) -> str:
    """Record a finished trial in its entry (and its record in the study folder); its line."""
    entry.update(
        {k: res.get(k) for k in ("node_id", "host", "started_utc", "finished_utc", "work")},
        wall_s=round(float(res.get("wall_s") or 0.0), 3),
        attempts=res.get("attempt", 1),
        error=res.get("error"),
        status=res.get("status", "failed"),
    )
    if entry["attempts"] and entry["attempts"] > 1:
        entry["retried"] = entry["attempts"] - 1
    where = f"{entry['wall_s']:.0f} s on {res.get('host', '?')}"
    if entry["status"] != "done":
        return f"[{i}/{n}] FAILED {entry['run_id']} {entry['params']}: {entry['error']} ({where})"
    path = state.write_record(study_dir, res["record"])
    entry.update(
        run_id=res["run_id"], record=str(path.relative_to(study_dir)), stages_run=res.get("ran")
    )
    row = leaderboard.rows([(path, record.read(path))])[0]
    measured = max(row.measured.items(), key=lambda kv: kv[1]) if row.measured else None
    acc = row.finetuned if row.finetuned is not None else row.pruned
    parts = [f"MACs {row.macs_speedup:.2f}x"]
    if measured:
        parts.append(f"measured {measured[1]:.2f}x ({measured[0]})")
    if acc is not None:
        parts.append(f"{row.metric} {acc:.2f}")
    return f"[{i}/{n}] {entry['run_id']}: {', '.join(parts)} ({where})"


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)
