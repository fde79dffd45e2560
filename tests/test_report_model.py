"""The report as a typed contract: a real run's report.json and termination summary validate against the
engine's models, the published schema matches them, and the summary stays parseable under Kubernetes' 4 KiB
termination-message cap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from kompress.jobs.errors import ExitCode
from kompress.jobs.report import render as report
from kompress.jobs.report.model import SCHEMA_VERSION, Environment, GateVerdict, OptimizationReport, RunSummary

from conftest import ROOT, example, run_cli, write_spec


def test_published_schema_matches_the_models() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_report_schema.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    schema = json.loads((ROOT / "jobs" / "src" / "kompress" / "jobs" / "schemas" / "report.schema.json").read_text())
    assert schema["properties"]["schemaVersion"]["const"] == SCHEMA_VERSION
    assert "RunSummary" in schema["$defs"]
    cli = run_cli("schema", "report", cwd=ROOT)
    assert json.loads(cli.stdout) == schema


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report-model")
    doc = example("digits-int8.yaml")
    doc["spec"]["promotion"]["registry"] = str(tmp / "registry")
    doc["spec"]["target"]["iterations"] = 20
    spec = write_spec(tmp / "digits.yaml", doc)
    proc = run_cli("run", str(spec), "-o", str(tmp / "out"), "--termination-log", str(tmp / "summary.json"),
                   cwd=tmp)
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr
    return tmp


def test_a_real_report_validates(digits_run: Path) -> None:
    raw = (digits_run / "out" / "report.json").read_text()
    rep = report.read_json(raw)
    assert rep.schema_version == SCHEMA_VERSION and rep.outcome == "succeeded"
    assert rep.to_json() == json.loads(raw)  # nothing lost or added in a round trip
    assert rep.signature is not None and rep.signature.inputs[0].name == "pixels"
    assert rep.comparison is not None and rep.comparison.quality_metric == "accuracy"
    blocks = rep.blocks()
    assert blocks is not None and blocks[1].speedup == rep.comparison.speedup


def test_the_summary_is_what_the_operator_parses(digits_run: Path) -> None:
    text = (digits_run / "summary.json").read_text()
    summary = RunSummary.model_validate_json(text)
    assert summary.outcome == "succeeded" and summary.gates_passed is True
    assert summary.result is not None and summary.result.size_reduction and summary.result.size_reduction > 1
    assert summary.baseline is not None and summary.baseline.accuracy is not None


def test_drift_is_an_error_not_a_silent_none() -> None:
    """A field the models do not know (a newer or broken writer) fails validation, naming the field."""
    with pytest.raises(ValidationError, match="speedUp"):
        RunSummary.model_validate({"outcome": "succeeded", "result": {"speedUp": 2.0}})
    with pytest.raises(ValidationError, match="schemaVersion"):
        RunSummary.model_validate({"schemaVersion": 99, "outcome": "failed"})


def test_a_long_failure_summary_stays_valid_json_under_the_cap() -> None:
    rep = OptimizationReport(api_version="kompress.dev/v1alpha1", name="x", started_at="2026-01-01T00:00:00+00:00",
                             spec={}, environment=Environment(platform="p", machine="m", seed=0, libraries={}),
                             message="m" * 10_000,
                             gates=GateVerdict(passed=False, failures=["f" * 3000] * 9))
    text = report.summary(rep)
    assert len(text) <= report.SUMMARY_LIMIT
    summary = RunSummary.model_validate_json(text)
    assert summary.message and summary.failures
