"""Tasks by name: what a model is for decides how it is trained, evaluated, calibrated, protected
from pruning and compared after export (:class:`~pbkit.tasks.base.Task`). A model's registry
entry names its task; a new task is one module here and one line in ``TASKS``."""

from __future__ import annotations

from pbkit.core.errors import choices_error
from pbkit.tasks.base import Task
from pbkit.tasks.classify import Classify
from pbkit.tasks.detect import Detect
from pbkit.tasks.segment import Segment

TASKS: dict[str, Task] = {t.name: t for t in (Classify(), Detect(), Segment())}


def get(name: str) -> Task:
    if name not in TASKS:
        raise choices_error("task", name, list(TASKS))
    return TASKS[name]


__all__ = ["TASKS", "Task", "get"]
