"""generic: raw outputs, compared by cosine similarity (and top-1 agreement where they have columns)."""

from __future__ import annotations

from kompress.jobs.tasks.base import Task


class Generic(Task):
    name = "generic"
    summary = "raw outputs compared by cosine similarity"


TASK = Generic()
