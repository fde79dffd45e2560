"""Bad input: one clear line naming the problem, the invalid-input exit code, nothing promoted, no partial
files in the registry — through the real CLI, locally and against the real S3 server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kompress.jobs.errors import ExitCode

from conftest import DATASETS, example, run_cli, write_spec


def digits_doc(tmp_path: Path) -> dict[str, Any]:
    doc = example("digits-int8.yaml")
    doc["spec"]["model"]["uri"] = str(DATASETS / "digits-cnn.onnx")
    doc["spec"]["data"]["uri"] = str(DATASETS / "digits-eval.npz")
    doc["spec"]["promotion"]["registry"] = str(tmp_path / "registry")
    doc["spec"]["target"]["iterations"] = 10
    return doc


def assert_rejected(proc: Any, tmp_path: Path, *needles: str) -> str:
    assert proc.returncode == ExitCode.INVALID_INPUT, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kompress:")]
    assert errors, proc.stderr
    for needle in needles:
        assert needle in errors[-1], errors[-1]
    registry = tmp_path / "registry"
    assert not registry.exists() or not [p for p in registry.rglob("*") if p.is_file()]
    return errors[-1]


def run_doc(tmp_path: Path, doc: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    spec = write_spec(tmp_path / "spec.yaml", doc)
    return run_cli("run", str(spec), "-o", str(tmp_path / "out"), cwd=tmp_path, env=env, timeout=300)


def test_truncated_model(tmp_path: Path) -> None:
    cut = tmp_path / "truncated.onnx"
    raw = (DATASETS / "digits-cnn.onnx").read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    doc = digits_doc(tmp_path)
    doc["spec"]["model"]["uri"] = str(cut)
    assert_rejected(run_doc(tmp_path, doc), tmp_path, "model.uri", "truncated.onnx", "not a")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["outcome"] == "failed" and "truncated.onnx" in report["message"]


def test_not_an_onnx_file(tmp_path: Path) -> None:
    fake = tmp_path / "model.onnx"
    fake.write_text("this is a text file, not a model\n")
    doc = digits_doc(tmp_path)
    doc["spec"]["model"]["uri"] = str(fake)
    assert_rejected(run_doc(tmp_path, doc), tmp_path, "model.uri", "model.onnx")


def test_data_that_does_not_match_the_model(tmp_path: Path) -> None:
    bad = tmp_path / "words.npz"
    np.savez(bad, input_ids=np.zeros((10, 16), np.int64), labels=np.zeros(10, np.int64))
    doc = digits_doc(tmp_path)
    doc["spec"]["data"]["uri"] = str(bad)
    assert_rejected(run_doc(tmp_path, doc), tmp_path, "data.uri", "missing array 'pixels'")


def test_unknown_technique_and_negative_sparsity(tmp_path: Path) -> None:
    doc = digits_doc(tmp_path)
    doc["spec"]["techniques"] = [{"prune": {"sparsity": -0.2}}, {"compressify": {}}]
    proc = run_doc(tmp_path, doc)
    assert proc.returncode == ExitCode.INVALID_INPUT and "Traceback" not in proc.stderr
    assert "spec.techniques[0].prune.sparsity: Input should be greater than or equal to 0" in proc.stderr
    assert "spec.techniques[1]: unknown technique 'compressify'" in proc.stderr
    assert not (tmp_path / "registry").exists() and not (tmp_path / "out").exists()


def test_gpu_target_without_cuda(tmp_path: Path) -> None:
    doc = digits_doc(tmp_path)
    doc["spec"]["target"]["device"] = "gpu"
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: the error path cannot be exercised here")
    assert_rejected(run_doc(tmp_path, doc), tmp_path, "target.device", "no CUDA provider")


@pytest.mark.s3
def test_missing_s3_object(s3: Any, s3_server: Any, tmp_path: Path) -> None:
    s3.create_bucket(Bucket="bad-inputs")
    doc = digits_doc(tmp_path)
    doc["spec"]["model"]["uri"] = "s3://bad-inputs/models/absent.onnx"
    line = assert_rejected(run_doc(tmp_path, doc, s3_server.env()), tmp_path, "model.uri",
                           "s3://bad-inputs/models/absent.onnx does not exist")
    assert len(line) < 300


@pytest.mark.s3
def test_unreachable_endpoint(tmp_path: Path) -> None:
    doc = digits_doc(tmp_path)
    doc["spec"]["data"]["uri"] = "s3://data/digits-eval.npz"
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
           "AWS_DEFAULT_REGION": "us-east-1"}
    # an outage, not bad input: exit 4 (the Job controller retries the pod), the field and the cause named
    proc = run_doc(tmp_path, doc, env)
    assert proc.returncode == ExitCode.RUNTIME_FAILURE and "Traceback" not in proc.stderr, proc.stderr
    assert "data.uri" in proc.stderr and "cannot reach the S3 endpoint" in proc.stderr and "transient" in proc.stderr


@pytest.mark.s3
def test_unreachable_registry_promotes_nothing(s3: Any, s3_server: Any, tmp_path: Path) -> None:
    """The run itself works; the registry bucket does not exist: failure, no version anywhere."""
    doc = digits_doc(tmp_path)
    doc["spec"]["promotion"]["registry"] = "s3://no-such-registry-bucket/models"
    proc = run_doc(tmp_path, doc, s3_server.env())
    assert proc.returncode == ExitCode.INVALID_INPUT and "Traceback" not in proc.stderr
    assert "promotion.registry" in proc.stderr and "bucket does not exist" in proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["outcome"] == "failed" and not report.get("promotion")
