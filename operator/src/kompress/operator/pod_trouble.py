"""What a node did to the Job's pods, in the resource's terms: why a pod cannot start or was killed.

The Job controller only says "active" while a pod waits for an image that does not exist, for a node that
fits, or for a Secret nobody created: a user would see Pending forever. The pods' own status says why (the
scheduler's PodScheduled condition, the kubelet's container waiting and terminated reasons); this module turns
that into one reason (the kubelet's or scheduler's own word, so it can be searched for) and one message that
names the spec field to change. Pure functions of the observed objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kompress.jobs.spec.document import OptimizationSpec

# the kubelet's waiting reasons for an image it cannot get (pkg/kubelet/images/types.go)
IMAGE_REASONS = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "ImageInspectError")
# waiting reasons where the container cannot be created as specified (pkg/kubelet/container/sync_result.go)
CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
# every reason this module reports: conditions.TABLE has a row for each
REASONS = ("Unschedulable", *IMAGE_REASONS, *CONFIG_REASONS, "OOMKilled", "DeadlineExceeded")


@dataclass(frozen=True)
class Trouble:
    reason: str
    message: str


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list((pod.get("status") or {}).get("containerStatuses") or [])


def unschedulable(pod: dict[str, Any], spec: OptimizationSpec) -> Trouble | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" \
                and cond.get("reason") == "Unschedulable":
            res = spec.resources
            asked = f"cpu {res.cpu}, memory {res.memory}" + (f", nvidia.com/gpu {res.gpu}" if res.gpu else "")
            return Trouble("Unschedulable", f"no node can run the Job's pod ({asked}): {cond.get('message', '')}"
                           " — check spec.resources (gpu, cpu, memory, nodeSelector, tolerations)")
    return None


def waiting(pod: dict[str, Any], spec: OptimizationSpec) -> Trouble | None:
    for cs in _containers(pod):
        state = (cs.get("state") or {}).get("waiting") or {}
        reason, detail = state.get("reason", ""), state.get("message", "")
        if reason in IMAGE_REASONS:
            return Trouble(reason, f"the node cannot get image {cs.get('image', '?')!r}: {detail or reason} — set "
                           "spec.resources.image (or the chart's engineImage) to an image the node can pull")
        if reason in CONFIG_REASONS:
            hint = ""
            ref = spec.storage_secret_ref
            if ref and "secret" in detail.lower():
                hint = f" — spec.storageSecretRef names Secret {ref.name!r}: create it in the resource's namespace"
            return Trouble(reason, f"the node cannot start the engine container: {detail or reason}{hint}")
    return None


def oom_killed(pods: list[dict[str, Any]], spec: OptimizationSpec) -> Trouble | None:
    """A container of one of `pods` was killed at its memory limit (state or lastState)."""
    for pod in reversed(pods):
        for cs in _containers(pod):
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                if (state.get("terminated") or {}).get("reason") == "OOMKilled":
                    return Trouble("OOMKilled", f"the engine ran out of memory and was killed at its limit, "
                                   f"spec.resources.memory={spec.resources.memory}: raise spec.resources.memory")
    return None


def deadline(job: dict[str, Any], spec: OptimizationSpec) -> Trouble | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True" and cond.get("reason") == "DeadlineExceeded":
            return Trouble("DeadlineExceeded", f"the run took longer than spec.resources.timeoutSeconds="
                           f"{spec.resources.timeout_seconds}: the Job's activeDeadlineSeconds ended it")
    return None


def while_running(pods: list[dict[str, Any]], spec: OptimizationSpec) -> Trouble | None:
    """Why the newest pod is not running, or an earlier attempt's OOM kill (the Job retries it)."""
    newest = pods[-1] if pods else None
    if newest is not None:
        found = unschedulable(newest, spec) or waiting(newest, spec)
        if found:
            return found
    return oom_killed(pods, spec)


def when_failed(job: dict[str, Any], pods: list[dict[str, Any]], spec: OptimizationSpec) -> Trouble | None:
    """What ended a failed Job, when the node (not the engine) did: a deadline or an OOM kill."""
    return deadline(job, spec) or oom_killed(pods[-1:], spec)
