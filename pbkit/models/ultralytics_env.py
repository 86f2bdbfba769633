"""ultralytics inside pbkit: the one scope in which it is imported and used
(:func:`ultralytics_offline`: no network, no installs, no font downloads, a quiet logger), and its
module settings registered with :func:`pbkit.core.runtime.guard`, so that every isolated scope puts
them back (a run leaves ultralytics as it found it)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pbkit.core.fileio import cache_dir
from pbkit.core.runtime import Guard, guard, isolated, set_cv2_threads

# ultralytics modules whose import-time flags would let it install packages or go online
_ULTRALYTICS_FLAGS = ("ultralytics.utils", "ultralytics.utils.checks", "ultralytics.utils.events")
_ULTRALYTICS_FONT = ("ultralytics.utils.checks", "ultralytics.data.utils")


def state() -> dict[tuple[str, str], Any]:
    """Module attributes pbkit may change in ultralytics, for the modules already imported."""
    found: dict[tuple[str, str], Any] = {}
    for name in _ULTRALYTICS_FLAGS:
        mod = sys.modules.get(name)
        for flag in ("AUTOINSTALL", "ONLINE"):
            if mod is not None and hasattr(mod, flag):
                found[(name, flag)] = getattr(mod, flag)
    for name in _ULTRALYTICS_FONT:
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "check_font"):
            found[(name, "check_font")] = mod.check_font
    return found


def set_state(saved: dict[tuple[str, str], Any]) -> None:
    """Those attributes back as ``saved`` holds them."""
    for (name, attr), value in saved.items():
        mod = sys.modules.get(name)
        if mod is not None:
            setattr(mod, attr, value)


guard(Guard("ultralytics", state, set_state))


def _local_font(font: str = "Arial.ttf") -> Path | None:
    """ultralytics' font look-up without its download: a matching font matplotlib knows, or None."""
    from matplotlib import font_manager

    name = Path(font).name
    for f in font_manager.fontManager.ttflist:
        if name in f.fname and os.path.exists(f.fname):
            return Path(f.fname)
    return None


@contextlib.contextmanager
def ultralytics_offline() -> Iterator[None]:
    """The scope in which pbkit imports and uses ultralytics: ``YOLO_OFFLINE=1``,
    ``YOLO_AUTOINSTALL=false``, its module flags off, fonts looked up locally, its logger quiet.
    Everything is put back on exit."""
    import logging

    with isolated():
        import cv2  # ultralytics sets its thread count on import: the count before it is put back

        cv2_threads = cv2.getNumThreads()
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_AUTOINSTALL"] = "false"
        os.environ.setdefault("YOLO_VERBOSE", "false")
        os.environ.setdefault(
            "YOLO_CONFIG_DIR",
            str(cache_dir("ultralytics")),
        )
        import ultralytics.data.utils  # noqa: F401  (imported under the offline environment)
        import ultralytics.utils.checks  # noqa: F401
        import ultralytics.utils.events  # noqa: F401

        before = state()  # flags as ultralytics set them (isolated() restores them too)
        set_state({k: _local_font if k[1] == "check_font" else False for k in before})
        logger = logging.getLogger("ultralytics")
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            logger.setLevel(level)
            set_state(before)
            set_cv2_threads(cv2_threads)
