"""A pushed record, checked before anything is stored: its size, that it is JSON (no NaN, nothing
nested past the record's depth), that its schema is one this pbkit reads, and that it validates
against the record schema (:func:`pbkit.core.record.validate`). What fails is refused with one
line and an HTTP status (413 too large, 422 not a record this service reads); nothing is stored.

A record's identity in the store is its run id, its identity hash and the machine that measured
it (the bench stage's machine): the same run measured on an H100 and on an L4 is two records, the
same record pushed twice is one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pbkit.core import record
from pbkit.core.errors import PbkitError, first_line
from pbkit.core.plain import plain
from pbkit.machine import envinfo
from pbkit.serve.store import Incoming

MAX_PUSH_BYTES = 8 << 20  # a record is tens of kilobytes; --max-record-mib changes it
MAX_TEXT = {"run_id": 256, "machine": 1024, "model": 1024, "method": 512}


class Refused(PbkitError):
    """A request the service will not act on: one line, and the HTTP status it is answered with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def identity_key(run_id: str, identity_hash: str | None, machine: str) -> str:
    return hashlib.sha256(
        json.dumps([run_id, identity_hash, machine], ensure_ascii=False).encode()
    ).hexdigest()


def incoming(raw: bytes, limit: int = MAX_PUSH_BYTES) -> Incoming:
    """``raw`` (a record file's bytes) checked and named, or :class:`Refused`."""
    if len(raw) > limit:
        raise Refused(
            413, f"the record is {len(raw)} bytes; this service takes records of at most {limit}"
        )
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise Refused(422, f"not a record: not valid JSON ({first_line(e, 200)})") from e
    if not isinstance(data, dict):
        raise Refused(422, "not a record: a record is a JSON object")
    try:
        plain(data, "the record", record.MAX_RECORD_DEPTH)
    except PbkitError as e:
        raise Refused(422, str(e)) from e
    version = data.get("schema_version")
    ours = record.SCHEMA_VERSION
    if not isinstance(version, str) or version.split(".")[0] != ours.split(".")[0]:
        raise Refused(
            422,
            f"the record has schema {version!r}; this service reads schema {ours} (and every"
            f" {ours.split('.')[0]}.x)",
        )
    if "\\u0000" in json.dumps(data):  # (a NUL in any string: PostgreSQL cannot keep it)
        raise Refused(422, "the record holds a NUL character; no record field does")
    try:
        rec = record.validate(data, "the record")
    except PbkitError as e:
        raise Refused(422, str(e)) from e
    machine = envinfo.machine(rec.stage_env("bench"))
    identity = rec.identity.hash if rec.identity is not None else None
    named = {
        "run_id": rec.run_id,
        "machine": machine,
        "model": rec.model.name,
        "method": rec.method.key,
    }
    for k, v in named.items():
        if len(v) > MAX_TEXT[k]:
            raise Refused(422, f"the record's {k} is {len(v)} characters; at most {MAX_TEXT[k]}")
    if not rec.run_id.strip():
        raise Refused(422, "the record's run_id is empty")
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return Incoming(
        key=identity_key(rec.run_id, identity, machine),
        run_id=rec.run_id,
        identity_hash=identity,
        machine=machine,
        model=rec.model.name,
        method=rec.method.key,
        schema_version=version,
        updated_utc=rec.updated_utc,
        content_sha256=hashlib.sha256(canonical.encode()).hexdigest(),
        body=text,
    )
