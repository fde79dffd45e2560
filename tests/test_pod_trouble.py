"""What a node does to the Job's pods, surfaced on the resource: pure decisions from pod and Job objects shaped
as the scheduler and kubelet write them (the node tier, tests/test_node.py, sees the same on a real node)."""

from __future__ import annotations

from typing import Any

import pytest
from test_operator_reconcile import resource

from kompress.operator import conditions, pod_trouble
from kompress.operator.decide import Event, Observed, accept, decide, wanted_status
from kompress.operator.settings import Settings

RUNNING_JOB: dict[str, Any] = {"status": {"active": 1}}


def observe(pods: list[dict[str, Any]], job: dict[str, Any] | None = None, status: dict[str, Any] | None = None,
            **spec_changes: Any) -> Observed:
    body = resource(**spec_changes)
    if status:
        body["status"] = status
    spec, problem = accept(body["spec"])
    return Observed(body, Settings(), "2026-01-01T00:00:00Z", spec, problem, job or RUNNING_JOB, pods)


def waiting(reason: str, message: str) -> dict[str, Any]:
    return {"status": {"phase": "Pending", "containerStatuses": [
        {"name": "engine", "image": "example.invalid/kompress:nope", "state": {"waiting": {
            "reason": reason, "message": message}}}]}}


def conds(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_every_reported_reason_has_conditions() -> None:
    assert set(pod_trouble.REASONS) <= set(conditions.TABLE)


def test_unschedulable_names_the_request_and_the_scheduler_message() -> None:
    pod = {"status": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]}}
    obs = observe([pod], resources={"cpu": "2", "memory": "4Gi", "gpu": 1})
    decision = decide(obs)
    assert decision.phase == "Pending" and decision.outcome == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in (decision.message or "") and "nvidia.com/gpu 1" in (decision.message or "")
    assert Event("Warning", "Unschedulable", decision.message or "") in decision.effects
    status = wanted_status(obs, decision)
    assert conds(status)["Stalled"] == ("True", "Unschedulable")
    assert conds(status)["JobRunning"] == ("False", "Unschedulable") and conds(status)["Ready"][0] == "False"
    # the same message again: no second Event
    again = decide(observe([pod], status=status, resources={"cpu": "2", "memory": "4Gi", "gpu": 1}))
    assert again.outcome == "Unschedulable" and not again.effects


@pytest.mark.parametrize("reason", ["ErrImageNeverPull", "ImagePullBackOff", "ErrImagePull"])
def test_an_image_the_node_cannot_get(reason: str) -> None:
    decision = decide(observe([waiting(reason, 'Container image "example.invalid/kompress:nope" is not present')]))
    assert decision.outcome == reason and "spec.resources.image" in (decision.message or "")
    assert "example.invalid/kompress:nope" in (decision.message or "")


def test_a_missing_secret_names_storage_secret_ref() -> None:
    decision = decide(observe([waiting("CreateContainerConfigError", 'secret "s3-credentials" not found')],
                              storageSecretRef={"name": "s3-credentials"}))
    assert decision.outcome == "CreateContainerConfigError"
    assert "spec.storageSecretRef" in (decision.message or "") and "'s3-credentials'" in (decision.message or "")


def test_an_oom_killed_attempt_names_the_memory_limit_while_the_job_retries_and_when_it_fails() -> None:
    killed = {"status": {"phase": "Failed", "containerStatuses": [{"name": "engine", "state": {"terminated": {
        "exitCode": 137, "reason": "OOMKilled"}}}]}}
    retry = {"status": {"phase": "Running", "containerStatuses": [{"name": "engine", "state": {"running": {}}}]}}
    during = decide(observe([killed, retry], resources={"cpu": "1", "memory": "96Mi"}))
    assert during.phase == "Running" and during.outcome == "OOMKilled"
    assert "spec.resources.memory=96Mi" in (during.message or "")
    job = {"status": {"failed": 3, "conditions": [{"type": "Failed", "status": "True",
                                                     "reason": "BackoffLimitExceeded"}]}}
    final = decide(observe([killed, killed, killed], job=job, resources={"cpu": "1", "memory": "96Mi"}))
    assert final.phase == "Failed" and final.outcome == "OOMKilled" and "raise spec.resources.memory" in (
        final.message or "")


def test_the_deadline_ends_the_run_with_its_own_reason() -> None:
    job = {"status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                                     "message": "Job was active longer than specified deadline"}]}}
    obs = observe([], job=job, resources={"cpu": "2", "memory": "4Gi", "timeoutSeconds": 30})
    decision = decide(obs)
    assert decision.phase == "Failed" and decision.outcome == "DeadlineExceeded"
    assert "spec.resources.timeoutSeconds=30" in (decision.message or "")
    assert conds(wanted_status(obs, decision))["Stalled"] == ("True", "DeadlineExceeded")


def test_a_plain_engine_failure_is_not_mistaken_for_the_node() -> None:
    failed = {"status": {"phase": "Failed", "containerStatuses": [{"name": "engine", "state": {"terminated": {
        "exitCode": 1, "reason": "Error", "message": "boom"}}}]}}
    job = {"status": {"failed": 3, "conditions": [{"type": "Failed", "status": "True",
                                                     "reason": "BackoffLimitExceeded"}]}}
    decision = decide(observe([failed], job=job))
    assert decision.outcome == "RetriesExhausted" and decision.message == "boom"


def test_the_job_carries_the_deadline() -> None:
    from kompress.operator.jobspec import build_job

    body = resource(resources={"cpu": "2", "memory": "4Gi", "timeoutSeconds": 600})
    spec, _ = accept(body["spec"])
    assert spec is not None
    assert build_job(body, spec, Settings())["spec"]["activeDeadlineSeconds"] == 600
