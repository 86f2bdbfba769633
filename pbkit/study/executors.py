"""Where trials run: on Ray (a local Ray started for the study, or an existing cluster), or one by
one in the driver process (``--executor local``, for debugging). Both take jobs and give back the
worker's plain results; the driver does the rest."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from pbkit.core import runtime
from pbkit.core.errors import PbkitError, first_line
from pbkit.study import worker
from pbkit.study.spec import Resources


@dataclass
class Job:
    kind: str  # trial | base
    key: str  # the trial's hash, or the base's key
    payload: dict[str, Any]
    base: tuple[str, bytes] | None = None


class Executor:
    name = "executor"
    address: str | None = None
    shared_storage = True  # whether the driver's folders are the workers' folders

    def start(self) -> None:
        """Bring the workers up."""

    def slots(self) -> int:
        """How many jobs may run at once."""
        return 1

    def submit(self, job: Job) -> None:
        raise NotImplementedError

    def next_result(self, timeout_s: float) -> tuple[Job, dict[str, Any]] | None:
        """One finished job and its result, or None when none finished within ``timeout_s``."""
        raise NotImplementedError

    def running(self) -> int:
        return 0

    def stop(self) -> None:
        """Release the workers."""


class LocalExecutor(Executor):
    """Trials one after another in this process, as a worker would run them."""

    name = "local"

    def __init__(self) -> None:
        self._queue: list[Job] = []

    def submit(self, job: Job) -> None:
        self._queue.append(job)

    def next_result(self, timeout_s: float) -> tuple[Job, dict[str, Any]] | None:
        if not self._queue:
            return None
        job = self._queue.pop(0)
        return job, _run(job)

    def running(self) -> int:
        return len(self._queue)


def _run(job: Job) -> dict[str, Any]:
    if job.kind == "base":
        return worker.train_base(job.payload)
    return worker.run_trial(job.payload, job.base)


class RayExecutor(Executor):
    """Ray tasks, one per job, each asking the study's resources; a task whose worker process dies
    is retried by Ray (``max_retries``), and the attempt count is kept by a small actor."""

    name = "ray"

    def __init__(
        self, address: str | None, resources: Resources, max_parallel: int | None, max_retries: int
    ) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.shared_storage = (
            self.address is None
        )  # a Ray started here: its workers share this disk
        self.resources, self.max_parallel, self.max_retries = resources, max_parallel, max_retries
        self._refs: dict[Any, Job] = {}
        self._started_here = False
        self._attempts: Any = None
        self._fns: dict[str, Any] = {}
        self._bases: dict[
            str, Any
        ] = {}  # base file name -> its bytes in Ray's object store (put once)

    def start(self) -> None:
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never reports home
        runtime.library_owned_env("RAY_AUTH_MODE")  # Ray keeps it for the life of the process
        if not ray.is_initialized():
            ray_log = logging.getLogger("ray")
            level = ray_log.level
            ray_log.setLevel(
                logging.ERROR
            )  # its start-up notes (token auth, addresses) are not ours to print
            try:
                # no address: a new local Ray of our own ("local"), never another process's cluster
                # that happens to run on this machine (ray.init() alone would join it)
                ray.init(
                    address=self.address or "local",
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                )
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = self.address or "a local Ray"
                raise PbkitError(f"could not start or reach {where}: {first_line(e)}") from e
            finally:
                ray_log.setLevel(level)
            self._started_here = True
        self.address = self.address or ray.get_runtime_context().gcs_address
        have = ray.cluster_resources()
        cpus, gpus = float(have.get("CPU", 0.0)), float(have.get("GPU", 0.0))
        if self.resources.cpu > cpus or self.resources.gpu > gpus:
            self.stop()
            raise PbkitError(
                f"each trial asks {self.resources.cpu:g} CPU and {self.resources.gpu:g} GPU (the"
                f" study's resources) but the Ray cluster at {self.address} has {cpus:g} CPU and"
                f" {gpus:g} GPU"
            )
        self._attempts = _attempts_actor()
        options = dict(
            num_cpus=self.resources.cpu,
            num_gpus=self.resources.gpu,
            max_retries=self.max_retries,
            retry_exceptions=False,
            scheduling_strategy="SPREAD",
        )
        self._fns = {
            "base": ray.remote(worker.train_base).options(**options),
            "trial": ray.remote(worker.run_trial).options(**options),
        }

    def slots(self) -> int:
        import ray

        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        fit = max(int(cpus // self.resources.cpu), 1)
        if self.resources.gpu:
            fit = min(
                fit,
                max(int(float(ray.cluster_resources().get("GPU", 0.0)) // self.resources.gpu), 1),
            )
        return min(fit, self.max_parallel) if self.max_parallel else fit

    def submit(self, job: Job) -> None:
        import ray

        base = None
        if job.base is not None:  # one copy in the object store, resolved into each task's argument
            base = self._bases.setdefault(job.base[0], ray.put(job.base))
        args = (job.payload,) if job.kind == "base" else (job.payload, base, self._attempts)
        self._refs[self._fns[job.kind].remote(*args)] = job

    def next_result(self, timeout_s: float) -> tuple[Job, dict[str, Any]] | None:
        import ray

        if not self._refs:
            return None
        ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=timeout_s)
        if not ready:
            return None
        ref = ready[0]
        job = self._refs.pop(ref)
        try:
            return job, ray.get(ref)
        except Exception as e:  # the worker died on every attempt, or Ray lost the task
            return job, {
                "status": "failed",
                "error": f"worker lost after {self.max_retries + 1} attempts: {first_line(e)}",
                "attempt": self.max_retries + 1,
            }

    def running(self) -> int:
        return len(self._refs)

    def stop(self) -> None:
        import ray

        self._refs.clear()
        if self._started_here and ray.is_initialized():
            ray.shutdown()


def _attempts_actor() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class Attempts:
        """Counts the attempts of every job: a retried task learns it is a retry."""

        def __init__(self) -> None:
            self.n: dict[str, int] = {}

        def bump(self, key: str) -> int:
            self.n[key] = self.n.get(key, 0) + 1
            return self.n[key]

    return Attempts.remote()  # type: ignore[attr-defined]
