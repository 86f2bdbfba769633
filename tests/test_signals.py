"""An interrupt a library swallows (torch-pruning's graph trace retries a forward under a bare
``except:``) is raised again at the next step of long work, and nothing outlives the command.
Each case runs in a process of its own: signal handlers belong to a process's main thread (a
pytest-xdist worker runs tests elsewhere)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASE = """
import os, signal
from pbkit.core import signals
from pbkit.core.console import Steps

sig, kind = signal.{sig}, {kind}
before = signal.getsignal(sig)
with signals.handled():
    try:
        os.kill(os.getpid(), sig)
    except:  # what the library does
        pass
    try:
        Steps("work", 2, quiet=True).update(1)
        print("not raised")
    except kind:
        print("raised")
print("restored" if signal.getsignal(sig) is before else "kept")
Steps("work", 2, quiet=True).update(1)  # the pending interrupt does not outlive the command
print("done")
"""


@pytest.mark.parametrize(
    ("sig", "kind"), [("SIGTERM", "signals.Terminated"), ("SIGINT", "KeyboardInterrupt")]
)
def test_a_swallowed_interrupt_is_raised_at_the_next_step(sig: str, kind: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CASE.format(sig=sig, kind=kind)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["raised", "restored", "done"]
