"""The service: a FastAPI app on uvicorn over one :class:`~pbkit.serve.store.Store`.

API (JSON; a token as ``Authorization: Bearer T``, or the page's sign-in cookie for reading):

- ``GET /api/records`` (read): every record's run id, machine, model, method, identity, who
  pushed it and when (``?machine=``, ``?model=``, ``?study=``; ``?format=csv``);
- ``GET /api/records/{run_id}`` (read): the record as it was pushed (``?machine=`` picks one
  where several machines measured the same run);
- ``POST /api/records`` (push): a record file's bytes; ``?study=NAME`` files it under a study.
  201 created, 200 updated / unchanged / older (a newer copy is kept); 413 too large, 422 not a
  record this service reads (nothing stored);
- ``GET /api/studies``, ``GET /api/studies/{name}`` (read): progress and submissions;
  ``POST /api/studies/{name}/progress`` (push): a study driver's progress;
  ``POST /api/studies`` (submit): a study to run;
- ``GET /api/artifacts/{key}`` (read): the ONNX files a record lists and those stored, with the
  service's size limit; ``PUT /api/artifacts/{key}/{name}`` (push): one of them (413 over the
  limit, 422 not the bytes the record lists); ``GET /api/artifacts/{key}/{name}`` (read): its
  bytes (:mod:`pbkit.serve.artifacts`);
- ``GET /api/revision`` (read), ``GET /api/events`` (read): the log of pushes, submissions and
  refusals; ``GET /api/health``: no token, no data.

Pages: ``/`` the report (a run's page at ``/runs/{run_id}``, with its stored ONNX files to
download), ``/studies``, ``/submit`` (a form that submits a study), ``/login``; CSV exports at
``/export/leaderboard.csv`` and ``/export/machines.csv`` (cells that would start a formula are
neutralised).

No token or an unknown one: 401 (a page: the sign-in form); a token without the role: 403. Each
refusal is logged with the token's name ("anonymous" without one, "unknown" for a token the store
does not know); the same refusal repeated within :data:`REFUSALS_EVERY_S` is counted, not logged
again, so that no client can fill the log. Anonymous reading is off unless the operator passes
``--anonymous-read``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.concurrency import run_in_threadpool

from pbkit.core.clock import utc_now
from pbkit.core.errors import PbkitError, first_line
from pbkit.report import safe
from pbkit.report.html import anchor
from pbkit.serve import artifacts, auth, ingest, page
from pbkit.serve.jobs import MAX_STUDY_BYTES, Jobs
from pbkit.serve.store import DEFAULT_STORE, Artifact, Progress, Store

log = logging.getLogger("pbkit.serve")
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # (pbkit.study.spec.NAME_PATTERN)
RECORD_KEY = re.compile(r"^[0-9a-f]{64}$")
REFUSALS_EVERY_S = 10.0  # the same refusal (token, action, status) is logged once per this
COOKIE = "pbkit_token"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:;"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass
class Settings:
    store: str = DEFAULT_STORE
    host: str = "127.0.0.1"
    port: int = 8000
    anonymous_read: bool = False
    max_record_bytes: int = ingest.MAX_PUSH_BYTES
    max_artifact_bytes: int = artifacts.MAX_ARTIFACT_BYTES  # 0: no artifacts
    jobs: str = "local"  # local | ray | none
    ray_address: str | None = None
    allow_user_code: bool = False
    work: str = "results/serve"
    public_url: str | None = None  # where a study's driver pushes back (default: this service)
    poll_s: float = 5.0  # how often the page asks whether a record was stored

    @property
    def url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(settings: Settings) -> FastAPI:
    store = Store(settings.store)
    report = page.ReportPage(store, settings.poll_s)
    jobs = Jobs(
        store,
        settings.jobs,
        Path(settings.work).expanduser(),
        settings.url,
        settings.allow_user_code,
        settings.ray_address,
    )
    files = artifacts.Files(Path(settings.work).expanduser() / "artifacts")
    jobs_max_kib = MAX_STUDY_BYTES >> 10
    stop = threading.Event()

    def follow_jobs() -> None:
        try:
            why = jobs.probe()
        except Exception as e:
            why = first_line(e)
        if why:
            log.warning("studies: %s (asked again at each submission)", why)
        while not stop.wait(2.0):
            try:
                jobs.poll()
            except Exception as e:  # the store was busy: asked again in two seconds
                log.warning("following submitted studies: %s", first_line(e))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        follower = threading.Thread(target=follow_jobs, name="pbkit-serve-jobs", daemon=True)
        follower.start()
        try:
            yield
        finally:
            stop.set()
            follower.join(timeout=5)
            jobs.close()
            report.close()
            store.close()

    app = FastAPI(
        title="pbkit serve",
        lifespan=lifespan,
        docs_url=None,  # (Swagger's page loads its script from a CDN)
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.store = store
    app.state.settings = settings
    app.state.jobs = jobs

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), dict(e.headers or {}))

    @app.exception_handler(ingest.Refused)
    async def refused(_: Request, e: ingest.Refused) -> JSONResponse:
        return _error(e.status, str(e))

    @app.exception_handler(PbkitError)
    async def pbkit_error(_: Request, e: PbkitError) -> JSONResponse:
        return _error(400, str(e))

    def token_of(request: Request, reading: bool) -> str | None:
        authz = request.headers.get("authorization", "")
        if authz:
            scheme, _, value = authz.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise HTTPException(
                    401,
                    "the Authorization header is `Bearer TOKEN`",
                    {"WWW-Authenticate": "Bearer"},
                )
            return value.strip()
        if reading:  # the sign-in cookie reads only: a form elsewhere cannot push with it
            return request.cookies.get(COOKIE) or None
        return None

    logged: dict[tuple[str, str, int], list[float]] = {}  # refusal -> [when logged, since]
    logged_lock = threading.Lock()

    def log_refusal(request: Request, name: str, action: str, status: int, why: str) -> None:
        """A 401 / 403 in the log under the token's name; the same one (name, action, status)
        again within REFUSALS_EVERY_S is counted and told with the next one logged."""
        now, key = time.monotonic(), (name, action, status)
        with logged_lock:
            seen = logged.get(key)
            if seen is not None and now - seen[0] < REFUSALS_EVERY_S:
                seen[1] += 1
                return
            since = int(seen[1]) if seen is not None else 0
            logged[key] = [now, 0]
        where = request.client.host if request.client else "?"
        detail = f"{request.method} {request.url.path} from {where}: {why}"
        if since:
            detail += f" (and {since} more like it since the last logged)"
        try:
            store.log(name, action, request.url.path, str(status), detail)
        except Exception as e:  # the store busy: the refusal is answered all the same
            log.warning("logging a refusal: %s", first_line(e))

    def who(request: Request, action: str) -> str:
        """The name of the token that may do ``action``; 401 / 403 otherwise (logged)."""
        try:
            secret = token_of(request, action == "read")
        except HTTPException as e:
            log_refusal(request, "unknown", action, e.status_code, str(e.detail))
            raise
        if secret is None:
            if action == "read" and settings.anonymous_read:
                return "anonymous"
            log_refusal(request, "anonymous", action, 401, "no token")
            raise HTTPException(
                401,
                f"a token is needed ({action}): pass --token T or PBKIT_TOKEN"
                " (the operator makes one: pbkit serve token create NAME --role ROLE)",
                {"WWW-Authenticate": "Bearer"},
            )
        found = store.lookup(secret)
        if found is None or found.revoked_utc:
            name = "unknown" if found is None else found.name
            why = "unknown token" if found is None else f"token revoked {found.revoked_utc}"
            log_refusal(request, name, action, 401, why)
            raise HTTPException(401, "unknown or revoked token", {"WWW-Authenticate": "Bearer"})
        if not auth.allows(found.role, action):
            message = f"token {found.name!r} has role {found.role}, which may not {action}"
            log_refusal(request, found.name, action, 403, message)
            raise HTTPException(403, message)
        return found.name

    async def body(request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ingest.Refused(
                413, f"the body is {declared} bytes; this service takes at most {limit}"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ingest.Refused(413, f"the body is over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------------------------ the API

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/api/revision")
    def revision(request: Request) -> dict[str, Any]:
        who(request, "read")
        return {"revision": store.revision()}

    @app.get("/api/records", response_model=None)
    def list_records(
        request: Request,
        machine: str | None = None,
        model: str | None = None,
        study: str | None = None,
        format: str = "json",
    ) -> Any:
        who(request, "read")
        rows = [r.as_json() for r in store.records(machine, model, study)]
        if format == "csv":
            buf = io.StringIO()
            fields = list(rows[0]) if rows else ["run_id", "machine"]
            w = csv.DictWriter(buf, fieldnames=fields)
            w.writeheader()
            w.writerows({k: safe.csv_cell(v) for k, v in r.items()} for r in rows)
            return Response(buf.getvalue(), media_type="text/csv; charset=utf-8")
        if format != "json":
            raise HTTPException(400, "format is json or csv")
        return {"records": rows, "revision": store.revision()}

    @app.get("/api/records/{run_id}")
    def get_record(request: Request, run_id: str, machine: str | None = None) -> Response:
        who(request, "read")
        found = [(i, b) for i, b in store.bodies(run_id) if machine is None or i.machine == machine]
        if not found:
            raise HTTPException(404, f"no record of run {run_id!r}")
        if len(found) > 1:
            machines = ", ".join(sorted(i.machine for i, _ in found))
            raise HTTPException(
                409, f"run {run_id!r} was measured on several machines ({machines}); pass ?machine="
            )
        info, text = found[0]
        return Response(
            text, media_type="application/json", headers={"X-Pbkit-Record-Key": info.key}
        )

    @app.post("/api/records")
    async def push(request: Request, study: str | None = None) -> JSONResponse:
        by = await run_in_threadpool(who, request, "push")
        if study is not None and not STUDY_NAME.match(study):
            raise ingest.Refused(422, f"study {study!r}: a study's name ({STUDY_NAME.pattern})")
        try:
            raw = await body(request, settings.max_record_bytes)
            inc = await run_in_threadpool(ingest.incoming, raw, settings.max_record_bytes)
        except ingest.Refused as e:
            await run_in_threadpool(store.log, by, "push", "-", "refused", str(e))
            log.info("push by %s refused: %s", by, e)
            raise
        out = await run_in_threadpool(store.push, inc, by, study)
        log.info("push %s (%s) by %s: %s", out.run_id, out.machine, by, out.outcome)
        return JSONResponse(out.as_json(), status_code=201 if out.outcome == "created" else 200)

    @app.get("/api/studies")
    def studies(request: Request) -> dict[str, Any]:
        who(request, "read")
        return {
            "progress": [p.as_json() for p in store.progress()],
            "submissions": [s.as_json() for s in store.submissions()],
            "runner": settings.jobs,
            "runner_unavailable": jobs.why_not,
        }

    @app.get("/api/studies/{name}")
    def study(request: Request, name: str) -> dict[str, Any]:
        who(request, "read")
        progress = store.progress(name)
        subs = [s.as_json() for s in store.submissions() if s.study == name]
        if not progress and not subs:
            raise HTTPException(404, f"no study {name!r}")
        return {"progress": progress[0].as_json() if progress else None, "submissions": subs}

    @app.post("/api/studies/{name}/progress")
    async def progress(request: Request, name: str) -> dict[str, Any]:
        by = await run_in_threadpool(who, request, "push")
        if not STUDY_NAME.match(name):
            raise ingest.Refused(422, f"study {name!r}: a study's name ({STUDY_NAME.pattern})")
        raw = await body(request, 1 << 20)
        try:
            data = json.loads(raw)
            counts = {str(k): int(v) for k, v in dict(data.get("counts") or {}).items()}
            failures: list[dict[str, str | None]] = [
                {"run_id": str(f.get("run_id")), "error": str(f.get("error"))}
                for f in list(data.get("failures") or [])[:200]
            ]
            p = Progress(
                name=name[:256],
                counts=counts,
                running=int(data.get("running") or 0),
                eta_s=None if data.get("eta_s") is None else float(data["eta_s"]),
                failures=failures,
            )
        except (ValueError, TypeError, AttributeError) as e:
            raise ingest.Refused(422, f"not a study's progress: {first_line(e, 200)}") from e
        await run_in_threadpool(store.report_progress, p, by)
        return {"ok": True}

    @app.post("/api/studies")
    async def submit(request: Request) -> JSONResponse:
        import yaml

        by = await run_in_threadpool(who, request, "submit")
        raw = await body(request, MAX_STUDY_BYTES)
        try:
            doc = yaml.safe_load(raw.decode("utf-8"))  # JSON is YAML
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ingest.Refused(422, f"not a study file: {first_line(e, 200)}") from e
        try:
            sid, checked = await run_in_threadpool(jobs.submit, doc, by)
        except ingest.Refused as e:
            await run_in_threadpool(store.log, by, "submit", "-", "refused", str(e))
            raise
        log.info("study %s submitted by %s (#%d, %d trials)", checked.name, by, sid, checked.trials)
        return JSONResponse(
            {"id": sid, "study": checked.name, "trials": checked.trials, "runner": settings.jobs},
            status_code=201,
        )

    # ------------------------------------------------------------------------- artifacts

    def listed_of(key: str) -> tuple[Any, list[artifacts.Listed]]:
        if not RECORD_KEY.match(key):
            raise HTTPException(404, "a record's key is its identity's sha256 (64 hex digits)")
        got = store.record_body(key)
        if got is None:
            raise HTTPException(404, f"no record with key {key[:16]}...")
        info, text = got
        return info, artifacts.listed(json.loads(text))

    @app.get("/api/artifacts/{key}")
    def list_artifacts(request: Request, key: str) -> dict[str, Any]:
        who(request, "read")
        info, listed = listed_of(key)
        return {
            "run_id": info.run_id,
            "machine": info.machine,
            "listed": [vars(x) for x in listed],
            "stored": [a.as_json() for a in store.artifacts(key)],
            "max_bytes": settings.max_artifact_bytes,
        }

    @app.put("/api/artifacts/{key}/{name}")
    async def put_artifact(request: Request, key: str, name: str) -> JSONResponse:
        by = await run_in_threadpool(who, request, "push")
        try:
            info, listed = await run_in_threadpool(listed_of, key)
            wanted = next((x for x in listed if x.name == name), None)
            if wanted is None:
                names = ", ".join(x.name for x in listed) or "none"
                raise ingest.Refused(
                    422, f"run {info.run_id} lists no ONNX file {name!r} (it lists: {names})"
                )
            limit = settings.max_artifact_bytes
            if limit <= 0:
                raise ingest.Refused(
                    413, "this service takes no artifacts (its operator's --max-artifact-mib 0)"
                )
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise ingest.Refused(
                    413,
                    f"{name} is {declared} bytes; this service takes artifacts of at most {limit}",
                )
            size = await files.receive(request.stream(), limit, wanted)
        except ingest.Refused as e:
            await run_in_threadpool(store.log, by, "artifact", key[:16], "refused", str(e))
            raise
        art = Artifact(
            record_key=key,
            run_id=info.run_id,
            machine=info.machine,
            name=name,
            label=wanted.label,
            sha256=wanted.sha256,
            size=size,
            pushed_utc=utc_now(),
            pushed_by=by,
        )
        outcome = await run_in_threadpool(store.add_artifact, art)
        log.info("artifact %s of %s by %s: %s", name, info.run_id, by, outcome)
        return JSONResponse(
            {"name": name, "sha256": wanted.sha256, "size": size, "outcome": outcome},
            status_code=201 if outcome == "created" else 200,
        )

    @app.get("/api/artifacts/{key}/{name}", response_model=None)
    def get_artifact(request: Request, key: str, name: str) -> Response:
        who(request, "read")
        if not RECORD_KEY.match(key):
            raise HTTPException(404, "no such artifact")
        found = next((a for a in store.artifacts(key) if a.name == name), None)
        if found is None or not files.has(found.sha256):
            raise HTTPException(404, f"no artifact {name!r} stored with this record")
        return FileResponse(
            files.path(found.sha256),
            media_type="application/octet-stream",
            filename=found.name,
            content_disposition_type="attachment",
            headers={"X-Pbkit-Sha256": found.sha256},
        )

    @app.get("/api/events")
    def events(request: Request, limit: int = 100) -> dict[str, Any]:
        who(request, "read")
        return {"events": [e.as_json() for e in store.events(max(1, min(limit, 1000)))]}

    # ---------------------------------------------------------------------------- the pages

    def page_who(request: Request) -> str | HTMLResponse:
        try:
            return who(request, "read")
        except HTTPException as e:
            message = "" if e.status_code == 401 and COOKIE not in request.cookies else e.detail
            return HTMLResponse(
                page.LOGIN.render(message=message),
                status_code=e.status_code,
                headers={"Content-Security-Policy": page.CSP_OWN},
            )

    @app.get("/", response_class=HTMLResponse, response_model=None)
    def index(request: Request) -> Response:
        got = page_who(request)
        if isinstance(got, Response):
            return got
        return HTMLResponse(report.html(), headers={"Content-Security-Policy": REPORT_CSP})

    @app.get("/runs/{run_id}", response_model=None)
    def run_page(request: Request, run_id: str) -> Response:
        got = page_who(request)
        if isinstance(got, Response):
            return got
        if not store.bodies(run_id):
            raise HTTPException(404, f"no record of run {run_id!r}")
        return RedirectResponse("/#" + anchor(run_id), status_code=303)

    @app.get("/studies", response_class=HTMLResponse, response_model=None)
    def studies_page(request: Request) -> Response:
        got = page_who(request)
        if isinstance(got, Response):
            return got
        text = page.studies(
            store.progress(), store.submissions(), max(int(settings.poll_s), 1), jobs.why_not
        )
        return HTMLResponse(text, headers={"Content-Security-Policy": page.CSP_OWN})

    @app.get("/submit", response_class=HTMLResponse, response_model=None)
    def submit_page(request: Request) -> Response:
        got = page_who(request)
        if isinstance(got, Response):
            return got
        text = page.SUBMIT.render(runner=settings.jobs, why_not=jobs.why_not, max_kib=jobs_max_kib)
        return HTMLResponse(text, headers={"Content-Security-Policy": page.CSP_SUBMIT})

    @app.get("/assets/submit.js", response_model=None)
    def submit_js() -> Response:  # (the form's script: no data in it, so no token asked)
        return Response(page.SUBMIT_JS, media_type="text/javascript; charset=utf-8")

    @app.get("/login", response_class=HTMLResponse)
    def login_form() -> HTMLResponse:
        return HTMLResponse(
            page.LOGIN.render(message=""), headers={"Content-Security-Policy": page.CSP_OWN}
        )

    @app.post("/login", response_model=None)
    async def login(request: Request) -> Response:
        raw = await body(request, 4096)
        form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"))
        secret = (form.get("token") or [""])[0].strip()
        tok = await run_in_threadpool(store.token, secret) if secret else None
        if tok is None or not auth.allows(tok.role, "read"):
            found = await run_in_threadpool(store.lookup, secret) if secret else None
            name = found.name if found else ("unknown" if secret else "anonymous")
            await run_in_threadpool(
                log_refusal, request, name, "login", 401, "unknown or revoked token"
            )
            return HTMLResponse(
                page.LOGIN.render(message="unknown or revoked token"),
                status_code=401,
                headers={"Content-Security-Policy": page.CSP_OWN},
            )
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            secret,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=30 * 86400,
        )
        return response

    @app.post("/logout", response_model=None)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/export/leaderboard.csv", response_model=None)
    def leaderboard_csv(request: Request) -> Response:
        from pbkit.report import leaderboard as lb

        who(request, "read")
        rs = lb.rows(report.records())
        text = str(lb.render(rs, "csv")) if rs else ""
        return Response(text, media_type="text/csv; charset=utf-8")

    @app.get("/export/machines.csv", response_model=None)
    def machines_csv(request: Request) -> Response:
        from pbkit.report import machines

        who(request, "read")
        mrows = machines.machine_rows(report.records())
        text = str(machines.render_machines(mrows, "csv")) if mrows else ""
        return Response(text, media_type="text/csv; charset=utf-8")

    return app


def serve(settings: Settings) -> None:
    """Run the service until interrupted."""
    import uvicorn

    from pbkit.core.console import note

    app = create_app(settings)
    where = "" if settings.host in LOCAL_HOSTS else " (reachable from other machines: use TLS)"
    note(
        f"pbkit serve: {settings.url} · store {app.state.store.shown} · studies:"
        f" {settings.jobs}"
        + (f" ({settings.ray_address})" if settings.jobs == "ray" else "")
        + where
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
