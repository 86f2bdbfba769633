"""SIGTERM and Ctrl-C while a command runs: raised where the process is, as KeyboardInterrupt, so
every write is done or undone (atomic writes remove their temporary files) and the lock is
released; remembered too, because a library may swallow the exception (torch-pruning's graph
trace retries a forward under a bare ``except:``): long work calls :func:`check` at each step
(:class:`pbkit.core.console.Steps` does), which raises it again."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, ended as Ctrl-C is (exit 143 instead of 130)."""


_pending: type[KeyboardInterrupt] | None = None


def _raise(kind: type[KeyboardInterrupt]) -> None:
    global _pending
    _pending = kind
    raise kind()


def _on_term(signum: int, frame: FrameType | None) -> None:
    _raise(Terminated)


def _on_int(signum: int, frame: FrameType | None) -> None:
    _raise(KeyboardInterrupt)


def check() -> None:
    """Raise again an interrupt that arrived and was swallowed on its way up."""
    if _pending is not None:
        raise _pending()


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGTERM and SIGINT handled as above while the block runs (main thread only; the previous
    handlers, and no pending interrupt, after)."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _on_term), signal.signal(signal.SIGINT, _on_int)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])
        _pending = None
