"""Shared fixtures: a real S3-compatible server on loopback, spec builders and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from s3server import S3Server, start_s3_server

pytest_plugins = ["kube.fixtures"]  # kube_cluster: the real API server tier

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT / "jobs" / "src" / "kompress" / "jobs" / "datasets"
EXAMPLES = ROOT / "jobs" / "src" / "kompress" / "jobs" / "examples"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    if os.environ.get("KOMPRESS_REQUIRE_MINIO") == "1" and server.kind != "minio":
        server.stop()
        pytest.fail("KOMPRESS_REQUIRE_MINIO=1 but MinIO is not available (run .ci/build-minio.sh)")
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A boto3 client for the server, with the server's variables set for in-process engine calls."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    from kompress.jobs.io import storage

    storage.s3_client.cache_clear()
    yield boto3.client("s3")
    storage.s3_client.cache_clear()


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def write_spec(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "kompress.jobs.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def versions(registry: Path, model: str) -> list[str]:
    folder = registry / model
    return sorted(p.name for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
