"""Studies submitted to the service: checked, then handed to a runner that drives them.

A submitted study is a study file's settings and nothing else (``pbkit submit`` inlines what the
file ``extends``). Before it is queued the service refuses, with one line, whatever would run
code or touch files on its machines unless its operator passed ``--allow-user-code``: a model
from a Python file, an import path or a pickle, ``model.trust_checkpoint``, and settings that name
files there (``model.checkpoint``, ``finetune.kd.teacher``, ``dataset.root``,
``prune.latency.cache``, a dataset that is not one of pbkit's). A study never sets the
operator's ``limits``, ``distributed`` training, ``address`` or ``storage``.

Runners (:data:`RUNNERS`, each says why it is unavailable):

- ``ray``: Ray's own job submission (``ray.job_submission.JobSubmissionClient``) to the cluster
  at ``--ray-address`` (its dashboard, ``http://HEAD:8265``); the job's entry point is
  ``pbkit study run STUDY.yaml --push URL`` with the study file as its working directory;
- ``local``: the same command as a process on the service's machine, whose study runner starts
  a local Ray (a Ray job server needs the dashboard, which pbkit's pinned ``ray`` leaves out).

Either way the study's driver pushes each trial's record and the study's progress back to the
service with a push token made for that submission (logged under its name, revoked when the
job ends).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pbkit.core.errors import PbkitError, first_line
from pbkit.core.fileio import atomic_write_text
from pbkit.serve.ingest import Refused
from pbkit.serve.store import Store

CODE_SOURCES = ("file", "import", "pickle", "object")
NOT_SUBMITTED = {
    "extends": "names a file on the service; `pbkit submit` inlines it into config",
    "address": "the Ray cluster is the service's (pbkit serve --ray-address)",
    "storage": "where trials keep their files is the service's choice",
}
OPERATOR_SECTIONS = {
    "limits": "limits are the service operator's",
    "distributed": "distributed training is the service operator's",
    "out": "a submitted study's folder is the service's",
    "run_id": "a study names its runs by their configuration",
}
MAX_STUDY_BYTES = 256 << 10
MAX_TRIALS = 10_000


@dataclass
class Checked:
    name: str
    text: str  # the study file as it will run (YAML)
    trials: int


def _leaves(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every (dotted key, value) a study sets: its config's and each of its grid's values."""
    out: list[tuple[str, Any]] = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict) and v:
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        else:
            out.append((prefix, v))

    config = doc.get("config")
    walk("", config if isinstance(config, dict) else {})
    grid = doc.get("grid")
    for k, values in (grid if isinstance(grid, dict) else {}).items():
        for v in values if isinstance(values, list) else [values]:
            walk(str(k), v)
    return out


def check(doc: Any, allow_code: bool, folder: Path) -> Checked:
    """A submitted study, checked as ``pbkit study run`` would read it, and for what it may not
    do on the service; :class:`Refused` (422) names the first problem."""
    from pbkit.study import spec

    if not isinstance(doc, dict):
        raise Refused(422, "a study is a mapping (name, config, grid, ...)")
    for key, why in NOT_SUBMITTED.items():
        if doc.get(key) is not None:
            raise Refused(422, f"a submitted study sets no {key}: {why}")
    leaves = _leaves(doc)
    for key, _ in leaves:
        top = key.split(".")[0]
        if top in OPERATOR_SECTIONS:
            raise Refused(422, f"a submitted study sets no {key}: {OPERATOR_SECTIONS[top]}")
    name = str(doc.get("name") or "study")
    if not allow_code:  # before the study is read: reading resolves models (a file's would run)
        for key, value in leaves:
            code = user_code({key: value})
            if code:
                raise Refused(
                    422,
                    f"study {name}: {code}; this service runs no user code"
                    " (its operator may allow it: pbkit serve --allow-user-code)",
                )
    text = yaml.safe_dump(doc, sort_keys=False)
    if len(text.encode()) > MAX_STUDY_BYTES:
        raise Refused(413, f"the study is over {MAX_STUDY_BYTES >> 10} KiB")
    path = folder / "study.yaml"
    atomic_write_text(path, text)
    try:
        study = spec.read(path)
    except PbkitError as e:
        raise Refused(422, str(e).replace(str(path), "the submitted study")) from e
    if len(study.trials) > MAX_TRIALS:
        raise Refused(422, f"the study has {len(study.trials)} trials; at most {MAX_TRIALS}")
    if not allow_code:
        for t in study.trials:
            code = user_code(_settings(t.cfg))
            if code:
                raise Refused(
                    422,
                    f"study {name}, trial {t.params}: {code}; this service runs no user code"
                    " (its operator may allow it: pbkit serve --allow-user-code)",
                )
    return Checked(study.name, text, len(study.trials))


PATH_KEYS = ("model.checkpoint", "finetune.kd.teacher", "dataset.root", "prune.latency.cache")
DATASET_KEYS = ("dataset.name", "prune.calibration.dataset")


def _settings(cfg: Any) -> dict[str, Any]:
    """The settings of a trial's configuration that :func:`user_code` looks at."""
    return {
        "model.name": cfg.model.name,
        "model.trust_checkpoint": cfg.model.trust_checkpoint,
        "model.checkpoint": cfg.model.checkpoint,
        "finetune.kd.teacher": cfg.finetune.kd.teacher,
        "dataset.root": cfg.dataset.root,
        "prune.latency.cache": cfg.prune.latency.cache,
        "dataset.name": cfg.dataset.name,
        "prune.calibration.dataset": cfg.prune.calibration.dataset,
    }


def user_code(settings: dict[str, Any]) -> str | None:
    """Why these settings (dotted key -> value) would run code or read files on the service."""
    from pbkit.data.datasets import DATASETS
    from pbkit.models import sources

    for key, value in settings.items():
        if key == "model.name" and value is not None:
            try:
                kind = sources.source_of(str(value)).key
            except PbkitError as e:
                return first_line(e)
            if kind in CODE_SOURCES:
                return f"model {value!r} is a {kind} model (code the service would run)"
        elif key == "model.trust_checkpoint" and value:
            return "model.trust_checkpoint unpickles a file (code the service would run)"
        elif key in PATH_KEYS and value:
            return f"{key} names a file on the service ({value!r})"
        elif key in DATASET_KEYS and value and value not in DATASETS:
            return f"{key} {value!r} is not one of pbkit's datasets ({', '.join(sorted(DATASETS))})"
    return None


# ------------------------------------------------------------------------------------------------
# runners


@dataclass
class JobState:
    state: str  # queued | running | succeeded | failed | stopped
    error: str | None = None


class Runner:
    name = "runner"

    def start(self, sid: int, study_file: Path, out: Path, push_url: str, token: str) -> str:
        """Start the study's driver; its job id."""
        raise NotImplementedError

    def state(self, job_id: str) -> JobState:
        raise NotImplementedError

    def close(self) -> None:
        """Stop what this runner started and still runs."""


def _entrypoint(study_file: str, out: str | None, push_url: str) -> list[str]:
    cmd = ["study", "run", study_file, "--push", push_url]
    return cmd + (["--out", out] if out else [])


class LocalRunner(Runner):
    """The study's driver as a process on the service's machine (its trials on a local Ray)."""

    name = "local"

    def __init__(self) -> None:
        self._procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def start(self, sid: int, study_file: Path, out: Path, push_url: str, token: str) -> str:
        log = out.parent / "driver.log"
        env = {**os.environ, "PBKIT_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        cmd = [sys.executable, "-m", "pbkit.cli", *_entrypoint(str(study_file), str(out), push_url)]
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                cmd,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=out.parent,
                start_new_session=True,  # its own process group: stopped as one
            )
        job = f"local-{sid}-{proc.pid}"
        self._procs[job] = (proc, log)
        return job

    def state(self, job_id: str) -> JobState:
        got = self._procs.get(job_id)
        if got is None:
            return JobState("failed", "the service restarted while this study ran")
        proc, log = got
        rc = proc.poll()
        if rc is None:
            return JobState("running")
        if rc == 0:
            return JobState("succeeded")
        return JobState("failed", f"exit code {rc}: {_last_line(log)}")

    def close(self) -> None:
        for proc, _ in self._procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in self._procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


def _last_line(log: Path) -> str:
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    errors = [x for x in lines if x.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:500]


class RayJobsRunner(Runner):
    """Ray's job submission: the study file is the job's working directory."""

    name = "ray"
    STATES = {
        "PENDING": "queued",
        "RUNNING": "running",
        "SUCCEEDED": "succeeded",
        "FAILED": "failed",
        "STOPPED": "stopped",
    }

    def __init__(self, address: str) -> None:
        from ray.job_submission import JobSubmissionClient

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            self.client = JobSubmissionClient(address)
        except Exception as e:  # (Ray raises ConnectionError, RuntimeError, ValueError...)
            raise PbkitError(f"Ray's job submission at {address}: {first_line(e)}") from e

    def start(self, sid: int, study_file: Path, out: Path, push_url: str, token: str) -> str:
        entry = " ".join(["pbkit", *_entrypoint(study_file.name, None, push_url)])
        return str(
            self.client.submit_job(
                entrypoint=entry,
                submission_id=f"pbkit-{sid}-{study_file.parent.name}"[:120],
                runtime_env={
                    "working_dir": str(study_file.parent),
                    "env_vars": {"PBKIT_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"},
                },
            )
        )

    def state(self, job_id: str) -> JobState:
        info = self.client.get_job_info(job_id)
        state = self.STATES.get(str(info.status), "running")
        return JobState(state, info.message if state == "failed" else None)


RUNNERS = ("local", "ray", "none")


def unavailable(kind: str, ray_address: str | None) -> str | None:
    """Why a runner cannot take studies here (None: it can)."""
    if kind == "none":
        return "this service takes no studies (pbkit serve --jobs local | ray)"
    if kind == "ray" and not ray_address:
        return "--jobs ray needs --ray-address (the Ray cluster's dashboard, http://HEAD:8265)"
    if kind not in RUNNERS:
        return f"unknown runner {kind!r}; choose one of: {', '.join(RUNNERS)}"
    return None


class Jobs:
    """Submitted studies: checked, queued in the store, started, and followed to their end."""

    def __init__(
        self,
        store: Store,
        kind: str,
        work: Path,
        push_url: str,
        allow_code: bool = False,
        ray_address: str | None = None,
    ) -> None:
        self.store, self.kind, self.work = store, kind, work
        self.push_url, self.allow_code = push_url, allow_code
        self.why_not = unavailable(kind, ray_address)
        self._runner: Runner | None = None
        if self.why_not is None:
            self._runner = RayJobsRunner(ray_address or "") if kind == "ray" else LocalRunner()
        self._active: dict[int, tuple[str, str]] = {}  # submission -> (job id, token name)
        self._lock = threading.Lock()
        for sub in store.submissions():  # what a previous run of the service left running
            if sub.state not in ("queued", "running"):
                continue
            if sub.runner == "ray" and sub.job_id and kind == "ray":
                self._active[sub.id] = (sub.job_id, f"submission-{sub.id}")
            else:
                store.update_submission(sub.id, "failed", error="the service stopped while it ran")
                store.revoke_token(f"submission-{sub.id}")

    def submit(self, doc: Any, by: str) -> tuple[int, Checked]:
        if self._runner is None:
            raise Refused(503, self.why_not or "no runner")
        import shutil
        import tempfile

        (self.work / "studies").mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.work / "studies"))
        try:
            checked = check(doc, self.allow_code, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        sid = self.store.add_submission(checked.name, by, self._runner.name, checked.text)
        final = self.work / "studies" / f"{sid:05d}-{checked.name}"
        shutil.rmtree(final, ignore_errors=True)  # (a store started afresh over an old folder)
        folder.rename(final)
        token_name = f"submission-{sid}"
        token = self.store.create_token(token_name, "push")
        try:
            job = self._runner.start(sid, final / "study.yaml", final / "out", self.push_url, token)
        except Exception as e:  # a runner that could not start it: the submission says why
            self.store.revoke_token(token_name)
            self.store.update_submission(sid, "failed", error=first_line(e, 500))
            raise Refused(502, f"the study could not be started: {first_line(e)}") from e
        self.store.update_submission(sid, "running", job_id=job)
        with self._lock:
            self._active[sid] = (job, token_name)
        return sid, checked

    def poll(self) -> None:
        """Follow the running jobs; a finished one's token is revoked."""
        if self._runner is None:
            return
        with self._lock:
            active = dict(self._active)
        for sid, (job, token_name) in active.items():
            try:
                st = self._runner.state(job)
            except Exception as e:  # the cluster did not answer: asked again next time
                self.store.update_submission(sid, "running", error=first_line(e, 500))
                continue
            if st.state in ("succeeded", "failed", "stopped"):
                self.store.update_submission(sid, st.state, error=st.error)
                self.store.revoke_token(token_name)
                self.store.log(token_name, "submit", str(sid), st.state, st.error or "")
                with self._lock:
                    self._active.pop(sid, None)
            else:
                self.store.update_submission(sid, st.state)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
        for sid, (_, token_name) in list(self._active.items()):
            self.store.update_submission(sid, "stopped", error="the service stopped")
            self.store.revoke_token(token_name)
