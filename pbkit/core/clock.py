"""Timestamps as records and files name them: UTC, to the second, ISO 8601 with a ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    """Now, as ``2026-12-04T21:18:57Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
