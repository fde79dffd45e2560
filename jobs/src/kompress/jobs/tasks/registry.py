"""The registered tasks. The built-in tasks are listed once below (one entry per module); a plugin (or a
test) registers its own with `register`. The evaluator and the gates dispatch on the task got from here."""

from __future__ import annotations

from kompress.jobs.plugins import Registry
from kompress.jobs.tasks import classification, embedding, generic, text_generation
from kompress.jobs.tasks.base import Task

_TASKS: Registry[Task] = Registry("task", "model.task", (embedding.TASK, classification.TASK, generic.TASK,
                                                        text_generation.TASK))
register, unregister, names, get, all_tasks = (_TASKS.register, _TASKS.unregister, _TASKS.names, _TASKS.get,
                                               _TASKS.all)
