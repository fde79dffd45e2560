"""The engine Job for a ModelOptimization: deterministic name, owned by the resource, bounded retries.

One Job per *run*: the run key hashes the fields that change what is computed (model, data, techniques,
target, resources); editing gates or promotion (e.g. an approval) re-evaluates the existing result instead
of starting another Job. Retries: the Job controller's own backoff (backoffLimit); exit codes that no
retry can fix (ExitCode.INVALID_INPUT, ExitCode.GATES_REJECTED) fail the Job at once through podFailurePolicy."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import kopf

from kompress.jobs.errors import ExitCode

# GROUP/PLURAL/VERSION are re-exported: other operator modules import them from here.
from kompress.jobs.spec.base import GROUP as GROUP
from kompress.jobs.spec.base import PLURAL as PLURAL
from kompress.jobs.spec.base import VERSION as VERSION
from kompress.jobs.spec.document import OptimizationSpec
from kompress.operator.settings import Settings

LABEL_NAME = "kompress.dev/name"
LABEL_RUN = "kompress.dev/run"
TERMINATION_LOG = "/dev/termination-log"
WORKDIR = "/work"
RUN_FIELDS = ("model", "data", "techniques", "search", "target", "resources", "storage_secret_ref")


def run_key(spec: OptimizationSpec) -> str:
    body = spec.model_dump(mode="json", include=set(RUN_FIELDS))
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:10]


def job_name(name: str, uid: str, key: str) -> str:
    # <= 63 characters: the Job controller copies the name into a pod label
    return f"{name[:40]}-{uid[:6]}-{key[:8]}".strip("-")


def runs_prefix(spec: OptimizationSpec, settings: Settings, namespace: str, name: str, job: str) -> str | None:
    base = settings.runs_uri
    if not base and spec.promotion and spec.promotion.registry.startswith("s3://"):
        base = spec.promotion.registry.rstrip("/") + "/.kompress-runs"
    return f"{base.rstrip('/')}/{namespace}/{name}/{job}/" if base else None


def build_job(obj: dict[str, Any], spec: OptimizationSpec, settings: Settings) -> dict[str, Any]:
    meta = obj["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    key = run_key(spec)
    jname = job_name(name, uid, key)
    labels = {LABEL_NAME: name, LABEL_RUN: key}
    never_retried = [int(ExitCode.INVALID_INPUT), int(ExitCode.GATES_REJECTED)]  # no retry can fix these
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": jname, "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": settings.max_attempts - 1,
            "activeDeadlineSeconds": spec.resources.timeout_seconds,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "engine", "operator": "In",
                                                      "values": never_retried}},
            ]},
            "template": {"metadata": {"labels": labels},
                         "spec": _pod_spec(spec, _container(obj, spec, settings, jname))},
        },
    }
    # the resource owns its Job (controller, blockOwnerDeletion): garbage collection deletes it with the resource;
    # not kopf.adopt, which would also copy the resource's labels (e.g. Argo CD's tracking label) onto the Job
    kopf.append_owner_reference(job, owner=obj)  # type: ignore[arg-type]  # kopf reads a plain dict as a Body
    if settings.job_ttl_seconds is not None:
        job["spec"]["ttlSecondsAfterFinished"] = settings.job_ttl_seconds
    return job


def _container(obj: dict[str, Any], spec: OptimizationSpec, settings: Settings, jname: str) -> dict[str, Any]:
    """The engine container: `kompress run` on the spec, writing its summary to the termination log."""
    meta = obj["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    output = runs_prefix(spec, settings, namespace, name, jname)
    res = spec.resources
    args = ["run", "--spec-env", "KOMPRESS_SPEC", "--no-promote", "--resource-uid", meta["uid"],
            "--termination-log", TERMINATION_LOG, "--namespace", namespace, "--name", name]
    if settings.pushgateway_url:
        args += ["--pushgateway", settings.pushgateway_url]
    args += ["--output", output, "--workdir", f"{WORKDIR}/out"] if output else ["--output", f"{WORKDIR}/out"]
    limits: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    if res.gpu:
        limits["nvidia.com/gpu"] = str(res.gpu)
    container: dict[str, Any] = {
        "name": "engine",
        "image": res.image or settings.engine_image,
        "command": ["kompress"],
        "args": args,
        "env": [
            {"name": "KOMPRESS_SPEC", "value": json.dumps(spec.model_dump(mode="json", by_alias=True,
                                                                          exclude_none=True))},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "HOME", "value": WORKDIR},
            {"name": "MPLCONFIGDIR", "value": f"{WORKDIR}/.matplotlib"},
        ],
        "resources": {"requests": {"cpu": res.cpu, "memory": res.memory}, "limits": limits},
        "volumeMounts": [{"name": "work", "mountPath": WORKDIR}, {"name": "tmp", "mountPath": "/tmp"}],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if spec.storage_secret_ref:
        container["envFrom"] = [{"secretRef": {"name": spec.storage_secret_ref.name}}]
    return container


def _pod_spec(spec: OptimizationSpec, container: dict[str, Any]) -> dict[str, Any]:
    res = spec.resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "work", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
        "automountServiceAccountToken": False,
    }
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = [t.model_dump(exclude_none=True) for t in res.tolerations]
    if res.runtime_class_name:
        pod_spec["runtimeClassName"] = res.runtime_class_name
    if res.service_account_name:
        pod_spec["serviceAccountName"] = res.service_account_name
    return pod_spec
