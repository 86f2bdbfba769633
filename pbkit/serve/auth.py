"""Tokens and roles. A token is a random secret shown once when it is made; the store keeps only
its sha256. Roles: ``read`` (the page and ``GET /api/...``), ``push`` (records and a study's
progress) and ``submit`` (studies to run); ``push`` and ``submit`` may read too. A request without
a token, or with one the store does not know, is 401; a known token without the role is 403."""

from __future__ import annotations

import hashlib
import re
import secrets

from pbkit.core.errors import PbkitError, choices_error

ROLES = ("read", "push", "submit")
# what each role may do
GRANTS: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "push": frozenset({"read", "push"}),
    "submit": frozenset({"read", "submit"}),
}
PREFIX = "pbk_"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$")


def new_secret() -> str:
    """A new token: 256 random bits, URL-safe."""
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """What the store keeps of a token (and looks it up by)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_role(role: str) -> str:
    if role not in ROLES:
        raise choices_error("role", role, ROLES)
    return role


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise PbkitError(
            f"token name {name!r}: 1 to 64 letters, digits and . _ @ : - (a machine or a person)"
        )
    return name


def allows(role: str, action: str) -> bool:
    return action in GRANTS.get(role, frozenset())
