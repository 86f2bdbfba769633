"""Memory and time budgets for work that may never end: a watchdog thread samples the process's
resident memory and the elapsed time; past a budget it interrupts the guarded thread (an
exception raised at its next Python bytecode) and the guard turns that into one line that says
what was stopped, where, and why. Memory the allocator holds freed (glibc keeps what a process
frees in its heap) is handed back before the budget counts it. Work that runs away inside Python
(torch-pruning's dependency graph recursing on a structure it cannot follow) is stopped long
before the machine runs out of memory; one huge allocation inside a C call is interrupted only
when that call returns."""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

from pbkit.core.errors import PbkitError

GIB = 2**30
TRIM_EVERY_S = 0.5  # the freed memory handed back at most this often (a trim locks the allocator)


class _Stop(BaseException):
    """Raised asynchronously in the guarded thread (a BaseException: no ``except Exception`` in the
    guarded code can swallow it)."""


def total_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def default_memory_gib() -> float:
    """75% of this machine's memory: what a run may use before it is stopped."""
    return round(0.75 * total_memory_bytes() / GIB, 1)


@dataclass
class Watch:
    """What the guard saw: the peak resident memory, the warnings raised meanwhile, and why it
    stopped the work (None when it did not)."""

    peak_bytes: int = 0
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)


@contextlib.contextmanager
def guarded(
    what: str,
    max_memory_gib: float | None,
    max_seconds: float | None,
    hint: str = "",
    poll_s: float = 0.02,
    keys: tuple[str, str] = ("the memory budget", "the time budget"),
) -> Iterator[Watch]:
    """Run the block under a memory budget (resident memory of the whole process, GiB) and a time
    budget (seconds); either may be None. Past one: ``PbkitError`` with ``what``, the budget, the
    peak, the warnings seen (their cause) and ``hint``; ``keys`` name the settings that set the
    two budgets, for the message (the caller's: core knows no setting)."""
    import psutil

    proc = psutil.Process()
    watch = Watch(peak_bytes=proc.memory_info().rss)
    limit = None if max_memory_gib is None else max_memory_gib * GIB
    target = threading.get_ident()
    done = threading.Event()
    t0 = time.monotonic()
    trimmed = -TRIM_EVERY_S

    def sample() -> None:
        nonlocal trimmed
        while not done.wait(poll_s):
            rss = proc.memory_info().rss
            watch.peak_bytes = max(watch.peak_bytes, rss)
            elapsed = time.monotonic() - t0
            # memory freed but kept by the allocator is not over budget (just after a trim, memory
            # over it is)
            if limit is not None and rss > limit and elapsed - trimmed >= TRIM_EVERY_S:
                trimmed = elapsed
                _trim()
                rss = proc.memory_info().rss
            if limit is not None and rss > limit:
                watch.reason = (
                    f"its memory reached {rss / GIB:.1f} GiB after {elapsed:.0f} s, over the budget"
                    f" of {max_memory_gib:g} GiB ({keys[0]})"
                )
            elif max_seconds is not None and elapsed > max_seconds:
                watch.reason = f"it ran past the time budget of {max_seconds:g} s ({keys[1]})"
            if watch.reason is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(target), ctypes.py_object(_Stop)
                )
                return

    sampler = threading.Thread(target=sample, name="pbkit-budget", daemon=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # each warning once: its text may name the cause
        sampler.start()
        try:
            yield watch
        except _Stop:
            pass
        finally:
            _settle(done, sampler, target)
    watch.warnings = list(dict.fromkeys(str(w.message) for w in seen))
    for w in seen:  # the others' warnings, as they would have been shown
        if "torch_pruning" not in w.filename:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if watch.reason is not None:
        cause = (
            f"; it warned: {'; '.join(repr(_first(w)) for w in watch.warnings[-2:])}"
            if watch.warnings
            else ""
        )
        raise OverBudget(f"{what}: stopped: {watch.reason}{cause}" + (f"; {hint}" if hint else ""))


class OverBudget(PbkitError):
    """Work stopped past its memory or time budget (one line)."""


def resident_gib() -> float:
    """This process's resident memory, GiB."""
    import psutil

    return float(psutil.Process().memory_info().rss / GIB)


def release_memory() -> None:
    """Hand freed memory back to the system (after work stopped past its budget, before more)."""
    import gc

    gc.collect()
    _trim()


def _trim() -> None:
    """Hand the memory the C allocator keeps freed back to the system (glibc; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _first(text: str, width: int = 100) -> str:
    """The first line of a warning's text, cut at ``width`` (as :func:`first_line` cuts errors)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1].rstrip() + "…"


def _settle(done: threading.Event, sampler: threading.Thread, target: int) -> None:
    """Stop the sampler and clear a stop that arrived as the block ended, so that it never fires
    later in other code (it may land in this very function: then do it again)."""
    while True:
        try:
            done.set()
            sampler.join()
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), None)
            return
        except _Stop:
            continue
