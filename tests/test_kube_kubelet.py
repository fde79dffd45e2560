"""End-to-end through Kubernetes: real kube-apiserver, Job controller and garbage
collector (``kube/cluster.py``), a stand-in kubelet running pods as local
processes (``kube/kubelet.py``), the real engine and a real MinIO.

Needs ``.ci/build-kube.sh`` (and ``.ci/build-minio.sh`` for MinIO)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from kube.cluster import Cluster
from kube.fixtures import kubectl
from kube.kubelet import FakeKubelet
from s3server import S3Server

pytest_plugins = ["kube.fixtures"]  # the session-scoped kube_cluster fixture
pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT / "jobs" / "src" / "kompress" / "jobs" / "datasets"
INPUTS = "inputs"  # bucket of the model and data
RUNS = "runs"  # bucket of the engine's outputs
JOB_TIMEOUT_S = float(os.environ.get("KOMPRESS_KUBE_JOB_TIMEOUT", "600"))


# ---------------------------------------------------------------- helpers


def wait_for(what: str, check: Callable[[], Any], timeout: float, diagnostics: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\n{diagnostics()}")


def get_job(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return cluster.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def job_pods(cluster: Cluster, ns: str, job: str) -> list[dict[str, Any]]:
    out = cluster.request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=batch.kubernetes.io/job-name%3D{job}")
    items: list[dict[str, Any]] = out["items"]
    return items


def condition(obj: dict[str, Any] | None, kind: str) -> bool:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = pod["status"]["containerStatuses"][0]["state"]
    return state.get("terminated") or {}


def apply(cluster: Cluster, manifest: dict[str, Any]) -> None:
    res = kubectl(cluster, "apply", "-f", "-", input=json.dumps(manifest))
    assert res.returncode == 0, res.stderr


def engine_job(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    command = [
        "kompress", "run", "--spec-env", "KOMPRESS_SPEC", "--no-promote", "--quiet",
        "--output", f"s3://{RUNS}/{ns}/{name}/", "--workdir", "/work",
        "--termination-log", "/dev/termination-log",
    ]  # fmt: skip
    container = {
        "name": "engine",
        "image": "kompress/engine:test",
        "command": command,
        "env": [{"name": "KOMPRESS_SPEC", "value": json.dumps(spec)}],
        "envFrom": [{"secretRef": {"name": "s3-credentials"}}],
        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
    }
    return job_manifest(name, ns, container, volumes=[{"name": "work", "emptyDir": {}}])


def job_manifest(
    name: str, ns: str, container: dict[str, Any], volumes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if volumes:
        pod_spec["volumes"] = volumes
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}},
    }


def digits_spec(model_uri: str, data_uri: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "digits-int8.yaml").read_text())
    doc["spec"]["model"]["uri"] = model_uri
    doc["spec"]["data"]["uri"] = data_uri
    doc["spec"].pop("promotion", None)
    doc["spec"]["target"]["iterations"] = 10
    return doc


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def s3_client(s3_server: S3Server) -> Any:
    env = s3_server.env()
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


@pytest.fixture(scope="module")
def s3_inputs(s3_client: Any) -> dict[str, str]:
    client = s3_client
    for bucket in (INPUTS, RUNS):
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
    uris = {}
    for name in ("digits-cnn.onnx", "digits-eval.npz"):
        key = f"kube/{name}"
        client.upload_file(str(DATASETS / name), INPUTS, key)
        uris[name] = f"s3://{INPUTS}/{key}"
    return uris


@pytest.fixture(scope="module")
def kubelet(kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubelet]:
    k = FakeKubelet(kube_cluster, extra_env={}, workdir=tmp_path_factory.mktemp("kubelet"), max_parallel=2)
    k.start()
    yield k
    k.stop()


@pytest.fixture
def namespace(kube_cluster: Cluster, kubelet: FakeKubelet, s3_server: S3Server) -> Iterator[str]:
    """A fresh namespace holding Secret ``s3-credentials`` (the MinIO endpoint and keys)."""
    ns = f"kubelet-{secrets.token_hex(3)}"
    res = kubectl(kube_cluster, "create", "namespace", ns)
    assert res.returncode == 0, res.stderr
    env = s3_server.env()
    res = kubectl(
        kube_cluster, "-n", ns, "create", "secret", "generic", "s3-credentials",
        *(f"--from-literal={k}={env[k]}" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    yield ns
    kubectl(kube_cluster, "delete", "namespace", ns, "--wait=false")


def diagnostics(cluster: Cluster, kubelet: FakeKubelet, ns: str, job: str) -> Callable[[], str]:
    def report() -> str:
        parts = [f"--- job ---\n{json.dumps((get_job(cluster, ns, job) or {}).get('status'), indent=1)}"]
        for pod in job_pods(cluster, ns, job):
            name = pod["metadata"]["name"]
            parts.append(f"--- pod {name} status ---\n{json.dumps(pod.get('status'), indent=1)}")
            parts.append(f"--- pod {name} log ---\n{kubelet.logs(ns, name)[-4000:]}")
        parts.append(f"--- fake kubelet ---\n{kubelet.kubelet_log()[-4000:]}")
        parts.append(cluster.logs(20))
        return "\n".join(parts)

    return report


# ---------------------------------------------------------------- tests


def test_engine_job_completes(
    kube_cluster: Cluster, kubelet: FakeKubelet, namespace: str, s3_inputs: dict[str, str], s3_client: Any
) -> None:
    ns, job = namespace, "digits"
    spec = digits_spec(s3_inputs["digits-cnn.onnx"], s3_inputs["digits-eval.npz"])
    started = time.monotonic()
    apply(kube_cluster, engine_job(job, ns, spec))
    diag = diagnostics(kube_cluster, kubelet, ns, job)

    done = wait_for(
        "the Job to finish",
        lambda: (j := get_job(kube_cluster, ns, job)) and (condition(j, "Complete") or condition(j, "Failed")) and j,
        JOB_TIMEOUT_S,
        diag,
    )
    print(f"job {ns}/{job} finished in {time.monotonic() - started:.1f}s")
    assert condition(done, "Complete"), diag()
    assert done["status"].get("succeeded") == 1

    pods = job_pods(kube_cluster, ns, job)
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    pod = pods[0]
    assert pod["spec"]["nodeName"] == "fake-node"
    assert pod["status"]["phase"] == "Succeeded"
    term = terminated(pod)
    assert term["exitCode"] == 0 and term["reason"] == "Completed", term
    summary = json.loads(term["message"])
    assert summary["outcome"] == "succeeded", summary

    report = json.loads(s3_client.get_object(Bucket=RUNS, Key=f"{ns}/{job}/report.json")["Body"].read())
    assert report["outcome"] == "succeeded", report.get("message")
    assert summary["reportUri"] == f"s3://{RUNS}/{ns}/{job}/report.json"


def test_missing_object_fails_the_job(
    kube_cluster: Cluster, kubelet: FakeKubelet, namespace: str, s3_inputs: dict[str, str]
) -> None:
    ns, job = namespace, "missing"
    absent = f"s3://{INPUTS}/kube/{ns}/absent.onnx"
    apply(kube_cluster, engine_job(job, ns, digits_spec(absent, s3_inputs["digits-eval.npz"])))
    diag = diagnostics(kube_cluster, kubelet, ns, job)

    failed = wait_for(
        "condition Failed on the Job",
        lambda: (j := get_job(kube_cluster, ns, job)) and condition(j, "Failed") and j,
        JOB_TIMEOUT_S,
        diag,
    )
    assert not condition(failed, "Complete")
    pods = job_pods(kube_cluster, ns, job)
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    assert pods[0]["status"]["phase"] == "Failed"
    term = terminated(pods[0])
    assert term["exitCode"] == 2 and term["reason"] == "Error", term
    assert absent in term["message"], term["message"]
    assert json.loads(term["message"])["outcome"] == "failed"


def test_deleting_the_job_kills_the_process(kube_cluster: Cluster, kubelet: FakeKubelet, namespace: str) -> None:
    ns, job = namespace, "sleeper"
    container = {"name": "sleep", "image": "python:3.11", "command": ["python3", "-c", "import time; time.sleep(600)"]}
    apply(kube_cluster, job_manifest(job, ns, container))
    diag = diagnostics(kube_cluster, kubelet, ns, job)

    def running() -> tuple[str, int] | None:
        pods = job_pods(kube_cluster, ns, job)
        if not pods or pods[0]["status"].get("phase") != "Running":
            return None
        name = pods[0]["metadata"]["name"]
        pid = kubelet.pid(ns, name)
        return (name, pid) if pid else None

    pod_name, pid = wait_for("the pod to run", running, 120, diag)
    assert Path(f"/proc/{pid}").exists()

    kube_cluster.request(
        "DELETE",
        f"/apis/batch/v1/namespaces/{ns}/jobs/{job}",
        {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"},
    )
    started = time.monotonic()

    def process_gone() -> bool:
        return kubelet.pid(ns, pod_name) is None and not Path(f"/proc/{pid}").exists()

    wait_for(f"pid {pid} to be killed", process_gone, 30, diag)
    killed_after = time.monotonic() - started
    wait_for("garbage collection of the Job's pod", lambda: not job_pods(kube_cluster, ns, job), 60, diag)
    print(f"process killed {killed_after:.1f}s and pod collected {time.monotonic() - started:.1f}s after the delete")
    assert get_job(kube_cluster, ns, job) is None
    assert "Traceback" not in kubelet.logs(ns, pod_name)
