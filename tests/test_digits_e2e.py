"""End to end on the digits CNN, trained here by the repository's script: labelled accuracy, gates, registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kompress.jobs.errors import ExitCode

from conftest import ROOT, example, run_cli, versions, write_spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_digits_cnn.py"), "--out-dir", str(out)],
                          capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heldOutAccuracy"] >= 0.97, result  # the CNN really learned the task
    return out


def digits_spec(tmp_path: Path, trained: Path, **gates: float) -> Path:
    doc = example("digits-int8.yaml")
    doc["spec"]["model"]["uri"] = str(trained / "digits-cnn.onnx")
    doc["spec"]["data"]["uri"] = str(trained / "digits-eval.npz")
    doc["spec"]["promotion"]["registry"] = str(tmp_path / "registry")
    doc["spec"]["target"]["iterations"] = 50
    doc["spec"]["gates"].update(gates)
    return write_spec(tmp_path / "digits.yaml", doc)


def test_digits_int8_is_promoted_once(tmp_path: Path, trained: Path) -> None:
    spec = digits_spec(tmp_path, trained)
    proc = run_cli("run", str(spec), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["outcome"] == "succeeded"
    base, opt = report["baseline"], report["optimized"]
    assert base["quality"]["accuracy"] >= 0.97
    assert base["quality"]["accuracy"] - opt["quality"]["accuracy"] <= 0.01
    assert report["comparison"]["sizeReduction"] >= 3.5
    assert report["data"]["labels"] is True and report["data"]["evaluationSamples"] == 260
    assert report["steps"][0]["details"]["calibration"] == "minmax"
    assert report["environment"]["libraries"]["onnxruntime"]
    assert len(report["model"]["sha256"]) == 64 and len(report["data"]["sha256"]) == 64
    assert versions(tmp_path / "registry", "digits") == ["1"]
    assert "accuracy" in proc.stdout and "verdict: SUCCEEDED" in proc.stdout  # the console table
    again = run_cli("run", str(spec), "-o", str(tmp_path / "out2"), cwd=tmp_path)
    assert again.returncode == ExitCode.SUCCESS, again.stderr
    assert versions(tmp_path / "registry", "digits") == ["1"]
    second = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert second["promotion"]["created"] is False and second["promotion"]["version"] == 1


def test_gates_that_cannot_pass_reject_and_promote_nothing(tmp_path: Path, trained: Path) -> None:
    spec = digits_spec(tmp_path, trained, minSpeedup=1000.0)
    proc = run_cli("run", str(spec), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == ExitCode.GATES_REJECTED, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["outcome"] == "rejected" and report["gates"]["passed"] is False
    failed = [g for g in report["gates"]["results"] if not g["passed"]]
    assert [g["gate"] for g in failed] == ["minSpeedup"] and failed[0]["measured"] < 1000
    assert report["promotion"]["promoted"] is False
    assert not (tmp_path / "registry").exists()
    assert "gate FAIL  minSpeedup" in proc.stdout


def test_manual_policy_waits_for_approval(tmp_path: Path, trained: Path) -> None:
    spec = digits_spec(tmp_path, trained)
    doc = json.loads(json.dumps(__import__("yaml").safe_load(spec.read_text())))
    doc["spec"]["promotion"]["policy"] = "manual"
    write_spec(spec, doc)
    proc = run_cli("run", str(spec), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == ExitCode.SUCCESS
    assert "awaiting approval" in proc.stdout and not (tmp_path / "registry").exists()
    approved = run_cli("run", str(spec), "-o", str(tmp_path / "out"), "--approve", cwd=tmp_path)
    assert approved.returncode == ExitCode.SUCCESS and versions(tmp_path / "registry", "digits") == ["1"]
