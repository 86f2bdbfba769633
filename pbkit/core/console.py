"""Progress and messages on stderr (stdout stays clean for --json and tables)."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console

from pbkit.core import signals

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=False, width=200 if not sys.stdout.isatty() else None)


class Steps:
    """A progress line for long work: live bar on a terminal, a line every few seconds in logs."""

    def __init__(self, label: str, total: int | None, quiet: bool = False) -> None:
        self.label, self.total, self.quiet = label, total, quiet
        self._progress: Any = None
        self._task: Any = None
        self._last = 0.0
        self._t0 = time.perf_counter()
        if quiet:
            return
        if err.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=err,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(label, total=total, info="")
        else:
            err.print(f"{label} ...")

    def update(self, done: int, info: str = "") -> None:
        signals.check()  # (an interrupt a library swallowed during this step)
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=done, info=info)
        elif time.perf_counter() - self._last > 2.0:
            self._last = time.perf_counter()
            of = f"/{self.total}" if self.total else ""
            err.print(f"  {self.label}: {done}{of} {info}")

    def close(self, info: str = "") -> None:
        signals.check()
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.update(self._task, info=info)
            self._progress.stop()
        else:
            err.print(f"  {self.label}: done in {time.perf_counter() - self._t0:.1f}s {info}")


def note(msg: str, quiet: bool = False) -> None:
    if not quiet:
        err.print(msg)


class Board:
    """One live status line for a grid of jobs (a terminal redraws it; logs get it every few
    seconds), with finished jobs' own lines printed above it."""

    def __init__(self, label: str, quiet: bool = False) -> None:
        self.label, self.quiet = label, quiet
        self._live: Any = None
        self._last = 0.0
        if not quiet and err.is_terminal:
            from rich.live import Live

            self._live = Live("", console=err, transient=True, refresh_per_second=4)
            self._live.start()

    def status(self, text: str) -> None:
        if self.quiet:
            return
        if self._live is not None:
            self._live.update(f"{self.label}: {text}")
        elif time.perf_counter() - self._last > 5.0:
            self._last = time.perf_counter()
            err.print(f"{self.label}: {text}")

    def line(self, text: str) -> None:
        if not self.quiet:
            err.print(text)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
