"""The registered tasks. The built-in tasks are listed in BUILTIN (one entry per module); a plugin (or a
test) registers its own with `register`. The evaluator and the gates dispatch on the task got from here."""

from __future__ import annotations

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.tasks import classification, embedding, generic
from kompress.jobs.tasks.base import Task

DEFAULT = "generic"
BUILTIN: tuple[Task, ...] = (embedding.TASK, classification.TASK, generic.TASK)
_REGISTRY: dict[str, Task] = {t.name: t for t in BUILTIN}


def register(task: Task) -> Task:
    _REGISTRY[task.name] = task
    return task


def unregister(name: str) -> None:
    if name in {t.name for t in BUILTIN}:
        raise ValueError(f"{name} is a built-in task")
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Task:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidInputError(f"unknown task {name!r}; registered tasks: {', '.join(_REGISTRY)}",
                                field="model.task") from None


def all_tasks() -> list[Task]:
    return list(_REGISTRY.values())
