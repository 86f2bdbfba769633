"""Studies submitted to the service: checked, then handed to a runner that drives them.

A submitted study is a study file's settings and nothing else (``pbkit submit`` inlines what the
file ``extends``). Before it is queued the service refuses, with one line, whatever would run
code or touch files on its machines unless its operator passed ``--allow-user-code``: a model
from a Python file, an import path or a pickle, ``model.trust_checkpoint``, and settings that name
files there (``model.checkpoint``, ``finetune.kd.teacher``, ``dataset.root``,
``prune.latency.cache``, a dataset that is not one of pbkit's). A study never sets the
operator's ``limits``, ``distributed`` training, ``address`` or ``storage``.

Runners (:data:`RUNNERS`, each says why it is unavailable):

- ``ray``: Ray's own job submission (``ray.job_submission.JobSubmissionClient``, from
  ``ray[default]``) to the cluster whose dashboard is ``--ray-address`` (``http://HEAD:8265``);
  the job's entry point is ``pbkit study run study.yaml --push URL`` with the study file as its
  working directory, so ``pbkit`` must be on the PATH of the cluster's nodes. A cluster with
  Ray's token authentication takes the token from ``RAY_AUTH_TOKEN`` or the file
  ``RAY_AUTH_TOKEN_PATH`` names (or, with ``RAY_AUTH_MODE=token``, Ray's own ``~/.ray/auth_token``).
  A Ray job outlives the service: a service restarted follows it again;
- ``local``: the same command as a process on the service's machine, whose study runner starts
  a local Ray; the service stopping stops it.

Either way the study's driver pushes each trial's record and the study's progress back to the
service with a push token made for that submission (logged under its name, revoked when the
job ends).
"""

from __future__ import annotations

import contextlib
import os
import secrets
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
    outlives_service = False  # its jobs run on when the service stops (and are followed again)

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
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    return (_last_error(lines) or "no output")[:500]


def ray_auth_headers() -> dict[str, str]:
    """The ``Authorization`` header for a Ray cluster with token authentication, where the
    operator gave its token (``RAY_AUTH_TOKEN``, or the file ``RAY_AUTH_TOKEN_PATH`` names);
    otherwise none, and Ray's client finds one itself where ``RAY_AUTH_MODE=token``."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not token and path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as e:
            raise PbkitError(f"RAY_AUTH_TOKEN_PATH {path!r}: {first_line(e)}") from e
    return {"Authorization": f"Bearer {token}"} if token else {}


class RayJobsRunner(Runner):
    """Ray's job submission: the study file is the job's working directory. The cluster is
    reached when a study is submitted or followed (it may start after the service)."""

    name = "ray"
    outlives_service = True
    STATES = {
        "PENDING": "queued",
        "RUNNING": "running",
        "SUCCEEDED": "succeeded",
        "FAILED": "failed",
        "STOPPED": "stopped",
    }

    def __init__(self, address: str) -> None:
        self.address = address
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from ray.job_submission import JobSubmissionClient

                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                try:
                    self._client = JobSubmissionClient(
                        self.address, headers=ray_auth_headers() or None
                    )
                except PbkitError:
                    raise
                except Exception as e:  # (Ray raises ConnectionError, RuntimeError, ...)
                    raise PbkitError(
                        f"Ray's job submission at {self.address}: {_ray_error(e)}"
                    ) from e
            return self._client

    def check(self) -> str | None:
        """Why the cluster cannot take jobs now (None: it answers)."""
        try:
            self.client.list_jobs()
        except Exception as e:
            with self._lock:
                self._client = None
            return _ray_error(e)
        return None

    def start(self, sid: int, study_file: Path, out: Path, push_url: str, token: str) -> str:
        entry = " ".join(["pbkit", *_entrypoint(study_file.name, None, push_url)])
        name = study_file.parent.name.split("-", 1)[-1]
        return str(
            self.client.submit_job(
                entrypoint=entry,
                # (a cluster keeps its jobs: a store started afresh must not reuse their ids)
                submission_id=f"pbkit-{sid}-{name[:80]}-{secrets.token_hex(4)}",
                runtime_env={
                    "working_dir": str(study_file.parent),
                    "env_vars": {"PBKIT_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"},
                },
                metadata={"pbkit_submission": str(sid)},
            )
        )

    def state(self, job_id: str) -> JobState:
        info = self.client.get_job_info(job_id)
        status = str(getattr(info.status, "value", info.status))
        state = self.STATES.get(status, "running")
        if state != "failed":
            return JobState(state)
        try:  # the study's own last error line, rather than Ray's summary of the log
            why = _last_error(str(self.client.get_job_logs(job_id)).splitlines())
        except Exception:
            why = None
        message = str(info.message or "failed").strip().splitlines() or ["failed"]
        return JobState(state, (why or message[0])[:500])


def _ray_error(e: BaseException) -> str:
    text = first_line(e, 300)
    if "Authentication" in type(e).__name__ or "authentication token" in str(e).lower():
        return (
            f"{text} (a cluster with token authentication: give the service its token in"
            " RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
        )
    return text


def _last_error(lines: list[str]) -> str | None:
    """The last ``error: ...`` line pbkit wrote (its one-line errors), else the last line."""
    lines = [x.strip() for x in lines if x.strip()]
    errors = [x for x in lines if x.startswith("error:")]
    return (errors or lines)[-1] if lines else None


RUNNERS = ("local", "ray", "none")


def default_runner(ray_address: str | None) -> str:
    """``pbkit serve --jobs`` unset: Ray's job submission where a cluster is named, else local."""
    return "ray" if ray_address else "local"


def unavailable(kind: str, ray_address: str | None) -> str | None:
    """Why a runner cannot take studies here (None: it can)."""
    if kind == "none":
        return "this service takes no studies (pbkit serve --jobs local | ray)"
    if kind not in RUNNERS:
        return f"unknown runner {kind!r}; choose one of: {', '.join(RUNNERS)}"
    if kind == "ray":
        if not ray_address:
            return "--jobs ray needs --ray-address (the Ray cluster's dashboard, http://HEAD:8265)"
        if not ray_address.startswith(("http://", "https://")):
            return (
                f"--ray-address {ray_address!r}: the Ray cluster's dashboard, http://HEAD:8265"
                " (Ray's job submission goes through it; not ray:// nor HOST:6379)"
            )
        try:
            import ray.job_submission  # noqa: F401  (needs ray[default]: the dashboard's client)
        except ImportError as e:
            return f"--jobs ray needs ray[default] (Ray's job submission): {first_line(e)}"
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
            if sub.runner == "ray" and sub.job_id and self._runner is not None and kind == "ray":
                self._active[sub.id] = (sub.job_id, f"submission-{sub.id}")
            else:
                store.update_submission(sub.id, "failed", error="the service stopped while it ran")
                store.revoke_token(f"submission-{sub.id}")

    def probe(self) -> str | None:
        """Why the runner cannot take studies now (Ray's cluster not answering...), or None."""
        runner = self._runner
        if runner is None:
            return None if self.kind == "none" else self.why_not
        if isinstance(runner, RayJobsRunner):
            why = runner.check()
            return f"Ray's job submission at {runner.address}: {why}" if why else None
        return None

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
                self.store.update_submission(
                    sid, "running", error=f"not followed: {first_line(e, 480)}"
                )
                continue
            if st.state in ("succeeded", "failed", "stopped"):
                self.store.update_submission(sid, st.state, error=st.error)
                self.store.revoke_token(token_name)
                self.store.log(token_name, "submit", str(sid), st.state, st.error or "")
                with self._lock:
                    self._active.pop(sid, None)
            else:
                self.store.update_submission(sid, st.state, error="")  # (answered again)

    def close(self) -> None:
        if self._runner is None:
            return
        self._runner.close()
        if self._runner.outlives_service:  # (Ray's jobs run on: followed again at the next start)
            return
        for sid, (_, token_name) in list(self._active.items()):
            self.store.update_submission(sid, "stopped", error="the service stopped")
            self.store.revoke_token(token_name)
