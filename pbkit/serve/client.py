"""The client side: ``pbkit push`` (records, and a study's progress) and ``pbkit submit``.

A push sends a record file's bytes as they are; the service checks them and stores each record
once per identity, so pushing again (a retry, the same folder twice) never duplicates. A request
that does not get an answer (the service restarting, a dropped connection, 429 or 5xx) is tried
again after 0.5, 1, 2, 4, ... seconds (at most ``max_backoff_s`` apart), up to ``retries`` times;
a refusal (4xx) is not retried.

With ``--artifacts`` a record's ONNX files (those it lists, next to it in its run folder) follow
it, each only where the service does not hold it already and where it is within the service's
size limit (asked first: a file past it is refused here, never sent).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pbkit.core import record
from pbkit.core.errors import PbkitError, first_line

TOKEN_ENV = "PBKIT_TOKEN"
RETRY_STATUS = (408, 425, 429, 500, 502, 503, 504)


class Unreachable(PbkitError):
    """The service did not answer after every retry."""


@dataclass
class Pushed:
    path: str
    run_id: str
    outcome: str  # created | updated | unchanged | older | refused
    machine: str = ""
    message: str = ""
    key: str = ""  # the record's identity in the service's store


@dataclass
class PushedArtifact:
    path: str
    run_id: str
    name: str
    # created | updated | unchanged (held already) | missing (not in the run folder) |
    # skipped (not the file the stored record lists) | refused
    outcome: str
    size: int = 0
    message: str = ""


@dataclass
class PushReport:
    pushed: list[Pushed] = field(default_factory=list)
    artifacts: list[PushedArtifact] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.pushed:
            out[p.outcome] = out.get(p.outcome, 0) + 1
        return out

    def artifact_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.artifacts:
            out[a.outcome] = out.get(a.outcome, 0) + 1
        return out

    @property
    def refused(self) -> list[Pushed]:
        return [p for p in self.pushed if p.outcome == "refused"]

    @property
    def refused_artifacts(self) -> list[PushedArtifact]:
        return [a for a in self.artifacts if a.outcome == "refused"]


def token_from(given: str | None) -> str | None:
    return given or os.environ.get(TOKEN_ENV) or None


class Client:
    """One service, one token; not shared between threads (make one per thread)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        retries: int = 8,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        timeout_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise PbkitError(f"--to {url!r}: the service's URL, e.g. http://127.0.0.1:8000")
        self.url = url.rstrip("/")
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.sleep, self.on_retry = sleep, on_retry
        headers = {"User-Agent": "pbkit"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(timeout=timeout_s, headers=headers, trust_env=False)
        self.attempts = 0  # requests sent, retries included

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """The service's answer, after retries where it gave none (or 429 / 5xx)."""
        why = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
                delay *= 0.75 + 0.5 * random.random()  # (pushers that failed together spread)
                if self.on_retry is not None:
                    self.on_retry(f"{why}; retrying in {delay:.1f} s")
                self.sleep(delay)
            self.attempts += 1
            try:
                r = self._http.request(method, self.url + path, **kw)
            except httpx.TransportError as e:
                why = f"{self.url} did not answer ({first_line(e, 120)})"
                continue
            if r.status_code in RETRY_STATUS:
                why = f"{self.url} answered {r.status_code}"
                continue
            return r
        raise Unreachable(f"{why} after {self.retries + 1} attempts")

    @staticmethod
    def _message(r: httpx.Response) -> str:
        try:
            return str(r.json().get("error") or r.text)
        except ValueError:
            return r.text[:300]

    def _check_auth(self, r: httpx.Response) -> None:
        if r.status_code in (401, 403):
            raise PbkitError(f"{self.url}: {r.status_code} {self._message(r)}")

    def push_bytes(self, raw: bytes, where: str, study: str | None = None) -> Pushed:
        params = {"study": study} if study else None
        r = self.request(
            "POST",
            "/api/records",
            content=raw,
            params=params,
            headers={"Content-Type": "application/json"},
        )
        self._check_auth(r)
        if r.status_code in (200, 201):
            d = r.json()
            return Pushed(where, d["run_id"], d["outcome"], d.get("machine", ""), key=d["key"])
        return Pushed(where, "-", "refused", message=f"{r.status_code} {self._message(r)}")

    def list_artifacts(self, key: str) -> dict[str, Any]:
        """The files a stored record lists, those stored, and the service's size limit."""
        r = self.request("GET", f"/api/artifacts/{key}")
        self._check_auth(r)
        if r.status_code != 200:
            raise PbkitError(f"{self.url}: artifacts of {key[:16]}...: {self._message(r)}")
        return dict(r.json())

    def put_artifact(self, key: str, name: str, data: bytes) -> tuple[int, str]:
        """Push one file: (HTTP status, outcome or the refusal's message)."""
        r = self.request(
            "PUT",
            f"/api/artifacts/{key}/{name}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        self._check_auth(r)
        if r.status_code in (200, 201):
            return r.status_code, str(r.json()["outcome"])
        return r.status_code, self._message(r)

    def push_file(self, path: Path, study: str | None = None) -> Pushed:
        try:
            raw = path.read_bytes()
        except OSError as e:
            return Pushed(str(path), "-", "refused", message=first_line(e))
        return self.push_bytes(raw, str(path), study)

    def progress(self, name: str, data: dict[str, Any]) -> None:
        r = self.request("POST", f"/api/studies/{name}/progress", json=data)
        self._check_auth(r)
        if r.status_code != 200:
            raise PbkitError(f"{self.url}: progress of {name}: {self._message(r)}")

    def submit(self, doc: dict[str, Any]) -> dict[str, Any]:
        r = self.request(
            "POST",
            "/api/studies",
            content=json.dumps(doc).encode(),
            headers={"Content-Type": "application/json"},
        )
        self._check_auth(r)
        if r.status_code != 201:
            raise PbkitError(f"{self.url} refused the study: {self._message(r)}")
        return dict(r.json())


def record_files(folder: Path) -> list[Path]:
    """The record files of a run folder, a study folder or any folder of runs (or the file)."""
    folder = folder.expanduser()
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise PbkitError(f"{str(folder)!r} is not a run folder, a study folder or a record")
    return sorted(
        p
        for p in folder.rglob(record.RECORD_NAME)
        if not any(part.startswith((".tmp-", ".")) for part in p.relative_to(folder).parts[:-1])
    )


def study_of(folder: Path) -> tuple[str, dict[str, Any]] | None:
    """A study folder's name and its progress (from ``study.json``), or None."""
    from pbkit.study import state

    if not (folder / state.STATE_NAME).is_file():
        return None
    doc = state.read(folder)
    return doc["name"], {
        "counts": state.counts(doc["trials"]),
        "running": 0,
        "eta_s": None,
        "failures": [
            {"run_id": t.get("run_id"), "error": t.get("error")}
            for t in doc["trials"]
            if t["status"] == "failed"
        ],
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def push_artifacts(client: Client, record_path: Path, pushed: Pushed) -> list[PushedArtifact]:
    """The ONNX files the stored record lists, from its run folder, each once."""
    listing = client.list_artifacts(pushed.key)
    stored = {a["name"]: a["sha256"] for a in listing["stored"]}
    limit = int(listing["max_bytes"])
    out = []
    for item in listing["listed"]:
        name, sha = str(item["name"]), str(item["sha256"])
        path = record_path.parent / name
        done = PushedArtifact(str(path), pushed.run_id, name, "unchanged")
        if stored.get(name) == sha:
            out.append(done)
            continue
        if not path.is_file():
            done.outcome, done.message = "missing", "not in the run folder"
        elif _sha256(path) != sha:
            done.outcome = "skipped"
            done.message = "not the file the stored record lists (a newer copy is stored)"
        else:
            done.size = path.stat().st_size
            if done.size > limit:
                done.outcome = "refused"
                done.message = (
                    f"413 {name} is {done.size} bytes; the service takes artifacts of at most"
                    f" {limit}" + (" (none: --max-artifact-mib 0)" if limit <= 0 else "")
                )
            else:
                status, what = client.put_artifact(pushed.key, name, path.read_bytes())
                if status in (200, 201):
                    done.outcome = what
                else:
                    done.outcome, done.message = "refused", f"{status} {what}"
        out.append(done)
    return out


def push_folder(
    client: Client,
    folder: Path,
    on_each: Callable[[Pushed], None] | None = None,
    artifacts: bool = False,
    on_artifact: Callable[[PushedArtifact], None] | None = None,
) -> PushReport:
    """Push every record under ``folder`` (a study folder: filed under its study, with its
    progress); with ``artifacts``, each record's ONNX files after it."""
    rep = PushReport()
    study = study_of(folder) if folder.is_dir() else None
    files = record_files(folder)
    if not files:
        raise PbkitError(f"no records (record.json) under {str(folder)!r}")
    for path in files:
        got = client.push_file(path, study[0] if study else None)
        rep.pushed.append(got)
        if on_each is not None:
            on_each(got)
        if artifacts and got.outcome != "refused" and got.key:
            for a in push_artifacts(client, path, got):
                rep.artifacts.append(a)
                if on_artifact is not None:
                    on_artifact(a)
    if study is not None:
        client.progress(*study)
    return rep


class StudyPusher:
    """``pbkit study run --push URL``: each trial's record as it finishes, and the study's
    progress. A push that fails after its retries is noted, never stops the study; the folder
    is pushed again at the end (:func:`push_folder`: what is there already is unchanged)."""

    def __init__(self, client: Client, note: Callable[[str], None]) -> None:
        self.client, self.note = client, note
        self.failures: list[dict[str, str | None]] = []
        self.missed = 0

    def __call__(self, ev: Any) -> None:  # a pbkit.study.runner.TrialEvent
        if ev.status == "failed":
            self.failures.append({"run_id": ev.run_id, "error": ev.error})
        try:
            if ev.record is not None:
                got = self.client.push_file(Path(ev.record), ev.study)
                if got.outcome == "refused":
                    self.note(f"push of {ev.run_id} refused: {got.message}")
            self.client.progress(
                ev.study,
                {
                    "counts": ev.counts,
                    "running": ev.running,
                    "eta_s": ev.eta_s,
                    "failures": self.failures,
                },
            )
        except PbkitError as e:
            self.missed += 1
            self.note(f"push to {self.client.url} failed: {e} (pushed again at the end)")
