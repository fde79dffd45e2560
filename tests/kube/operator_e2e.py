"""What the two operator end-to-end tiers share (tests/test_operator_e2e.py on the stand-in kubelet,
tests/test_node.py on the real node): reading resources, namespaces with a storage Secret, and waiting with
the evidence a failure needs.

PYTEST_DONT_REWRITE: no asserts here."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

from kube.fixtures import kubectl

GROUP_PATH = "/apis/kompress.dev/v1alpha1"
FINAL = {"Succeeded", "Rejected", "Failed"}
STORAGE_LABEL = "kompress.dev/storage-credentials"


def get_mopt(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    return cluster.request("GET", f"{GROUP_PATH}/namespaces/{ns}/modeloptimizations/{name}")


def namespace_with_storage(cluster: Any, name: str, env: dict[str, str] | None) -> str:
    """A namespace; with `env`, the Secret `s3-credentials` holding it, labelled for the operator's policy."""
    kubectl(cluster, "create", "namespace", name)
    if env is not None:
        cluster.request("POST", f"/api/v1/namespaces/{name}/secrets", {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s3-credentials", "namespace": name, "labels": {STORAGE_LABEL: "true"}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in env.items()}})
    return name


def wait_until(check: Callable[[], Any], timeout: float, what: str, evidence: Callable[[], str],
               interval: float = 0.5) -> Any:
    """`check()`'s first truthy value; after `timeout` seconds an AssertionError naming `what`, with
    `evidence()` (logs, pod listings) to read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{evidence()}")
