"""metav1.Condition bookkeeping: one entry per type, lastTransitionTime moves only when status changes."""

from __future__ import annotations

import datetime as dt
from typing import Any

TYPES = ("Accepted", "JobRunning", "Evaluated", "GatesPassed", "Promoted", "Ready", "Stalled")


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict[str, Any]], type_: str, status: bool | None, reason: str, message: str,
                  generation: int) -> list[dict[str, Any]]:
    value = "Unknown" if status is None else ("True" if status else "False")
    out = [dict(c) for c in conditions]
    for c in out:
        if c["type"] == type_:
            if c["status"] != value:
                c["lastTransitionTime"] = now()
            c.update(status=value, reason=reason, message=message[:1024], observedGeneration=generation)
            return out
    out.append({"type": type_, "status": value, "reason": reason, "message": message[:1024],
                "lastTransitionTime": now(), "observedGeneration": generation})
    return out


def get(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c["type"] == type_), None)
