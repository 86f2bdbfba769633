"""The client side: ``pbkit push`` (records, and a study's progress) and ``pbkit submit``.

A push sends a record file's bytes as they are; the service checks them and stores each record
once per identity, so pushing again (a retry, the same folder twice) never duplicates. A request
that does not get an answer (the service restarting, a dropped connection, 429 or 5xx) is tried
again after 0.5, 1, 2, 4, ... seconds (at most ``max_backoff_s`` apart), up to ``retries`` times;
a refusal (4xx) is not retried.
"""

from __future__ import annotations

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


@dataclass
class PushReport:
    pushed: list[Pushed] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.pushed:
            out[p.outcome] = out.get(p.outcome, 0) + 1
        return out

    @property
    def refused(self) -> list[Pushed]:
        return [p for p in self.pushed if p.outcome == "refused"]


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
            return Pushed(where, d["run_id"], d["outcome"], d.get("machine", ""))
        return Pushed(where, "-", "refused", message=f"{r.status_code} {self._message(r)}")

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


def push_folder(
    client: Client, folder: Path, on_each: Callable[[Pushed], None] | None = None
) -> PushReport:
    """Push every record under ``folder`` (a study folder: filed under its study, with its
    progress)."""
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
