"""The service's store, through SQLAlchemy 2: SQLite (a file, the default) or PostgreSQL
(psycopg 3).

Tables: ``records`` (one row per record identity: run id, identity hash and the machine that
measured it; the record's JSON as it was pushed), ``tokens`` (name, role, the token's sha256,
never the token), ``events`` (every push, progress report, submission and refusal, with the
token's name), ``studies`` (a study's progress as its driver reports it), ``submissions``
(studies handed to Ray) and ``artifacts`` (a record's ONNX files pushed with it: their name,
sha256 and size; the bytes are files under the service's ``--work`` folder, named by their
sha256). A push is one transaction: a record is stored once, whatever the number
of concurrent or repeated pushes of it; a service killed at any moment leaves the store as the
last committed push left it.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from pbkit.core.clock import utc_now
from pbkit.core.errors import PbkitError, first_line
from pbkit.serve import auth

DEFAULT_STORE = "sqlite:///results/pbkit.db"


class Base(DeclarativeBase):
    pass


class RecordRow(Base):
    __tablename__ = "records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    run_id: Mapped[str] = mapped_column(String(512), index=True)
    identity_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    machine: Mapped[str] = mapped_column(String(1024))
    model: Mapped[str] = mapped_column(String(1024))
    method: Mapped[str] = mapped_column(String(512))
    schema_version: Mapped[str] = mapped_column(String(64))
    content_sha256: Mapped[str] = mapped_column(String(64))
    updated_utc: Mapped[str] = mapped_column(String(64))
    pushed_utc: Mapped[str] = mapped_column(String(32))
    pushed_by: Mapped[str] = mapped_column(String(64))
    study: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    size: Mapped[int] = mapped_column(Integer)
    changed: Mapped[int] = mapped_column(Integer)  # the event that stored its current content
    body: Mapped[str] = mapped_column(Text)


class TokenRow(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_utc: Mapped[str] = mapped_column(String(32))
    revoked_utc: Mapped[str | None] = mapped_column(String(32), nullable=True)


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    utc: Mapped[str] = mapped_column(String(32))
    token: Mapped[str] = mapped_column(String(64))  # the token's name ("anonymous", "-")
    action: Mapped[str] = mapped_column(String(16))  # push | progress | submit | token | ...
    target: Mapped[str] = mapped_column(String(512))
    # created | updated | unchanged | older | refused | 401 | 403 | ...
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")


class ArtifactRow(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("record_key", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    record_key: Mapped[str] = mapped_column(String(64), index=True)
    run_id: Mapped[str] = mapped_column(String(512), index=True)
    machine: Mapped[str] = mapped_column(String(1024))
    name: Mapped[str] = mapped_column(String(160))
    label: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    pushed_utc: Mapped[str] = mapped_column(String(32))
    pushed_by: Mapped[str] = mapped_column(String(64))


class StudyRow(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    counts: Mapped[str] = mapped_column(Text)  # JSON {done, failed, skipped, pending}
    running: Mapped[int] = mapped_column(Integer, default=0)
    eta_s: Mapped[float | None] = mapped_column(nullable=True)
    failures: Mapped[str] = mapped_column(Text)  # JSON [{run_id, error}]
    updated_utc: Mapped[str] = mapped_column(String(32))
    pushed_by: Mapped[str] = mapped_column(String(64))


class SubmissionRow(Base):
    __tablename__ = "submissions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(String(256), index=True)
    submitted_utc: Mapped[str] = mapped_column(String(32))
    submitted_by: Mapped[str] = mapped_column(String(64))
    runner: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    state: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("tokens.id"), nullable=True)
    study_yaml: Mapped[str] = mapped_column(Text)


# what crosses the package boundary: typed, never the ORM rows


@dataclass
class StoredRecord:
    key: str
    run_id: str
    machine: str
    model: str
    method: str
    identity_hash: str | None
    schema_version: str
    updated_utc: str
    pushed_utc: str
    pushed_by: str
    study: str | None
    content_sha256: str
    size: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Incoming:
    """A pushed record, checked (:mod:`pbkit.serve.ingest`): its identity and its JSON text."""

    key: str
    run_id: str
    identity_hash: str | None
    machine: str
    model: str
    method: str
    schema_version: str
    updated_utc: str
    content_sha256: str
    body: str


@dataclass
class PushOutcome:
    key: str
    run_id: str
    machine: str
    outcome: str  # created | updated | unchanged | older (a newer one is stored: kept)
    revision: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Token:
    name: str
    role: str


@dataclass
class Artifact:
    """A record's file (an ONNX model) stored with it: ``name`` as the record lists it."""

    record_key: str
    run_id: str
    machine: str
    name: str
    label: str  # what the record calls it: onnx dense, onnx pruned, int8 ort pruned ...
    sha256: str
    size: int
    pushed_utc: str
    pushed_by: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TokenListing:
    name: str
    role: str
    created_utc: str
    revoked_utc: str | None


@dataclass
class Event:
    id: int
    utc: str
    token: str
    action: str
    target: str
    outcome: str
    detail: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Progress:
    """A study's progress as its driver last reported it."""

    name: str
    counts: dict[str, int]
    running: int
    eta_s: float | None
    failures: list[dict[str, str | None]] = field(default_factory=list)
    updated_utc: str = ""
    pushed_by: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Submission:
    id: int
    study: str
    submitted_utc: str
    submitted_by: str
    runner: str
    job_id: str | None
    state: str
    error: str | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def engine_url(url: str) -> str:
    """The SQLAlchemy URL of a store: ``postgresql://`` goes through psycopg 3; a SQLite file's
    folder is made."""
    try:
        u = make_url(url)
    except ArgumentError as e:
        raise PbkitError(
            f"store {url!r} is not a database URL (sqlite:///results/pbkit.db,"
            " postgresql://user@host/db)"
        ) from e
    if u.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        u = u.set(drivername="postgresql+psycopg")
    elif u.drivername == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    else:
        raise PbkitError(
            f"store {u.drivername!r}: pbkit serve stores in sqlite:///FILE or postgresql://..."
        )
    return u.render_as_string(hide_password=False)


class Store:
    """The store behind one URL; safe to share between threads."""

    def __init__(self, url: str = DEFAULT_STORE) -> None:
        self.url = url
        full = engine_url(url)
        self.sqlite = full.startswith("sqlite")
        try:
            self.engine: Engine = create_engine(
                full,
                pool_pre_ping=not self.sqlite,
                connect_args={"timeout": 60, "check_same_thread": False} if self.sqlite else {},
            )
            if self.sqlite:
                event.listen(self.engine, "connect", _sqlite_pragmas)
            Base.metadata.create_all(self.engine)
        except OperationalError as e:
            raise PbkitError(f"store {self.shown}: {first_line(e.orig or e)}") from e
        # SQLite has one writer at a time: this process's writes take turns (other processes wait
        # on its busy timeout); PostgreSQL's transactions need no such help
        self._writes = threading.Lock() if self.sqlite else None

    @property
    def shown(self) -> str:
        """The URL with its password hidden (for messages and the page)."""
        return make_url(engine_url(self.url)).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Session]:
        lock = self._writes or contextlib.nullcontext()
        with lock, Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    def _read(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ------------------------------------------------------------------------------- records

    def push(self, inc: Incoming, by: str, study: str | None) -> PushOutcome:
        """Store a record once per identity: a repeated push is ``unchanged``, a changed record
        (a later stage, a new bench) ``updated``, an older copy of a stored record ``older``."""
        for attempt in range(3):
            try:
                return self._push(inc, by, study)
            except IntegrityError:  # the same identity inserted concurrently: look again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _push(self, inc: Incoming, by: str, study: str | None) -> PushOutcome:
        with self._write() as s:
            row = s.scalar(select(RecordRow).where(RecordRow.key == inc.key))
            if row is None:
                outcome = "created"
            elif row.content_sha256 == inc.content_sha256:
                outcome = "unchanged"
            elif inc.updated_utc < row.updated_utc:
                outcome = "older"
            else:
                outcome = "updated"
            ev = EventRow(
                utc=utc_now(),
                token=by,
                action="push",
                target=inc.run_id[:512],
                outcome=outcome,
                detail=f"machine {inc.machine}; key {inc.key[:16]}"[:2000],
            )
            s.add(ev)
            s.flush()
            fields = dict(
                run_id=inc.run_id,
                identity_hash=inc.identity_hash,
                machine=inc.machine,
                model=inc.model,
                method=inc.method,
                schema_version=inc.schema_version,
                content_sha256=inc.content_sha256,
                updated_utc=inc.updated_utc,
                pushed_utc=ev.utc,
                pushed_by=by,
                size=len(inc.body.encode()),
                changed=ev.id,
                body=inc.body,
            )
            if row is None:
                s.add(RecordRow(key=inc.key, study=study, **fields))
            elif outcome == "updated":
                for k, v in fields.items():
                    setattr(row, k, v)
                if study:
                    row.study = study
            s.flush()
            rev = self._revision(s)
        return PushOutcome(inc.key, inc.run_id, inc.machine, outcome, rev)

    def revision(self) -> str:
        """Changes whenever a record is stored or replaced (the live page polls it)."""
        with self._read() as s:
            return self._revision(s)

    @staticmethod
    def _revision(s: Session) -> str:
        n, last = s.execute(select(func.count(RecordRow.id), func.max(RecordRow.changed))).one()
        arts = s.scalar(select(func.max(ArtifactRow.id)))  # (an artifact stored changes the page)
        return f"{n}-{last or 0}" + (f"-a{arts}" if arts else "")

    def records(
        self, machine: str | None = None, model: str | None = None, study: str | None = None
    ) -> list[StoredRecord]:
        q = select(RecordRow).order_by(RecordRow.id)
        if machine is not None:
            q = q.where(RecordRow.machine == machine)
        if model is not None:
            q = q.where(RecordRow.model == model)
        if study is not None:
            q = q.where(RecordRow.study == study)
        with self._read() as s:
            return [_stored(r) for r in s.execute(q.with_only_columns(*_LISTED))]

    def bodies(self, run_id: str | None = None) -> list[tuple[StoredRecord, str]]:
        """Records with their JSON text (all, or those of one run id: one per machine)."""
        q = select(RecordRow).order_by(RecordRow.id)
        if run_id is not None:
            q = q.where(RecordRow.run_id == run_id)
        with self._read() as s:
            return [(_stored(r), r.body) for r in s.scalars(q)]

    def count(self) -> int:
        with self._read() as s:
            return int(s.scalar(select(func.count(RecordRow.id))) or 0)

    def record_body(self, key: str) -> tuple[StoredRecord, str] | None:
        """The record stored under an identity key, with its JSON text."""
        with self._read() as s:
            row = s.scalar(select(RecordRow).where(RecordRow.key == key))
            return None if row is None else (_stored(row), row.body)

    # ----------------------------------------------------------------------------- artifacts

    def add_artifact(self, a: Artifact) -> str:
        """Store (or replace) a record's file; ``created``, ``unchanged`` or ``updated``."""
        for attempt in range(3):
            try:
                return self._add_artifact(a)
            except IntegrityError:  # the same file pushed concurrently: look again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _add_artifact(self, a: Artifact) -> str:
        with self._write() as s:
            row = s.scalar(
                select(ArtifactRow).where(
                    ArtifactRow.record_key == a.record_key, ArtifactRow.name == a.name
                )
            )
            if row is not None and row.sha256 == a.sha256:
                outcome = "unchanged"
            else:
                outcome = "created" if row is None else "updated"
                if row is not None:
                    s.delete(row)
                    s.flush()
                s.add(ArtifactRow(**asdict(a)))
            s.add(
                EventRow(
                    utc=utc_now(),
                    token=a.pushed_by,
                    action="artifact",
                    target=a.run_id[:512],
                    outcome=outcome,
                    detail=f"{a.name} ({a.size} bytes, sha256 {a.sha256[:16]}); machine"
                    f" {a.machine}"[:2000],
                ),
            )
            return outcome

    def artifacts(self, record_key: str | None = None) -> list[Artifact]:
        q = select(ArtifactRow).order_by(ArtifactRow.run_id, ArtifactRow.machine, ArtifactRow.name)
        if record_key is not None:
            q = q.where(ArtifactRow.record_key == record_key)
        with self._read() as s:
            return [
                Artifact(
                    r.record_key,
                    r.run_id,
                    r.machine,
                    r.name,
                    r.label,
                    r.sha256,
                    int(r.size),
                    r.pushed_utc,
                    r.pushed_by,
                )
                for r in s.scalars(q)
            ]

    def artifact_shas(self) -> set[str]:
        """Every file content the store still refers to."""
        with self._read() as s:
            return set(s.scalars(select(ArtifactRow.sha256)))

    # -------------------------------------------------------------------------------- tokens

    def create_token(self, name: str, role: str) -> str:
        """A new token for ``name`` with ``role``: returned once, stored as its sha256 only."""
        auth.check_name(name)
        auth.check_role(role)
        secret = auth.new_secret()
        try:
            with self._write() as s:
                if s.scalar(select(TokenRow.id).where(TokenRow.name == name)) is not None:
                    raise PbkitError(
                        f"a token named {name!r} exists in {self.shown}; choose another name"
                    )
                s.add(
                    TokenRow(
                        name=name, role=role, digest=auth.digest(secret), created_utc=utc_now()
                    )
                )
                s.add(
                    EventRow(
                        utc=utc_now(),
                        token="-",
                        action="token",
                        target=name,
                        outcome="created",
                        detail=f"role {role}",
                    )
                )
        except IntegrityError as e:
            raise PbkitError(f"a token named {name!r} exists in {self.shown}") from e
        return secret

    def revoke_token(self, name: str) -> bool:
        with self._write() as s:
            row = s.scalar(select(TokenRow).where(TokenRow.name == name))
            if row is None or row.revoked_utc:
                return False
            row.revoked_utc = utc_now()
            s.add(
                EventRow(utc=utc_now(), token="-", action="token", target=name, outcome="revoked")
            )
            return True

    def token(self, secret: str) -> Token | None:
        """The token a secret is, or None (unknown or revoked)."""
        found = self.lookup(secret)
        if found is None or found.revoked_utc:
            return None
        return Token(found.name, found.role)

    def lookup(self, secret: str) -> TokenListing | None:
        """The token a secret is, revoked or not (the log names a revoked token), or None."""
        with self._read() as s:
            row = s.scalar(select(TokenRow).where(TokenRow.digest == auth.digest(secret)))
            if row is None:
                return None
            return TokenListing(row.name, row.role, row.created_utc, row.revoked_utc)

    def tokens(self) -> list[TokenListing]:
        with self._read() as s:
            return [
                TokenListing(r.name, r.role, r.created_utc, r.revoked_utc)
                for r in s.scalars(select(TokenRow).order_by(TokenRow.id))
            ]

    # -------------------------------------------------------------------------------- events

    def log(self, token: str, action: str, target: str, outcome: str, detail: str = "") -> None:
        with self._write() as s:
            s.add(
                EventRow(
                    utc=utc_now(),
                    token=token[:64],
                    action=action,
                    target=target[:512],
                    outcome=outcome,
                    detail=detail[:4000],
                )
            )

    def events(self, limit: int = 100) -> list[Event]:
        with self._read() as s:
            rows = s.scalars(select(EventRow).order_by(EventRow.id.desc()).limit(limit))
            return [
                Event(r.id, r.utc, r.token, r.action, r.target, r.outcome, r.detail) for r in rows
            ]

    # ------------------------------------------------------------------------------- studies

    def report_progress(self, p: Progress, by: str) -> None:
        with self._write() as s:
            row = s.scalar(select(StudyRow).where(StudyRow.name == p.name))
            values = dict(
                counts=json.dumps(p.counts),
                running=p.running,
                eta_s=p.eta_s,
                failures=json.dumps(p.failures),
                updated_utc=utc_now(),
                pushed_by=by,
            )
            if row is None:
                s.add(StudyRow(name=p.name, **values))
            else:
                for k, v in values.items():
                    setattr(row, k, v)
            s.add(
                EventRow(
                    utc=utc_now(),
                    token=by,
                    action="progress",
                    target=p.name,
                    outcome="stored",
                    detail=json.dumps(p.counts),
                )
            )

    def progress(self, name: str | None = None) -> list[Progress]:
        q = select(StudyRow).order_by(StudyRow.id)
        if name is not None:
            q = q.where(StudyRow.name == name)
        with self._read() as s:
            return [
                Progress(
                    r.name,
                    json.loads(r.counts),
                    r.running,
                    r.eta_s,
                    json.loads(r.failures),
                    r.updated_utc,
                    r.pushed_by,
                )
                for r in s.scalars(q)
            ]

    def add_submission(self, study: str, by: str, runner: str, study_yaml: str) -> int:
        with self._write() as s:
            row = SubmissionRow(
                study=study,
                submitted_utc=utc_now(),
                submitted_by=by,
                runner=runner,
                state="queued",
                study_yaml=study_yaml,
            )
            s.add(row)
            s.add(
                EventRow(
                    utc=utc_now(),
                    token=by,
                    action="submit",
                    target=study,
                    outcome="queued",
                    detail=f"runner {runner}",
                )
            )
            s.flush()
            return int(row.id)

    def update_submission(
        self, sid: int, state: str, job_id: str | None = None, error: str | None = None
    ) -> None:
        with self._write() as s:
            row = s.get(SubmissionRow, sid)
            if row is None:
                return
            row.state = state
            if job_id is not None:
                row.job_id = job_id
            if error is not None:
                row.error = error[:4000]

    def submissions(self) -> list[Submission]:
        with self._read() as s:
            return [
                Submission(
                    r.id,
                    r.study,
                    r.submitted_utc,
                    r.submitted_by,
                    r.runner,
                    r.job_id,
                    r.state,
                    r.error,
                )
                for r in s.scalars(select(SubmissionRow).order_by(SubmissionRow.id))
            ]

    def check(self) -> list[str]:
        """What is wrong with the store, if anything (SQLite: its integrity check; both: no
        identity stored twice)."""
        problems = []
        with self._read() as s:
            if self.sqlite:
                res = [r[0] for r in s.execute(_text("PRAGMA integrity_check"))]
                if res != ["ok"]:
                    problems += [str(r) for r in res]
            dup = s.execute(
                select(RecordRow.key, func.count()).group_by(RecordRow.key).having(func.count() > 1)
            ).all()
            problems += [f"identity {k} stored {n} times" for k, n in dup]
        return problems


_LISTED = (
    RecordRow.id,
    RecordRow.key,
    RecordRow.run_id,
    RecordRow.machine,
    RecordRow.model,
    RecordRow.method,
    RecordRow.identity_hash,
    RecordRow.schema_version,
    RecordRow.updated_utc,
    RecordRow.pushed_utc,
    RecordRow.pushed_by,
    RecordRow.study,
    RecordRow.content_sha256,
    RecordRow.size,
)


def _stored(r: Any) -> StoredRecord:
    return StoredRecord(
        key=r.key,
        run_id=r.run_id,
        machine=r.machine,
        model=r.model,
        method=r.method,
        identity_hash=r.identity_hash,
        schema_version=r.schema_version,
        updated_utc=r.updated_utc,
        pushed_utc=r.pushed_utc,
        pushed_by=r.pushed_by,
        study=r.study,
        content_sha256=r.content_sha256,
        size=r.size,
    )


def _text(sql: str) -> Any:
    from sqlalchemy import text

    return text(sql)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
    cur.execute("PRAGMA synchronous=FULL")  # a committed push survives the process and the OS
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
