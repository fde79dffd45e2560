"""generic: raw outputs, compared by cosine similarity (and top-1 agreement where they have columns)."""

from __future__ import annotations

from kompress.jobs.tasks.base import QUALITY_GATES, Task


class Generic(Task):
    name = "generic"
    summary = "raw outputs compared by cosine similarity"
    gates = QUALITY_GATES | {"minTop1Agreement"}


TASK = Generic()
