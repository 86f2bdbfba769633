"""Atomic file writes and content hashes: nothing a run writes is ever left half-written, and no
write replaces what it should not.

Every file pbkit writes goes through :func:`atomic_write` (a temporary file beside the target,
renamed over it in one step), which also refuses:

- to replace anything but a regular file: a device, a FIFO, a socket, a folder or a symbolic link
  at the target is left alone (``-o /dev/full`` once replaced the system's ``/dev/full``);
- to write over a file the command is reading (:func:`reading`: a report's own records).

A new file gets the permissions the user's umask gives (``mkstemp`` would make it 0600, which a
host user could not read when a container wrote it); a file replaced keeps its permissions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pbkit.core.errors import PbkitError

# the files the current command reads (resolved), which no write may replace
_READING: ContextVar[frozenset[Path]] = ContextVar("pbkit_reading", default=frozenset())


def cache_dir(*parts: str) -> Path:
    """pbkit's cache (``$PBKIT_CACHE``, default ``~/.cache/pbkit``), or a folder in it: latency
    tables, the machine's drift, a study's work folders, ultralytics' settings."""
    return Path(os.environ.get("PBKIT_CACHE") or "~/.cache/pbkit").expanduser().joinpath(*parts)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def reading(paths: Iterable[str | os.PathLike[str]]) -> Iterator[None]:
    """While the block runs, :func:`atomic_write` refuses to replace any of ``paths`` (the inputs
    of the command: a report never overwrites the records it reports)."""
    resolved = frozenset(Path(p).expanduser().resolve() for p in paths)
    token = _READING.set(_READING.get() | resolved)
    try:
        yield
    finally:
        _READING.reset(token)


def umask() -> int:
    """This process's umask, read without changing it (Linux: /proc), else by setting it back."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_target(path: Path) -> None:
    """Refuse a target that is not a regular file or a new path, or that the command is reading."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = (
            "a symbolic link"
            if stat.S_ISLNK(st.st_mode)
            else "a folder"
            if stat.S_ISDIR(st.st_mode)
            else "a device, FIFO or socket"
        )
        raise PbkitError(
            f"refusing to write {str(path)!r}: it is {kind}, not a regular file; give a file path"
        )
    if path.resolve() in _READING.get():
        raise PbkitError(
            f"refusing to write {str(path)!r}: this command reads it; write the output elsewhere"
        )


def _mode_for(path: Path) -> int:
    """A replaced file's own permissions; a new one's from the umask."""
    with contextlib.suppress(FileNotFoundError):
        return stat.S_IMODE(os.stat(path).st_mode)
    return 0o666 & ~umask()


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result over ``path`` in one rename.

    A crash or Ctrl-C leaves either the old file or the new one, never a partial file; a target
    that is not a regular file, or that the command reads, is refused (:func:`check_target`).
    """
    path = Path(path)
    check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, _mode_for(path))
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        check_target(path)  # (again: something may have appeared there while it was written)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    def write(p: Path) -> None:
        p.write_text(text, encoding="utf-8")

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` if needed and prove it is writable, or raise a one-line PbkitError."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".pbkit-write-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PbkitError(f"output folder {str(path)!r} is not writable: {e.strerror or e}") from e
    return path
