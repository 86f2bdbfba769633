"""Data read from a file (a YAML configuration, a JSON record) checked to be plain before it is
used: no binary values, nothing that contains itself, no nesting past a limit. Past these a
validator, a deep copy or a serialiser fails with an error no user could act on."""

from __future__ import annotations

from typing import Any

from pbkit.core.errors import PbkitError


def plain(value: Any, where: str, max_depth: int) -> None:
    """Refuse bytes (YAML's ``!!binary``), a value that contains itself (a YAML anchor inside
    itself) and nesting deeper than ``max_depth``: one line naming ``where`` and the key."""
    _walk(value, where, max_depth, "", 0, frozenset())


def _walk(value: Any, where: str, limit: int, key: str, depth: int, seen: frozenset[int]) -> None:
    at = f" at {key}" if key else ""
    if isinstance(value, bytes | bytearray):
        raise PbkitError(f"{where}: binary data{at} is no setting; write it as text")
    if not isinstance(value, dict | list | tuple | set | frozenset):
        return
    if id(value) in seen:
        raise PbkitError(f"{where}: the value{at} contains itself (a YAML anchor inside itself)")
    if depth >= limit:
        raise PbkitError(f"{where}: the value{at} is nested deeper than {limit} levels")
    inner = seen | {id(value)}
    if isinstance(value, dict):
        for k, v in value.items():
            name = k if isinstance(k, str) and k.isprintable() else repr(k)
            _walk(v, where, limit, f"{key}.{name}" if key else name, depth + 1, inner)
    else:
        for i, v in enumerate(value):
            _walk(v, where, limit, f"{key}[{i}]", depth + 1, inner)
