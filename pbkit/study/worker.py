"""What runs on a worker (a Ray task, or the driver itself with ``--executor local``): one trial,
or one base. Everything comes back as plain data: the trial's record, where its artifacts are,
which node ran it and how long it took; an error is one line, never an exception, so one trial's
failure never stops the others (a worker process that dies is Ray's to retry)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from pbkit.core import config
from pbkit.core.clock import utc_now
from pbkit.core.errors import PbkitError, first_line
from pbkit.core.fileio import atomic_write, cache_dir
from pbkit.core.runtime import isolated
from pbkit.stages import rundir


def node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return str(ray.get_runtime_context().get_node_id())
    except Exception:  # Ray absent or not in a worker: the driver's own process
        pass
    return "local"


def work_dir(work: str | None, study: str) -> Path:
    """Where a worker keeps a study's runs: the shared path the driver named, else a folder of
    this node's own (artifacts stay on the node that made them)."""
    if work:
        return Path(work).expanduser()
    return cache_dir("study-work", node_id()[:12], study)


def _where() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "node_id": node_id()}


def _one_line(e: BaseException) -> str:
    if isinstance(e, PbkitError):
        return str(e)
    return f"internal error: {first_line(e)}"


def _place_base(root: Path, base: tuple[str, bytes] | None) -> None:
    """The study's base, where the run will look for it (``<work>/bases/``), unless there."""
    if base is None:
        return
    name, data = base
    path = root / rundir.BASES / name
    if not path.is_file():
        atomic_write(path, lambda p: _write_bytes(p, data))


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def run_trial(
    job: dict[str, Any], base: tuple[str, bytes] | None = None, attempts: Any = None
) -> dict[str, Any]:
    """Run one trial to the end (resuming what this node has of it) and return its record."""
    from pbkit import stages

    t0, started = time.perf_counter(), utc_now()
    attempt = int(_ray_get(attempts.bump.remote(job["hash"]))) if attempts is not None else 1
    out: dict[str, Any] = {
        "hash": job["hash"],
        "attempt": attempt,
        "started_utc": started,
        **_where(),
    }
    try:
        root = work_dir(job.get("work"), job["study"])
        _place_base(root, base)
        cfg = config.validate(
            {**job["cfg"], "out": str(root / "runs")}, f"trial {job['hash'][:10]}"
        )
        threads = int(job["threads"])
        with isolated():
            import torch

            torch.set_num_threads(threads)
            outcome = stages.run(cfg, quiet=True)
        rec = outcome.record.model_dump(mode="json")
        rec["artifacts"]["location"] = {
            "host": out["host"],
            "node_id": out["node_id"],
            "run_dir": str(outcome.run_dir),
        }
        out.update(
            status="done", record=rec, run_id=outcome.run_dir.name, ran=outcome.ran, work=str(root)
        )
    except BaseException as e:  # noqa: BLE001  (reported as the trial's one-line error)
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        out.update(status="failed", error=_one_line(e))
    out.update(wall_s=time.perf_counter() - t0, finished_utc=utc_now())
    return out


def train_base(job: dict[str, Any]) -> dict[str, Any]:
    """Train (or find) the dense base a group of trials shares; return its file's bytes."""
    from pbkit import tasks
    from pbkit.stages import bases, context

    t0 = time.perf_counter()
    out: dict[str, Any] = {"key": job["key"], **_where()}
    try:
        root = work_dir(job.get("work"), job["study"])
        cfg = config.validate({**job["cfg"], "out": str(root / "runs")}, f"base {job['key'][:10]}")
        with isolated():
            import torch

            torch.set_num_threads(int(job["threads"]))
            bundle = context.dataset(cfg)
            spec = context.resolve_spec(cfg, bundle)
            _, weights, _ = bases.obtain(
                cfg, spec, tasks.get(spec.task), bundle, rundir.bases_dir(root / "runs"), quiet=True
            )
        path = Path(weights["weights_path"])
        out.update(
            status="done", file=path.name, data=path.read_bytes(), sha256=weights["weights_sha256"]
        )
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        out.update(status="failed", error=_one_line(e))
    out["wall_s"] = time.perf_counter() - t0
    return out


def _ray_get(ref: Any) -> Any:
    import ray

    return ray.get(ref)
