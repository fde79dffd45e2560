"""The operator's reconcile logic against kmock's Kubernetes emulator (real HTTP, no patched client):
Job creation and adoption, status and conditions through each phase, gates, failures, approval."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import kmock
import kopf
import pytest

from kompress.jobs.spec.document import OptimizationSpec
from kompress.operator import conditions
from kompress.operator.jobspec import job_name, run_key
from kompress.operator.kube import KubeClient
from kompress.operator.reconciler import Reconciler
from kompress.operator.settings import Settings

from conftest import example

MOPT = "kompress.dev/v1alpha1/modeloptimizations"
NS, NAME, UID = "team-a", "minilm-int8", "0f8e7d6c-1111-2222-3333-444455556666"


def resource(**spec_changes: Any) -> dict[str, Any]:
    doc = example("minilm-int8.yaml")
    doc["spec"]["promotion"]["registry"] = "s3://registry/serving"
    doc["spec"].update(spec_changes)
    doc["metadata"] = {"name": NAME, "namespace": NS, "uid": UID, "generation": 1}
    return doc


@pytest.fixture
async def api(kmock: kmock.KubernetesEmulator) -> AsyncIterator[KubeClient]:
    kmock.resources[MOPT] = {"kind": "ModelOptimization", "namespaced": True, "subresources": ["status"]}
    for res in ("batch/v1/jobs", "v1/pods", "v1/events"):
        kmock.resources[res] = {"namespaced": True}
    client = KubeClient(str(kmock.url))
    yield client
    await client.close()


@pytest.fixture(autouse=True)
def events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The Events the reconciler posts through kopf.event (outside a running operator, recorded here)."""
    posted: list[dict[str, Any]] = []

    def record(objs: Any, *, type: str, reason: str, message: str = "", **_: Any) -> None:
        meta = objs["metadata"]
        posted.append({"type": type, "reason": reason, "message": message, "involvedObject": {
            "apiVersion": objs["apiVersion"], "kind": objs["kind"], "name": meta["name"], "uid": meta["uid"]}})

    monkeypatch.setattr(kopf, "event", record)
    return posted


def reconciler(api: KubeClient) -> Reconciler:
    return Reconciler(api, Settings(engine_image="registry.example/kompress:test"))


def stored(kmock: kmock.KubernetesEmulator, res: str, name: str) -> dict[str, Any]:
    return dict(kmock.objects[res, NS, name])


def plain(value: Any) -> Any:
    """kmock's stored values as plain JSON-able data (it keeps mappings of its own)."""
    from collections.abc import Mapping

    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def the_job_name(obj: dict[str, Any]) -> str:
    spec = OptimizationSpec.model_validate(obj["spec"])
    return job_name(NAME, UID, run_key(spec))


def put_pod(kmock: kmock.KubernetesEmulator, job: str, phase: str, exit_code: int | None = None,
            message: str = "") -> None:
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        status["containerStatuses"] = [{"name": "engine", "state": {"terminated": {
            "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error", "message": message}}}]
    kmock.objects["v1/pods", NS, f"{job}-abcde"] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{job}-abcde", "namespace": NS, "labels": {"job-name": job},
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": status}


def finish_job(kmock: kmock.KubernetesEmulator, job: str, condition_type: str) -> None:
    kmock.objects["batch/v1/jobs", NS, job].patch({"status": {
        "conditions": [{"type": condition_type, "status": "True"}],
        "succeeded" if condition_type == "Complete" else "failed": 1}})


async def started(kmock: kmock.KubernetesEmulator, api: KubeClient, body: dict[str, Any]) -> tuple[Reconciler, str]:
    """Store the resource and reconcile once: its Job exists. Returns the reconciler and the Job's name."""
    kmock.objects[MOPT, NS, NAME] = body
    rec = reconciler(api)
    await rec.reconcile(NS, NAME)
    return rec, the_job_name(body)


def engine_exits(kmock: kmock.KubernetesEmulator, job: str, exit_code: int, message: str) -> None:
    """The Job's pod terminates with this exit code and termination message; the Job controller concludes."""
    put_pod(kmock, job, "Succeeded" if exit_code == 0 else "Failed", exit_code, message)
    finish_job(kmock, job, "Complete" if exit_code == 0 else "Failed")


def summary(speedup: float = 2.1, drop: float = 0.007) -> str:
    result = {"latencyP50Seconds": 0.009, "latencyP95Seconds": 0.012, "latencyP99Seconds": 0.013,
              "throughputPerSecond": 120.0, "sizeBytes": 22_800_000, "peakMemoryBytes": 46_000_000,
              "energyPerInferenceJoules": 0.18, "cosineSimilarity": 1 - drop, "speedup": speedup,
              "sizeReduction": 3.96, "accuracyDrop": drop, "energyMethod": "estimate-cpu-time"}
    baseline = {"latencyP50Seconds": 0.018, "sizeBytes": 90_400_000, "cosineSimilarity": 1.0}
    return json.dumps({"outcome": "succeeded", "baseline": baseline, "result": result,
                       "reportUri": "s3://registry/serving/.kompress-runs/x/report.json",
                       "modelUri": "s3://registry/serving/.kompress-runs/x/model.onnx"})


async def test_create_makes_one_owned_job_and_reports_pending(kmock: kmock.KubernetesEmulator, api: KubeClient,
                                                               events: list[dict[str, Any]]) -> None:
    kmock.objects[MOPT, NS, NAME] = resource()
    rec = reconciler(api)
    await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    jname = the_job_name(obj)
    job = stored(kmock, "batch/v1/jobs", jname)
    assert job["metadata"]["ownerReferences"][0] | {} == {
        "apiVersion": "kompress.dev/v1alpha1", "kind": "ModelOptimization", "name": NAME, "uid": UID,
        "controller": True, "blockOwnerDeletion": True}
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/kompress:test" and pod["restartPolicy"] == "Never"
    assert container["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert OptimizationSpec.model_validate(json.loads(env["KOMPRESS_SPEC"])) == OptimizationSpec.model_validate(
        obj["spec"])
    assert "--no-promote" in container["args"]
    args = container["args"]
    assert args[args.index("--name") + 1] == NAME and args[args.index("--namespace") + 1] == NS
    out = container["args"][container["args"].index("--output") + 1]
    assert out == f"s3://registry/serving/.kompress-runs/{NS}/{NAME}/{jname}/"
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2, 3]
    assert obj["status"]["phase"] == "Pending" and obj["status"]["jobName"] == jname
    assert condition(obj, "Accepted")["status"] == "True"
    assert condition(obj, "Ready")["status"] == "False"
    # again, and from a "restarted" operator: still exactly one Job
    await rec.reconcile(NS, NAME)
    await reconciler(api).reconcile(NS, NAME)
    assert len(kmock[kmock.method.POST, kmock.resource("batch/v1/jobs")]) == 1
    assert [e["reason"] for e in events] == ["JobCreated"]
    assert events[0]["involvedObject"] == {"apiVersion": "kompress.dev/v1alpha1", "kind": "ModelOptimization",
                                           "name": NAME, "uid": UID}


async def test_running_then_succeeded_without_promotion(kmock: kmock.KubernetesEmulator, api: KubeClient) -> None:
    body = resource()
    del body["spec"]["promotion"]
    rec, jname = await started(kmock, api, body)
    put_pod(kmock, jname, "Running")
    await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    assert obj["status"]["phase"] == "Running" and condition(obj, "JobRunning")["status"] == "True"
    engine_exits(kmock, jname, 0, summary())
    await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    st = obj["status"]
    assert st["phase"] == "Succeeded" and st["gates"] == {"passed": True, "failures": []}
    assert st["result"]["speedup"] == 2.1 and st["baseline"]["sizeBytes"] == 90_400_000
    assert condition(obj, "GatesPassed")["status"] == "True" and condition(obj, "Ready")["status"] == "True"
    assert condition(obj, "Promoted")["reason"] == "NotConfigured"
    assert st["observedGeneration"] == 1 and st["finishedAt"]


async def test_gates_failing_reject_and_a_gates_edit_reuses_the_job(kmock: kmock.KubernetesEmulator,
                                                                    api: KubeClient) -> None:
    body = resource()
    del body["spec"]["promotion"]
    rec, jname = await started(kmock, api, body)
    engine_exits(kmock, jname, 0, summary(speedup=1.2))
    await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    assert obj["status"]["phase"] == "Rejected"
    assert condition(obj, "GatesPassed")["status"] == "False" and condition(obj, "Stalled")["status"] == "True"
    assert "minSpeedup: measured 1.2 misses >= 1.5" in obj["status"]["gates"]["failures"][0]
    # the user relaxes the gate: same run, no new Job, re-evaluated
    kmock.objects[MOPT, NS, NAME].patch({"spec": {"gates": {"minSpeedup": 1.1}}, "metadata": {"generation": 2}})
    await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    assert obj["status"]["phase"] == "Succeeded" and obj["status"]["observedGeneration"] == 2
    assert len(kmock[kmock.method.POST, kmock.resource("batch/v1/jobs")]) == 1
    assert condition(obj, "GatesPassed")["observedGeneration"] == 2


async def test_nothing_measured_is_rejected_never_promoted(kmock: kmock.KubernetesEmulator,
                                                            api: KubeClient) -> None:
    """A search whose candidates all failed (or none applied) measured nothing: even with every gate off,
    there is nothing to pass and no model to promote."""
    body = resource()
    body["spec"].pop("techniques", None)
    body["spec"]["search"] = {"objective": "latency"}
    body["spec"]["gates"] = {"noRegression": False}
    rec, jname = await started(kmock, api, body)
    message = "no candidate produced a model to measure; nothing promoted (qat-int8: onnx2torch cannot convert)"
    engine_exits(kmock, jname, 3, json.dumps({"outcome": "rejected", "message": message,
                                              "reportUri": "s3://registry/serving/.kompress-runs/x/report.json"}))
    await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    assert obj["status"]["phase"] == "Rejected", obj["status"]
    assert obj["status"]["gates"]["failures"] == [message]
    assert condition(obj, "Promoted")["status"] == "False" and not obj["status"].get("promotedTo")


async def test_permanent_engine_failure_surfaces_its_message(kmock: kmock.KubernetesEmulator, api: KubeClient,
                                                             events: list[dict[str, Any]]) -> None:
    rec, jname = await started(kmock, api, resource())
    engine_says = json.dumps({"outcome": "failed", "message": "model.uri: s3://models/x.onnx does not exist"})
    engine_exits(kmock, jname, 2, engine_says)
    await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    assert obj["status"]["phase"] == "Failed"
    assert obj["status"]["message"] == "model.uri: s3://models/x.onnx does not exist"
    stalled = condition(obj, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "InvalidInput"
    assert [e["reason"] for e in events if e["type"] == "Warning"] == ["InvalidInput"]
    await rec.reconcile(NS, NAME)  # no repeated warning on a settled failure
    assert len([e for e in events if e["type"] == "Warning"]) == 1


async def test_runtime_failure_after_retries(kmock: kmock.KubernetesEmulator, api: KubeClient) -> None:
    rec, jname = await started(kmock, api, resource())
    engine_exits(kmock, jname, 4, "killed: out of memory")
    await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    assert obj["status"]["phase"] == "Failed" and condition(obj, "Stalled")["reason"] == "RetriesExhausted"
    assert obj["status"]["message"] == "killed: out of memory"


async def test_log_tail_instead_of_a_summary(kmock: kmock.KubernetesEmulator, api: KubeClient) -> None:
    """FallbackToLogsOnError: a crashed engine leaves its log tail; the last line is the message."""
    rec, jname = await started(kmock, api, resource())
    engine_exits(kmock, jname, 1, "Traceback (most recent call last):\n  File x\nMemoryError: cannot allocate\n")
    await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    assert obj["status"]["phase"] == "Failed" and obj["status"]["message"] == "MemoryError: cannot allocate"
    assert condition(obj, "Stalled")["reason"] == "RetriesExhausted"


async def test_a_summary_that_breaks_the_contract_fails_the_run(kmock: kmock.KubernetesEmulator, api: KubeClient,
                                                                events: list[dict[str, Any]]) -> None:
    """A JSON summary the typed model refuses is an engine/operator mismatch, not a result to trust."""
    body = resource()
    del body["spec"]["promotion"]
    rec, jname = await started(kmock, api, body)
    drifted = json.loads(summary()) | {"speedUp": 2.1}
    engine_exits(kmock, jname, 0, json.dumps(drifted))
    await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    assert obj["status"]["phase"] == "Failed" and "speedUp" in obj["status"]["message"]
    assert condition(obj, "Stalled")["reason"] == "SummaryInvalid" and "result" not in obj["status"]
    assert [e["reason"] for e in events if e["type"] == "Warning"] == ["SummaryInvalid"]


async def test_a_failed_promotion_is_retried(kmock: kmock.KubernetesEmulator, api: KubeClient,
                                             events: list[dict[str, Any]]) -> None:
    rec, jname = await started(kmock, api, resource())
    left = {k: v for k, v in json.loads(summary()).items() if k not in ("reportUri", "modelUri")}
    engine_exits(kmock, jname, 0, json.dumps(left))
    decision = await rec.reconcile(NS, NAME)
    assert decision is not None and decision.retry_after
    obj = stored(kmock, MOPT, NAME)
    assert obj["status"]["phase"] == "Evaluating" and "no report and model in S3" in obj["status"]["message"]
    assert condition(obj, "Promoted")["reason"] == "PromotionFailed"
    assert condition(obj, "GatesPassed")["status"] == "True"
    assert [e["reason"] for e in events] == ["JobCreated", "PromotionFailed"]


def test_decisions_are_data() -> None:
    """decide() only describes: a passing run asks for Promote; `promoted` maps its result to the final status."""
    from kompress.jobs.report.model import PromotionResult
    from kompress.operator.decide import Count, Event, Observed, Promote, accept, decide, promoted, wanted_status

    body = resource()
    spec, problem = accept(body["spec"])
    jname = job_name(NAME, UID, run_key(spec))
    job = {"status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}}
    pod = {"metadata": {"name": "p"}, "status": {"containerStatuses": [
        {"name": "engine", "state": {"terminated": {"exitCode": 0, "message": summary()}}}]}}
    obs = Observed(body, Settings(), "2026-01-01T00:00:00Z", spec, problem, job, [pod])
    asked = decide(obs)
    assert [type(e) for e in asked.effects] == [Count, Promote]
    failed = promoted(obs, asked, "registry unreachable")
    assert failed.phase == "Evaluating" and failed.outcome == "PromotionFailed" and failed.retry_after
    assert Event("Warning", "PromotionFailed", "promotion failed: registry unreachable") in failed.effects
    done = promoted(obs, asked, PromotionResult(promoted=True, uri="s3://registry/serving/minilm/4", version=4,
                                                created=True))
    assert Count("kompress_promotions_total") in done.effects and not any(isinstance(e, Promote)
                                                                           for e in done.effects)
    status = wanted_status(obs, done)
    assert status["phase"] == "Succeeded" and status["promotedVersion"] == 4 and status["jobName"] == jname
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Accepted": "True", "JobRunning": "False", "Evaluated": "True", "GatesPassed": "True", "Stalled": "False",
        "Promoted": "True", "Ready": "True"}


# ---- every status the decisions write fits the typed status model (and so the CRD generated from it) -----

RUNNING_JOB: dict[str, Any] = {"status": {"active": 1}}
COMPLETE_JOB: dict[str, Any] = {"status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}}


def failed_job(reason: str = "BackoffLimitExceeded") -> dict[str, Any]:
    return {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": reason,
                                       "message": "Job has reached the specified backoff limit"}], "failed": 3}}


def pod(phase: str = "Pending", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": {"phase": phase, **status}}


def exited(exit_code: int, message: str) -> dict[str, Any]:
    return pod("Succeeded" if exit_code == 0 else "Failed", containerStatuses=[
        {"name": "engine", "state": {"terminated": {"exitCode": exit_code, "message": message}}}])


def waiting_pod(reason: str) -> dict[str, Any]:
    return pod(containerStatuses=[{"name": "engine", "image": "registry.example/kompress:test",
                                   "state": {"waiting": {"reason": reason, "message": f"{reason}: secret x"}}}])


def decision_cases() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, resource spec changes, Observed fields): one or more observed states behind each outcome."""
    from kompress.operator import pod_trouble

    manual = resource()["spec"]["promotion"] | {"policy": "manual"}
    search = {"techniques": None, "search": {"objective": "latency"}, "gates": {"noRegression": False}}
    nothing = json.dumps({"outcome": "rejected", "message": "no candidate produced a model to measure",
                          "reportUri": "s3://registry/serving/.kompress-runs/x/report.json"})
    unschedulable = pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                     "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}])
    oom = pod("Running", containerStatuses=[{"name": "engine", "state": {"running": {}},
                                             "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}])
    return [
        ("invalid spec", {"techniques": [{"prune": {"sparsity": 3}}]}, {}),
        ("local registry", {"promotion": {"registry": "./registry", "modelName": "m"}}, {}),
        ("policy denies the image", {"resources": {"image": "evil.example/miner:1"}}, {}),
        ("unlabelled secret", {"storageSecretRef": {"name": "s3"}}, {"secret_labels": {"team": "a"}}),
        ("missing secret", {"storageSecretRef": {"name": "s3"}}, {"secret_missing": True}),
        ("no job yet", {}, {}),
        ("pod pending", {}, {"job": RUNNING_JOB, "pods": [pod()]}),
        ("pod running", {}, {"job": RUNNING_JOB, "pods": [pod("Running")]}),
        ("unschedulable", {}, {"job": RUNNING_JOB, "pods": [unschedulable]}),
        *((f"waiting {r}", {}, {"job": RUNNING_JOB, "pods": [waiting_pod(r)]})
          for r in (*pod_trouble.IMAGE_REASONS, *pod_trouble.CONFIG_REASONS)),
        ("oom while retrying", {}, {"job": RUNNING_JOB, "pods": [oom]}),
        ("deadline", {}, {"job": failed_job("DeadlineExceeded"), "pods": [pod("Failed")]}),
        ("bad input", {}, {"job": failed_job(), "pods": [exited(2, '{"outcome": "failed", "message": "bad"}')]}),
        ("crash", {}, {"job": failed_job(), "pods": [exited(1, "Traceback\nMemoryError: cannot allocate\n")]}),
        ("summary breaks the contract", {}, {"job": COMPLETE_JOB, "pods": [exited(0, '{"speedUp": 2}')]}),
        ("summary cut off", {}, {"job": COMPLETE_JOB, "pods": [exited(0, summary()[:57])]}),
        ("gates fail", {}, {"job": COMPLETE_JOB, "pods": [exited(0, summary(speedup=1.2))]}),
        ("nothing measured", search, {"job": failed_job(), "pods": [exited(3, nothing)]}),
        ("no promotion", {"promotion": None}, {"job": COMPLETE_JOB, "pods": [exited(0, summary())]}),
        ("awaiting approval", {"promotion": manual}, {"job": COMPLETE_JOB, "pods": [exited(0, summary())]}),
        ("promote", {}, {"job": COMPLETE_JOB, "pods": [exited(0, summary())]}),
    ]


def observe(changes: dict[str, Any], **fields: Any) -> Any:
    from kompress.operator.decide import Observed, accept

    body = resource(**changes)
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    spec, problem = accept(body["spec"])
    settings = Settings(engine_image="registry.example/kompress:test")
    return Observed(body, settings, "2026-01-01T00:00:00Z", spec, problem, **fields)


def test_every_decision_writes_a_status_the_crd_holds() -> None:
    """Every outcome in conditions.TABLE, reached through decide() (and, for a promotion, both of its ends):
    the status it asks for validates against the typed status model, and every field it writes is in the
    committed CRD's status schema (the apiserver would silently drop one that is not)."""
    from pathlib import Path

    import yaml

    from kompress.jobs.report.model import PromotionResult
    from kompress.operator.decide import Promote, decide, promoted, wanted_status
    from kompress.operator.status import ModelOptimizationStatus

    crd_file = Path(__file__).resolve().parent.parent / "crds" / "modeloptimizations.kompress.dev.yaml"
    (version,) = yaml.safe_load(crd_file.read_text())["spec"]["versions"]
    crd_status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    outcomes: set[str] = set()
    for name, changes, fields in decision_cases():
        obs = observe(changes, **fields)
        decision = decide(obs)
        decisions = [decision]
        if any(isinstance(e, Promote) for e in decision.effects):
            done = PromotionResult(promoted=True, uri="s3://registry/serving/minilm/4", version=4, created=True)
            decisions = [promoted(obs, decision, done), promoted(obs, decision, "registry unreachable")]
            # and again once promoted: the same run's status says so already
            settled = observe(changes, **fields)
            settled.body["status"] = wanted_status(obs, decisions[0])
            decisions.append(decide(settled))
        for d in decisions:
            status = wanted_status(obs, d)  # validates through the model itself
            parsed = ModelOptimizationStatus.model_validate(status)
            assert set(status) <= set(crd_status), (name, set(status) - set(crd_status))
            assert parsed.phase == d.phase, name
            for block in ("baseline", "result", "gates"):
                if status.get(block):
                    assert set(status[block]) <= set(crd_status[block]["properties"]), (name, block)
            for cond in status["conditions"]:
                assert set(cond) <= set(crd_status["conditions"]["items"]["properties"]), name
            outcomes.add(d.outcome)
    assert outcomes == set(conditions.TABLE), set(conditions.TABLE) - outcomes


def test_a_status_field_the_model_lacks_is_refused() -> None:
    """A decision that writes a field the status model (and so the CRD) does not have fails loudly, instead of
    being pruned by the apiserver without a word."""
    import dataclasses

    from pydantic import ValidationError

    from kompress.operator.decide import decide, wanted_status

    obs = observe({})
    decision = decide(obs)
    with pytest.raises(ValidationError, match="queuePosition"):
        wanted_status(obs, dataclasses.replace(decision, fields=decision.fields | {"queuePosition": 3}))
    with pytest.raises(ValidationError, match="attempts"):
        wanted_status(obs, dataclasses.replace(decision, fields=decision.fields | {"attempts": "three"}))


def test_condition_table_and_transition_times() -> None:
    types = {t for row in conditions.TABLE.values() for t in row}
    assert types == {"Accepted", "JobRunning", "Evaluated", "GatesPassed", "Promoted", "Ready", "Stalled"}
    first = conditions.set_condition([], "Ready", False, "Running", "", 1, at="2026-01-01T00:00:00Z")
    same = conditions.set_condition(first, "Ready", False, "Other", "x", 2, at="2026-01-02T00:00:00Z")
    flipped = conditions.set_condition(same, "Ready", True, "Done", "y", 2, at="2026-01-03T00:00:00Z")
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z" and same[0]["reason"] == "Other"
    assert flipped[0]["lastTransitionTime"] == "2026-01-03T00:00:00Z" and len(flipped) == 1


async def test_specs_the_schema_cannot_catch(kmock: kmock.KubernetesEmulator, api: KubeClient) -> None:
    local = resource()
    local["spec"]["promotion"]["registry"] = "./registry"
    kmock.objects[MOPT, NS, NAME] = local
    await reconciler(api).reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    assert obj["status"]["phase"] == "Failed" and condition(obj, "Accepted")["reason"] == "RegistryNotShared"
    assert not kmock[kmock.method.POST, kmock.resource("batch/v1/jobs")]
    bad = resource()
    bad["spec"]["techniques"] = [{"prune": {"sparsity": 3}}]
    kmock.objects[MOPT, NS, NAME] = bad
    await reconciler(api).reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    assert condition(obj, "Accepted")["reason"] == "InvalidSpec" and "sparsity" in obj["status"]["message"]


async def test_manual_policy_waits_for_approval(kmock: kmock.KubernetesEmulator, api: KubeClient) -> None:
    body = resource()
    body["spec"]["promotion"]["policy"] = "manual"
    rec, jname = await started(kmock, api, body)
    engine_exits(kmock, jname, 0, summary())
    await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    assert obj["status"]["phase"] == "Evaluating"
    assert condition(obj, "Promoted")["reason"] == "AwaitingApproval" and "promotedTo" not in obj["status"]


@pytest.mark.s3
async def test_approval_promotes_with_the_referenced_secret(kmock: kmock.KubernetesEmulator, api: KubeClient,
                                                            events: list[dict[str, Any]], s3_server: Any,
                                                            tmp_path: Any) -> None:
    """A real engine run (digits) leaves its report and model in MinIO; the operator, given only the user's
    Secret, promotes once approved — once, however often it reconciles."""
    import base64

    import boto3

    from conftest import DATASETS, run_cli, write_spec

    client = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                          aws_secret_access_key=s3_server.secret_key, region_name="us-east-1")
    client.create_bucket(Bucket="approvals")
    doc = example("digits-int8.yaml")
    doc["spec"]["model"]["uri"] = str(DATASETS / "digits-cnn.onnx")
    doc["spec"]["data"]["uri"] = str(DATASETS / "digits-eval.npz")
    doc["spec"]["target"]["iterations"] = 10
    doc["spec"]["promotion"] = {"registry": "s3://approvals/serving", "modelName": "digits", "policy": "manual"}
    doc["spec"]["storageSecretRef"] = {"name": "s3-creds"}
    run_out = "s3://approvals/serving/.kompress-runs/x/"
    term = tmp_path / "termination-log"
    proc = run_cli("run", str(write_spec(tmp_path / "d.yaml", doc)), "--no-promote", "--resource-uid", UID,
                   "-o", run_out, "--workdir", str(tmp_path / "w"), "--termination-log", str(term),
                   cwd=tmp_path, env=s3_server.env())
    assert proc.returncode == 0, proc.stderr[-2000:]

    doc["metadata"] = {"name": NAME, "namespace": NS, "uid": UID, "generation": 1}
    kmock.resources["v1/secrets"] = {"namespaced": True}
    kmock.objects["v1/secrets", NS, "s3-creds"] = {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "s3-creds", "namespace": NS, "labels": {"kompress.dev/storage-credentials": "true"}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in s3_server.env().items()}}
    rec, jname = await started(kmock, api, doc)
    engine_exits(kmock, jname, 0, term.read_text())
    await rec.reconcile(NS, NAME)
    assert stored(kmock, MOPT, NAME)["status"]["phase"] == "Evaluating"  # awaiting approval
    assert "Contents" not in client.list_objects_v2(Bucket="approvals", Prefix="serving/digits/")

    kmock.objects[MOPT, NS, NAME].patch({"spec": {"promotion": {"approved": True}}, "metadata": {"generation": 2}})
    await rec.reconcile(NS, NAME)
    await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert obj["status"]["promotedTo"] == "s3://approvals/serving/digits/1" and obj["status"]["promotedVersion"] == 1
    assert condition(obj, "Promoted")["status"] == "True" and condition(obj, "Ready")["status"] == "True"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="approvals", Prefix="serving/digits/")["Contents"]]
    assert "serving/digits/1/model.onnx" in keys and "serving/digits/1/kompress.json" in keys
    assert not [k for k in keys if k.startswith("serving/digits/2/")]
    manifest = json.loads(client.get_object(Bucket="approvals", Key="serving/digits/1/kompress.json")["Body"].read())
    assert manifest["resourceUid"] == UID and manifest["gates"]["passed"] is True
    # the operator process itself has no AWS credentials: only the Secret's were used
    reasons = [e["reason"] for e in events]
    assert reasons.count("Promoted") == 1 and "AwaitingApproval" in reasons


def test_gpu_job_carries_scheduling_overrides() -> None:
    from kompress.operator.jobspec import build_job

    body = resource(resources={
        "cpu": "4", "memory": "16Gi", "gpu": 1, "nodeSelector": {"nvidia.com/gpu.product": "H100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "runtimeClassName": "nvidia", "serviceAccountName": "gpu-runner", "image": "registry.example/kompress:cuda"})
    body["spec"]["target"] = {"device": "gpu"}
    job = build_job(body, OptimizationSpec.model_validate(body["spec"]), Settings())
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    assert container["image"] == "registry.example/kompress:cuda"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["runtimeClassName"] == "nvidia" and pod["serviceAccountName"] == "gpu-runner"
    assert job["metadata"]["name"] == job_name(NAME, UID, run_key(OptimizationSpec.model_validate(body["spec"])))
    assert len(job["metadata"]["name"]) <= 63
    cpu_job = build_job(resource(), OptimizationSpec.model_validate(resource()["spec"]), Settings())
    assert "nvidia.com/gpu" not in cpu_job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert cpu_job["metadata"]["name"] != job["metadata"]["name"]  # a different run, a different Job


def test_in_cluster_login_uses_the_service_address_not_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """client-go's in-cluster config: the address the kubelet puts in every pod (no cluster DNS needed)."""
    from kompress.operator.handlers import in_cluster_server

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert in_cluster_server() is None
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert in_cluster_server() == "https://10.0.0.1:443"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert in_cluster_server() == "https://[fd00::1]:443"


async def test_an_edit_that_changes_the_run_deletes_the_superseded_job(kmock: kmock.KubernetesEmulator,
                                                                        api: KubeClient,
                                                                        events: list[dict[str, Any]]) -> None:
    """resources are part of the run: the edited spec gets a new Job, and the old one is deleted (Foreground)
    with a Superseded Event; the status follows the new Job only."""
    # kmock 0.8's emulator cannot serialize a deleted object's versions: answer DELETE as the API server does
    kmock[kmock.method.DELETE, kmock.resource("batch/v1/jobs")] << {"kind": "Status", "status": "Success"}
    rec, old = await started(kmock, api, resource())
    put_pod(kmock, old, "Running")
    await rec.reconcile(NS, NAME)
    body = resource(resources={"cpu": "1", "memory": "2Gi"})
    body["metadata"]["generation"] = 2
    body["status"] = plain(stored(kmock, MOPT, NAME)["status"])
    kmock.objects[MOPT, NS, NAME] = body
    await rec.reconcile(NS, NAME)
    new = the_job_name(body)
    assert new != old
    deletes = kmock[kmock.method.DELETE, kmock.resource("batch/v1/jobs")]
    assert len(deletes) == 1 and deletes[0].data["propagationPolicy"] == "Foreground"
    assert stored(kmock, "batch/v1/jobs", new)
    st = stored(kmock, MOPT, NAME)["status"]
    assert st["jobName"] == new and st["phase"] == "Pending" and st["observedGeneration"] == 2
    assert [e["reason"] for e in events] == ["JobCreated", "JobRunning", "Superseded", "JobCreated"]
    assert old in events[2]["message"] and new in events[2]["message"]


@pytest.mark.parametrize(("resources", "secret_labels", "field"), [
    ({"image": "evil.example/miner:1"}, {"kompress.dev/storage-credentials": "true"}, "spec.resources.image"),
    ({"image": "ghcr.io/kompress-evil/x:1"}, {"kompress.dev/storage-credentials": "true"}, "spec.resources.image"),
    ({"serviceAccountName": "cluster-admin-sa"}, {"kompress.dev/storage-credentials": "true"},
     "spec.resources.serviceAccountName"),
    ({}, {"team": "a"}, "spec.storageSecretRef"),
])
async def test_the_tenant_policy_denies_before_any_job(kmock: kmock.KubernetesEmulator, api: KubeClient,
                                                       events: list[dict[str, Any]], resources: dict[str, Any],
                                                       secret_labels: dict[str, str], field: str) -> None:
    kmock.resources["v1/secrets"] = {"namespaced": True}
    kmock.objects["v1/secrets", NS, "s3"] = {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "s3", "namespace": NS, "labels": secret_labels}, "data": {}}
    kmock.objects[MOPT, NS, NAME] = resource(resources={"cpu": "1", "memory": "1Gi", **resources},
                                             storageSecretRef={"name": "s3"})
    rec = Reconciler(api, Settings(engine_image="ghcr.io/kompress/kompress:1", allowed_image_prefixes=(
        "ghcr.io/kompress/",), allowed_service_accounts=("optimizer",)))
    await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    # an unlabelled Secret can be labelled without editing the spec: Pending, looked at again
    assert obj["status"]["phase"] == ("Pending" if field == "spec.storageSecretRef" else "Failed")
    assert condition(obj, "Stalled")["reason"] == "PolicyDenied"
    assert obj["status"]["message"].startswith(field + ":"), obj["status"]["message"]
    assert not kmock[kmock.method.POST, kmock.resource("batch/v1/jobs")]
    assert [e["reason"] for e in events] == ["PolicyDenied"]


async def test_the_policy_allows_what_it_lists_and_waits_for_a_missing_secret(kmock: kmock.KubernetesEmulator,
                                                                              api: KubeClient) -> None:
    kmock.resources["v1/secrets"] = {"namespaced": True}
    settings = Settings(engine_image="ghcr.io/kompress/kompress:1", allowed_image_prefixes=("ghcr.io/kompress/",),
                        allowed_service_accounts=("optimizer",))
    kmock.objects[MOPT, NS, NAME] = resource(resources={
        "cpu": "1", "memory": "1Gi", "image": "ghcr.io/kompress/kompress:1-cuda", "serviceAccountName": "optimizer"},
        storageSecretRef={"name": "later"})
    rec = Reconciler(api, settings)
    await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    assert obj["status"]["phase"] == "Pending" and condition(obj, "Stalled")["reason"] == "SecretNotFound"
    assert "spec.storageSecretRef" in obj["status"]["message"]
    assert not kmock[kmock.method.POST, kmock.resource("batch/v1/jobs")]
    kmock.objects["v1/secrets", NS, "later"] = {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "later", "namespace": NS, "labels": {"kompress.dev/storage-credentials": "true"}}, "data": {}}
    await rec.reconcile(NS, NAME)
    assert len(kmock[kmock.method.POST, kmock.resource("batch/v1/jobs")]) == 1
    assert stored(kmock, MOPT, NAME)["status"]["phase"] == "Pending"


async def test_a_summary_cut_off_mid_write_fails_once_without_a_crash_loop(kmock: kmock.KubernetesEmulator,
                                                                           api: KubeClient,
                                                                           events: list[dict[str, Any]]) -> None:
    rec, jname = await started(kmock, api, resource())
    engine_exits(kmock, jname, 0, summary()[:57])
    for _ in range(3):  # reconciled again and again (events, the timer): the same status, one Event
        await rec.reconcile(NS, NAME)
    obj = stored(kmock, MOPT, NAME)
    assert obj["status"]["phase"] == "Failed" and condition(obj, "Stalled")["reason"] == "SummaryInvalid"
    assert "not complete JSON" in obj["status"]["message"]
    assert [e["reason"] for e in events] == ["JobCreated", "SummaryInvalid"]
    assert not kmock[kmock.method.POST, kmock.resource("batch/v1/jobs")][1:]
