"""An exclusive lock on a file path, held by one process at a time (``flock``).

Two processes started on the same run (or training the same base) must not write it at once: the
second waits, and says which process holds the lock. The lock file names its holder (pid, host,
since when); it is removed on release, and a lock left by a killed process is free again (the
kernel drops a dead process's locks).

A lock file another user made (a run started in a container as another uid) is locked through a
read-only descriptor (``flock`` needs no write access); a folder this user cannot write is one line
that says so, never an internal error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pbkit.core.clock import utc_now
from pbkit.core.errors import PbkitError


def holder(path: str | os.PathLike[str]) -> str:
    """Who holds the lock at ``path``, in words (best effort)."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
        return f"process {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError):
        return "another process"


def _denied(path: Path, e: OSError) -> PbkitError:
    """A lock that cannot be taken, in one line (permissions: whose files these are, and how a
    container is run as their owner)."""
    why = f"could not lock {str(path)!r}: {e.strerror or e}"
    if isinstance(e, PermissionError):
        why += (
            "; it or its folder belongs to another user (a container run as another uid: run it"
            ' as the owner, docker run --user "$(id -u):$(id -g)")'
        )
    return PbkitError(why)


def _open(path: Path) -> int:
    """A descriptor to ``flock``: read-write (created with the umask's permissions), or read-only
    where the file exists but belongs to another user; a one-line error where neither works."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError as e:
        try:
            return os.open(path, os.O_RDONLY)
        except OSError:
            raise _denied(path, e) from e
    except OSError as e:
        raise _denied(path, e) from e


@contextlib.contextmanager
def exclusive(
    path: str | os.PathLike[str],
    on_wait: Callable[[str], None] | None = None,
    timeout_s: float | None = None,
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block; wait for it if another process holds it
    (``on_wait`` is told who, once). ``timeout_s`` turns a long wait into a one-line error."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _denied(path, e) from e
    told = False
    t0 = time.monotonic()
    while True:
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise PbkitError(f"could not lock {str(path)!r}: {e.strerror or e}") from e
            if not told and on_wait is not None:
                on_wait(holder(path))
                told = True
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise PbkitError(
                    f"{str(path)!r} is locked by {holder(path)}; gave up after {timeout_s:g} s"
                ) from e
            time.sleep(0.2)
            continue
        try:  # the file may have been removed by the previous holder between open and flock
            same = os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        since = utc_now()
        with contextlib.suppress(OSError):  # (a read-only descriptor: the holder stays unnamed)
            os.ftruncate(fd, 0)
            os.write(
                fd,
                json.dumps(
                    {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
                ).encode(),
            )
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding it: a waiter then retries on a fresh file
        os.close(fd)
