"""metav1.Condition bookkeeping: one entry per type, lastTransitionTime moves only when status changes; and the
table of which conditions each outcome sets.

A decision names an outcome by its reason (`TABLE`'s keys); `apply` writes that row's conditions. Messages
are templates filled from the decision: `{message}` (the status message), `{job}` (the Job's name) and
whatever else the decision supplies (`{gates}`: how many gates were checked, `{failures}`: the failed ones)."""

from __future__ import annotations

import datetime as dt
from typing import Any

Row = dict[str, tuple[bool | None, str, str]]  # condition type -> (status, reason, message template)

MESSAGE = "{message}"


def stuck(reason: str, *types: str, message: str = MESSAGE) -> Row:
    """The outcome `reason` blocks progress: Stalled is True, the other types are False, all with its message."""
    return {t: (t == "Stalled", reason, message) for t in types}


ACCEPTED: Row = {"Accepted": (True, "Valid", "spec accepted")}
PROGRESSING: Row = {"Ready": (False, "Running", "optimization in progress"), "Stalled": (False, "Progressing", "")}
FINISHED: Row = ACCEPTED | {"JobRunning": (False, "JobFinished", "Job {job} finished")}
MEASURED: Row = FINISHED | {"Evaluated": (True, "Measured", "baseline and result measured")}
GATES_PASSED: Row = MEASURED | {"GatesPassed": (True, "AllGatesPassed", "{gates} gate(s) passed"),
                                "Stalled": (False, "Progressing", "")}

# why a Job's pod waits (pod_trouble): the scheduler's and kubelet's own reasons
WAITING_REASONS = ("Unschedulable", "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                   "ImageInspectError", "CreateContainerConfigError", "CreateContainerError", "RunContainerError")

TABLE: dict[str, Row] = {
    # the spec is refused before any Job exists
    "InvalidSpec": stuck("InvalidSpec", "Accepted", "Ready", "Stalled"),
    "RegistryNotShared": stuck("RegistryNotShared", "Accepted", "Ready", "Stalled"),
    # the tenant policy forbids what the spec asks for (policy.py)
    "PolicyDenied": stuck("PolicyDenied", "Accepted", "Ready", "Stalled"),
    # the Secret the policy must check does not exist yet: no Job until it does
    "SecretNotFound": ACCEPTED | stuck("SecretNotFound", "JobRunning", "Ready", "Stalled"),
    # the Job is on its way
    "JobCreated": ACCEPTED | PROGRESSING | {"JobRunning": (False, "JobPending", "Job {job} created")},
    "PodPending": ACCEPTED | PROGRESSING | {"JobRunning": (False, "PodPending", "Job {job}: waiting for a pod")},
    "PodRunning": ACCEPTED | PROGRESSING | {"JobRunning": (True, "PodRunning", "Job {job}: running")},
    # the node cannot start the Job's pod, or killed an attempt (pod_trouble.REASONS): the Job may still retry
    **{reason: ACCEPTED | stuck(reason, "JobRunning", "Ready", "Stalled") for reason in WAITING_REASONS},
    # an attempt was killed at its memory limit: while the Job retries, and when it has failed for it
    "OOMKilled": ACCEPTED | stuck("OOMKilled", "JobRunning", "Evaluated", "Ready", "Stalled"),
    # the Job failed: nothing was measured
    "DeadlineExceeded": FINISHED | stuck("DeadlineExceeded", "Evaluated", "Ready", "Stalled"),
    "InvalidInput": FINISHED | stuck("InvalidInput", "Evaluated", "Ready", "Stalled"),
    "RetriesExhausted": FINISHED | stuck("RetriesExhausted", "Evaluated", "Ready", "Stalled"),
    "SummaryInvalid": FINISHED | stuck("SummaryInvalid", "Evaluated", "Ready", "Stalled"),
    # measured, then gated
    "GatesFailed": MEASURED | stuck("GatesFailed", "GatesPassed", "Ready", "Stalled", message="{failures}")
    | {"Promoted": (False, "GatesFailed", "not promoted: gates failed")},
    "NotConfigured": GATES_PASSED | {"Promoted": (False, "NotConfigured", "no promotion configured"),
                                     "Ready": (True, "Optimized", "gates passed")},
    "AwaitingApproval": GATES_PASSED | {"Promoted": (False, "AwaitingApproval", MESSAGE),
                                        "Ready": (False, "AwaitingApproval", MESSAGE)},
    "PromotionFailed": GATES_PASSED | {"Promoted": (False, "PromotionFailed", MESSAGE),
                                       "Ready": (False, "PromotionFailed", MESSAGE)},
    "Promoted": GATES_PASSED | {"Promoted": (True, "Promoted", MESSAGE), "Ready": (True, "Promoted", MESSAGE)},
}


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict[str, Any]], type_: str, status: bool | None, reason: str, message: str,
                  generation: int, at: str | None = None) -> list[dict[str, Any]]:
    """A copy of `conditions` with `type_` set; its lastTransitionTime becomes `at` (default: now) only when its
    status changes (or it is new)."""
    value = "Unknown" if status is None else ("True" if status else "False")
    out = [dict(c) for c in conditions]
    for c in out:
        if c["type"] == type_:
            if c["status"] != value:
                c["lastTransitionTime"] = at or now()
            c.update(status=value, reason=reason, message=message[:1024], observedGeneration=generation)
            return out
    out.append({"type": type_, "status": value, "reason": reason, "message": message[:1024],
                "lastTransitionTime": at or now(), "observedGeneration": generation})
    return out


def apply(conditions: list[dict[str, Any]], outcome: str, generation: int, at: str | None = None,
          **values: Any) -> list[dict[str, Any]]:
    """`conditions` with the table's row for `outcome` applied, its messages filled from `values`."""
    for type_, (status, reason, template) in TABLE[outcome].items():
        conditions = set_condition(conditions, type_, status, reason, template.format(**values), generation, at)
    return conditions


def get(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c["type"] == type_), None)
