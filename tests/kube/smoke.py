"""End-to-end smoke check of the loopback control plane from ``cluster.py``.

Run after ``.ci/build-kube.sh``::

    python tests/kube/smoke.py [--workdir DIR] [--keep] [--phase-only]

It uses the real ``kubectl`` (``$KUBECTL`` or the one on PATH) to:

1. list namespaces;
2. create a one-pod Job, then - there is no kubelet - complete its pod by
   writing the ``pods/status`` subresource (phase Succeeded plus a terminated
   containerStatuses entry with exit code 0 and a termination message), and
   wait for the Job controller to mark the Job Complete;
3. delete the Job and wait for the garbage collector to delete its pod;
4. delete the namespace and wait for the namespace controller to finish it.

``--phase-only`` patches just ``status.phase`` (to show what the Job
controller itself needs). Exits non-zero with the component logs on failure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import Cluster, start_cluster

NAMESPACE = "kompress-smoke"
JOB = "smoke"
CONTAINER = "main"
IMAGE = "busybox:1.36"
TERMINATION_MESSAGE = '{"result": "ok", "from": "kompress smoke test"}'


class SmokeFailure(AssertionError):
    pass


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None) -> str:
    binary = os.environ.get("KUBECTL") or shutil.which("kubectl") or "kubectl"
    argv = [binary, f"--kubeconfig={cluster.kubeconfig}", "--request-timeout=30s", *args]
    res = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=60)
    if res.returncode != 0:
        raise SmokeFailure(f"{' '.join(argv[1:])} failed ({res.returncode}):\n{res.stderr}{res.stdout}")
    return res.stdout


def kubectl_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(kubectl(cluster, *args, "-o", "json"))


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise SmokeFailure(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def job_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": JOB, "namespace": NAMESPACE},
        "spec": {
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": CONTAINER, "image": IMAGE, "command": ["true"]}],
                }
            },
        },
    }


def job_pods(cluster: Cluster) -> list[dict[str, Any]]:
    out = kubectl_json(cluster, "-n", NAMESPACE, "get", "pods", "-l", f"batch.kubernetes.io/job-name={JOB}")
    items: list[dict[str, Any]] = out["items"]
    return items


def succeeded_status(phase_only: bool) -> dict[str, Any]:
    """The status a kubelet would write for a container that exited 0."""
    if phase_only:
        return {"phase": "Succeeded"}
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return {
        "phase": "Succeeded",
        "startTime": now,
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
        ],
        "containerStatuses": [
            {
                "name": CONTAINER,
                "image": IMAGE,
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "message": TERMINATION_MESSAGE,
                        "startedAt": now,
                        "finishedAt": now,
                    }
                },
            }
        ],
    }


def complete_pod(cluster: Cluster, pod_name: str, phase_only: bool) -> dict[str, Any]:
    # A JSON merge patch of the status subresource; containerStatuses is
    # replaced wholesale, which is what we want.
    return cluster.request(
        "PATCH",
        f"/api/v1/namespaces/{NAMESPACE}/pods/{pod_name}/status",
        {"status": succeeded_status(phase_only)},
        content_type="application/merge-patch+json",
    )


def job_condition(job: dict[str, Any], cond_type: str) -> bool:
    conditions = job.get("status", {}).get("conditions") or []
    return any(c.get("type") == cond_type and c.get("status") == "True" for c in conditions)


def run(cluster: Cluster, phase_only: bool) -> int:
    passed = 0

    def ok(msg: str) -> None:
        nonlocal passed
        passed += 1
        print(f"ok {passed} - {msg}", flush=True)

    # 1. namespaces
    names = kubectl(cluster, "get", "ns", "-o", "name").split()
    for want in ("namespace/default", "namespace/kube-system"):
        if want not in names:
            raise SmokeFailure(f"kubectl get ns: {want} missing from {names}")
    version = kubectl_json(cluster, "version")
    ok(f"kubectl get ns ({len(names)} namespaces, server {version['serverVersion']['gitVersion']})")

    # 2. a Job completed by hand
    kubectl(cluster, "create", "namespace", NAMESPACE)
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(job_manifest()))
    pods = wait_until("the Job controller to create a pod", lambda: job_pods(cluster))
    if len(pods) != 1:
        raise SmokeFailure(f"expected one pod, got {[p['metadata']['name'] for p in pods]}")
    pod_name = pods[0]["metadata"]["name"]
    ok(f"job/{JOB} created pod/{pod_name} (phase {pods[0]['status'].get('phase')})")

    patched = complete_pod(cluster, pod_name, phase_only)
    status: dict[str, Any] = patched["status"]
    if status.get("phase") != "Succeeded":
        raise SmokeFailure(f"pods/status patch did not stick: {status}")
    if not phase_only:
        term = status["containerStatuses"][0]["state"]["terminated"]
        if term.get("message") != TERMINATION_MESSAGE or term.get("exitCode") != 0:
            raise SmokeFailure(f"terminated state not stored as written: {term}")

    def job_complete() -> dict[str, Any] | None:
        job: dict[str, Any] = kubectl_json(cluster, "-n", NAMESPACE, "get", "job", JOB)
        return job if job_condition(job, "Complete") else None

    job = wait_until("job condition Complete=True", job_complete)
    job_status = job["status"]
    if job_status.get("succeeded") != 1:
        raise SmokeFailure(f"Complete but status.succeeded != 1: {job_status}")
    conds = sorted(c["type"] for c in job_status.get("conditions", []) if c.get("status") == "True")
    ok(f"job/{JOB} Complete (succeeded={job_status['succeeded']}, conditions={conds})")

    # 3. garbage collection of the Job's pod
    kubectl(cluster, "-n", NAMESPACE, "delete", "job", JOB, "--wait=true")
    wait_until("the garbage collector to delete the Job's pod", lambda: not job_pods(cluster) or None)
    ok(f"deleting job/{JOB} garbage-collected pod/{pod_name}")

    # 4. namespace deletion
    kubectl(cluster, "delete", "namespace", NAMESPACE, "--wait=false")

    def namespace_gone() -> bool:
        return f"namespace/{NAMESPACE}" not in kubectl(cluster, "get", "ns", "-o", "name").split()

    wait_until(f"namespace {NAMESPACE} to be finalized", namespace_gone)
    ok(f"namespace/{NAMESPACE} deleted by the namespace controller")
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where etcd data, certs and logs go (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    parser.add_argument("--phase-only", action="store_true", help="patch only status.phase")
    args = parser.parse_args(argv)

    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="kompress-kube-"))
    started = time.monotonic()
    cluster = start_cluster(workdir)
    print(f"cluster up in {time.monotonic() - started:.1f}s: {cluster.server} (workdir {workdir})", flush=True)
    passed = 0
    failed = 0
    try:
        passed = run(cluster, args.phase_only)
    except Exception as exc:
        failed = 1
        print(f"not ok - {exc}", file=sys.stderr)
        print(cluster.logs(), file=sys.stderr)
    finally:
        cluster.stop()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"smoke: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
