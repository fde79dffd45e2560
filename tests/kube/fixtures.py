"""Pytest fixtures and helpers for the Kubernetes tier.

In a test module (``tests/`` is on ``sys.path``, see ``conftest.py``)::

    from kube.fixtures import kubectl

    pytest_plugins = ["kube.fixtures"]  # registers the kube_cluster fixture once

``kube_cluster`` starts one loopback control plane (``cluster.py``) per test
session. Missing binaries fail the tests loudly instead of skipping them: run
``.ci/build-kube.sh`` first.

``node_cluster`` starts one real single-node cluster (``node.py``: containerd,
kubelet, kube-proxy, kube-scheduler; needs root and ``.ci/install-node.sh``)
per session. It imports the base image (pause + busybox) and every archive
named in ``$KOMPRESS_NODE_IMAGES`` (colon-separated OCI/docker archive paths).

PYTEST_DONT_REWRITE: no asserts here, so a module that imports ``kubectl``
before ``pytest_plugins`` loads this file draws no "already imported" warning.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent.parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from kube.cluster import Cluster, ClusterError, default_bin_dir, start_cluster  # noqa: E402
from kube.node import NodeCluster, start_node_cluster  # noqa: E402

REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
NODE_BINARIES = (*REQUIRED_BINARIES, "kube-scheduler", "kube-proxy", "kubelet")
NODE_IMAGES_ENV = "KOMPRESS_NODE_IMAGES"


def _cache_dir() -> Path:
    return Path(os.environ.get("KOMPRESS_CACHE") or str(Path.home() / ".cache" / "kompress"))


def kubectl_binary() -> str:
    """``$KUBECTL``, else ``/usr/bin/kubectl``, else ``$KOMPRESS_CACHE/bin/kubectl``, else PATH."""
    candidates = [os.environ.get("KUBECTL"), "/usr/bin/kubectl", str(_cache_dir() / "bin" / "kubectl")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("kubectl")
    if found:
        return found
    raise FileNotFoundError("kubectl not found: tried $KUBECTL, /usr/bin/kubectl, $KOMPRESS_CACHE/bin/kubectl and PATH")


def kubectl(
    cluster: Cluster, *args: str, input: str | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run kubectl against ``cluster`` (``--kubeconfig``); never raises on a non-zero exit."""
    argv = [kubectl_binary(), f"--kubeconfig={cluster.kubeconfig}", "--request-timeout=60s", *args]
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)


def missing_binaries(names: tuple[str, ...] = REQUIRED_BINARIES) -> list[Path]:
    bins = default_bin_dir()
    missing = []
    for name in names:
        path = bins / name
        if not (path.is_file() and os.access(path, os.X_OK)) and not (name == "etcd" and shutil.which("etcd")):
            missing.append(path)
    return missing


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One etcd + kube-apiserver + kube-controller-manager for the whole session."""
    missing = missing_binaries()
    if missing:
        pytest.fail(
            "Kubernetes test tier: missing " + ", ".join(map(str, missing)) + ": run .ci/build-kube.sh "
            "(or point KOMPRESS_KUBE_BIN / KOMPRESS_CACHE at the binaries)",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("kube")
    started = time.monotonic()
    try:
        cluster = start_cluster(workdir)
    except ClusterError as err:
        pytest.fail(f"Kubernetes test tier: the loopback cluster did not start: {err}", pytrace=False)
    print(f"kube_cluster: up in {time.monotonic() - started:.1f}s at {cluster.server} (workdir {workdir})")
    try:
        yield cluster
    finally:
        cluster.stop()


def kompress_image_archive() -> Path:
    """The slim kompress image built from the repository's Dockerfile by ``.ci/build-image.sh``."""
    return _cache_dir() / "images" / "kompress-slim.tar"


def node_images() -> list[Path]:
    """The extra image archives for ``node_cluster``: ``$KOMPRESS_NODE_IMAGES``, colon-separated, else the
    kompress image from ``.ci/build-image.sh`` when it was built (tests/test_node.py fails without it)."""
    if os.environ.get(NODE_IMAGES_ENV):
        return [Path(p) for p in os.environ[NODE_IMAGES_ENV].split(":") if p]
    return [kompress_image_archive()] if kompress_image_archive().exists() else []


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    """One real single-node cluster (pods run in containers) for the whole session."""
    missing = missing_binaries(NODE_BINARIES)
    if missing:
        pytest.fail(
            "node test tier: missing " + ", ".join(map(str, missing)) + ": run .ci/build-kube.sh",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("node")
    started = time.monotonic()
    try:
        cluster = start_node_cluster(workdir, images=node_images())
    except ClusterError as err:
        pytest.fail(f"node test tier: the node cluster did not start: {err}", pytrace=False)
    print(f"node_cluster: Node Ready in {time.monotonic() - started:.1f}s at {cluster.server} (workdir {workdir})")
    try:
        yield cluster
    finally:
        cluster.stop()
