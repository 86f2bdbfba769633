"""An interrupt a library swallows (torch-pruning's graph trace retries a forward under a bare
``except:``) is raised again at the next step of long work, and nothing outlives the command."""

from __future__ import annotations

import os
import signal

import pytest

from pbkit.core import signals
from pbkit.core.console import Steps


@pytest.mark.parametrize(
    ("sig", "kind"), [(signal.SIGTERM, signals.Terminated), (signal.SIGINT, KeyboardInterrupt)]
)
def test_a_swallowed_interrupt_is_raised_at_the_next_step(
    sig: signal.Signals, kind: type[KeyboardInterrupt]
) -> None:
    before = signal.getsignal(sig)
    with signals.handled():
        try:
            os.kill(os.getpid(), sig)
        except:  # noqa: E722  (what the library does)
            pass
        with pytest.raises(kind):
            Steps("work", 2, quiet=True).update(1)
    assert signal.getsignal(sig) is before  # the handler is the command's only
    Steps("work", 2, quiet=True).update(1)  # and the pending interrupt too
