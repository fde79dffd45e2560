"""The node tier's own proof that pods really run: scheduled by kube-scheduler onto the kubelet's node, in
runc containers with the security context enforced, on the CNI network, reaching the host and (through
kube-proxy) the apiserver, and OOM-killed by the kernel over their memory limit.

Every check reads what the container itself observed (its termination message) or what the host saw (the
TCP server's peer address), so each fails when the thing does not happen.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import threading
import time
import urllib.error
from collections.abc import Iterator
from typing import Any

import pytest

from kube.node import NodeCluster, base_image_name

pytestmark = pytest.mark.node

NONROOT = 65532
NS = "default"


def _pod(name: str, script: str, memory: str = "64Mi") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"runAsUser": NONROOT, "runAsGroup": NONROOT, "runAsNonRoot": True},
            "containers": [
                {
                    "name": "probe",
                    "image": base_image_name(),
                    "imagePullPolicy": "Never",  # no registry: the image was imported into containerd
                    "command": ["/bin/sh", "-c", script],
                    "terminationMessagePolicy": "File",
                    "resources": {"limits": {"memory": memory, "cpu": "500m"}},
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def _run_pod(node: NodeCluster, pod: dict[str, Any], timeout: float = 90.0) -> dict[str, Any]:
    """Create ``pod`` (no nodeName: the scheduler must place it), wait until it ends; returns the pod."""
    name = pod["metadata"]["name"]
    assert "nodeName" not in pod["spec"]
    node.request("POST", f"/api/v1/namespaces/{NS}/pods", pod)
    deadline = time.monotonic() + timeout
    try:
        while True:
            current = node.request("GET", f"/api/v1/namespaces/{NS}/pods/{name}")
            if current.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                return current
            if time.monotonic() > deadline:
                raise AssertionError(f"pod {name} did not finish in {timeout:g}s:\n"
                                     f"{json.dumps(current.get('status'), indent=1)}\n{node.logs(15)}")  # fmt: skip
            time.sleep(0.5)
    finally:
        node.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{name}", {"gracePeriodSeconds": 0})


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod["status"].get("containerStatuses") or []
    assert statuses, f"no container status: {pod['status']}"
    state: dict[str, Any] = statuses[0]["state"].get("terminated") or {}
    assert state, f"container not terminated: {statuses[0]}"
    return state


def _fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.splitlines() if "=" in line)


def test_pod_runs_scheduled_nonroot_readonly_without_capabilities(node_cluster: NodeCluster) -> None:
    script = (
        "exec >/dev/termination-log 2>&1; "
        'echo "uid=$(id -u)"; echo "gid=$(id -g)"; '
        # /tmp is mode 1777 in the image, so only a read-only root filesystem stops this write.
        "if echo x >/tmp/probe; then echo rootfs=writable; else echo rootfs=readonly; fi; "
        'echo "capeff=$(grep CapEff /proc/self/status | cut -f2)"; '
        'echo "capbnd=$(grep CapBnd /proc/self/status | cut -f2)"; '
        'echo "nonewprivs=$(grep NoNewPrivs /proc/self/status | cut -f2)"'
    )
    pod = _run_pod(node_cluster, _pod("smoke-identity", script))
    state = _terminated(pod)
    assert pod["status"]["phase"] == "Succeeded", state
    assert pod["spec"]["nodeName"] == node_cluster.node_name
    scheduled = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"]
    assert scheduled and scheduled[0]["status"] == "True"
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    seen = _fields(state.get("message", ""))
    assert seen.get("uid") == str(NONROOT), state
    assert seen.get("gid") == str(NONROOT), state
    assert seen.get("rootfs") == "readonly", state
    assert "Read-only file system" in state["message"], state
    assert int(seen["capeff"], 16) == 0, state
    assert int(seen["capbnd"], 16) == 0, state
    assert seen.get("nonewprivs") == "1", state


@pytest.fixture
def host_server(node_cluster: NodeCluster) -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
    """A TCP server on ``host_ip``: records (peer address, line) and answers ``pong <line>``."""
    received: list[tuple[str, bytes]] = []
    server = socket.create_server((node_cluster.host_ip, 0))
    server.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                line = conn.makefile("rb").readline().strip()
                received.append((peer[0], line))
                conn.sendall(b"pong " + line + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    stop.set()
    thread.join(5)
    server.close()


def test_pod_reaches_host_over_cni(node_cluster: NodeCluster, host_server: tuple[int, list[tuple[str, bytes]]]) -> None:
    port, received = host_server
    token = secrets.token_hex(8)
    script = (
        "exec >/dev/termination-log 2>&1; "
        f'echo "reply=$(echo {token} | nc -w 10 {node_cluster.host_ip} {port})"; '
        "echo \"ip=$(ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)\""
    )
    pod = _run_pod(node_cluster, _pod("smoke-host", script))
    state = _terminated(pod)
    seen = _fields(state.get("message", ""))
    assert seen.get("reply") == f"pong {token}", state
    pod_ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(node_cluster.pod_subnet)
    assert seen.get("ip") == pod_ip, state
    # The host saw the connection come from the pod's own address: it crossed the CNI bridge, not loopback.
    assert (pod_ip, token.encode()) in received


def test_pod_reaches_apiserver_through_service_with_token(node_cluster: NodeCluster) -> None:
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    review = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    script = (
        "exec >/dev/termination-log 2>&1; "
        'echo "host=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"; '
        "wget -q -O - --no-check-certificate "
        f'--header "Authorization: Bearer $(cat {sa}/token)" --header "Content-Type: application/json" '
        f"--post-data '{review}' "
        '"https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/apis/authentication.k8s.io/v1/selfsubjectreviews" '
        "| tr -d '\\n' | sed 's/^/review=/'"
    )
    pod = _run_pod(node_cluster, _pod("smoke-api", script))
    state = _terminated(pod)
    seen = _fields(state.get("message", ""))
    assert seen.get("host") == "10.0.0.1:443", state
    assert "review" in seen, state
    user = json.loads(seen["review"])["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{NS}:default", user
    # The apiserver authenticated a token bound to this very pod (a projected, pod-bound token).
    assert user["extra"]["authentication.kubernetes.io/pod-name"] == ["smoke-api"], user


def test_container_over_memory_limit_is_oom_killed(node_cluster: NodeCluster) -> None:
    # dd fills a 256 MiB buffer with one read: far over the 32 MiB limit, so the kernel kills it.
    pod = _run_pod(node_cluster, _pod("smoke-oom", "dd if=/dev/zero of=/dev/null bs=256M count=1", memory="32Mi"))
    state = _terminated(pod)
    assert pod["status"]["phase"] == "Failed", state
    assert state.get("reason") == "OOMKilled", state
    assert state.get("exitCode") == 137, state


def test_node_is_the_real_kubelet(node_cluster: NodeCluster) -> None:
    node = node_cluster.request("GET", f"/api/v1/nodes/{node_cluster.node_name}")
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.33.13"
    assert info["containerRuntimeVersion"].startswith("containerd://1.6.")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses.get("InternalIP") == node_cluster.host_ip
    with pytest.raises(urllib.error.HTTPError):
        node_cluster.request("GET", "/api/v1/namespaces/default/pods/does-not-exist")
