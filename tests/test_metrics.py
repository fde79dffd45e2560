"""Metric series, the dashboard's structure, the alert rules, and the engine's Pushgateway push against a
real Pushgateway (Debian's prometheus-pushgateway)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from promstack import Service, start_pushgateway

from kompress.jobs.report import metrics
from kompress.jobs.report.model import MetricsBlock, ResultBlock

from conftest import DATASETS, ROOT, example, run_cli, write_spec

DASHBOARD = ROOT / "charts" / "kompress" / "dashboards" / "kompress.json"
RULES = ROOT / "charts" / "kompress" / "rules" / "kompress-rules.yaml"


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    gateway = start_pushgateway(tmp_path_factory.mktemp("pushgateway"))
    yield gateway
    gateway.stop()


def test_series_names_units_and_labels() -> None:
    blocks = {"baseline": {"latencyP50Seconds": 0.018, "latencyP95Seconds": 0.02, "sizeBytes": 90,
                           "energyPerInferenceJoules": 0.3, "cosineSimilarity": 1.0},
              "result": {"latencyP50Seconds": 0.009, "sizeBytes": 22, "energyPerInferenceJoules": 0.15,
                         "cosineSimilarity": 0.99, "speedup": 2.0, "sizeReduction": 4.0, "accuracyDrop": 0.01,
                         "energyMethod": "rapl", "runEnergyJoules": 40.0}}
    items = list(metrics.series("ns", "opt", MetricsBlock.model_validate(blocks["baseline"]),
                                ResultBlock.model_validate(blocks["result"]), True))
    names = {s.name for s in items}
    assert names <= set(metrics.FAMILIES)
    for s in items:
        assert re.fullmatch(r"kompress_[a-z_]+_(seconds|bytes|joules|ratio|second|passed)", s.name), s.name
        assert set(s.labels) <= {"namespace", "optimization", "variant", "quantile", "metric", "method"}
    latency = {(s.labels["variant"], s.labels["quantile"]): s.value for s in items
               if s.name == "kompress_model_latency_seconds"}
    assert latency == {("baseline", "0.5"): 0.018, ("baseline", "0.95"): 0.02, ("optimized", "0.5"): 0.009}
    energy = [s for s in items if s.name == "kompress_model_inference_energy_joules"]
    assert {s.labels["method"] for s in energy} == {"rapl"}
    assert next(s for s in items if s.name == "kompress_optimization_gates_passed").value == 1.0


def test_dashboard_is_generated_and_well_formed() -> None:
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_dashboard.py"), "--check"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            refs = [t["refId"] for t in p["targets"]]
            assert refs and len(refs) == len(set(refs)) and all(t["expr"] for t in p["targets"])
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"kompress_[a-z_]+", e)}
    exported = set(metrics.FAMILIES) | {"kompress_optimizations_total", "kompress_promotions_total",
                                        "kompress_reconcile_errors_total", "kompress_reconciles_total",
                                        "kompress_jobs_started_total", "kompress_optimization_duration_seconds_bucket"}
    assert used <= exported, used - exported


def test_alert_rules_pass_promtool() -> None:
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "SUCCESS: 3 rules found" in out.stdout, out.stdout + out.stderr


def pushed(gateway: Service, optimization: str) -> dict[str, float]:
    out = {}
    for line in gateway.get("/metrics").splitlines():
        if line.startswith("kompress_") and f'optimization="{optimization}"' in line:
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_engine_pushes_and_a_rerun_replaces_its_group(pushgateway: Service, tmp_path: Path) -> None:
    doc = example("digits-int8.yaml")
    doc["spec"]["model"]["uri"] = str(DATASETS / "digits-cnn.onnx")
    doc["spec"]["data"]["uri"] = str(DATASETS / "digits-eval.npz")
    doc["spec"]["target"]["iterations"] = 10
    del doc["spec"]["promotion"]
    spec = write_spec(tmp_path / "d.yaml", doc)
    first = run_cli("run", str(spec), "-o", str(tmp_path / "a"), "--namespace", "team-x",
                    "--pushgateway", pushgateway.url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    report: dict[str, Any] = json.loads((tmp_path / "a" / "report.json").read_text())
    series = pushed(pushgateway, "digits-int8")
    key = ('kompress_optimization_speedup_ratio{instance="",job="kompress",namespace="team-x",'
           'optimization="digits-int8"}')
    assert series[key] == pytest.approx(report["comparison"]["speedup"])
    acc = [k for k in series if k.startswith("kompress_model_accuracy_ratio") and 'metric="accuracy"' in k]
    assert len(acc) == 2 and not [k for k in series if "instance=" in k and 'instance=""' not in k]
    # a re-run with a different recipe replaces the whole group: no series of the first run lingers
    doc["spec"]["techniques"] = [{"quantize": {"method": "dynamic", "perChannel": False}}]
    write_spec(spec, doc)
    second = run_cli("run", str(spec), "-o", str(tmp_path / "b"), "--namespace", "team-x",
                     "--pushgateway", pushgateway.url, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    report2 = json.loads((tmp_path / "b" / "report.json").read_text())
    series = pushed(pushgateway, "digits-int8")
    assert series[key] == pytest.approx(report2["comparison"]["speedup"])
    assert len([k for k in series if k.startswith("kompress_optimization_speedup_ratio")]) == 1


def test_unreachable_pushgateway_warns_without_failing_the_run(tmp_path: Path) -> None:
    doc = example("digits-int8.yaml")
    doc["spec"]["model"]["uri"] = str(DATASETS / "digits-cnn.onnx")
    doc["spec"]["data"]["uri"] = str(DATASETS / "digits-eval.npz")
    doc["spec"]["target"]["iterations"] = 5
    del doc["spec"]["promotion"]
    proc = run_cli("run", str(write_spec(tmp_path / "d.yaml", doc)), "-o", str(tmp_path / "o"),
                   "--pushgateway", "http://127.0.0.1:9", cwd=tmp_path)
    assert proc.returncode == 0 and "warning: pushing metrics" in proc.stderr


def test_chart_renders_the_same_rules_as_a_prometheus_rule() -> None:
    import os

    import yaml

    helm = Path(os.environ.get("KOMPRESS_CACHE") or Path.home() / ".cache" / "kompress") / "bin" / "helm"
    if not helm.exists():
        pytest.fail(f"{helm} missing: run .ci/install-kube-tools.sh (make servers)", pytrace=False)
    out = subprocess.run([str(helm), "template", "k", str(ROOT / "charts" / "kompress"),
                          "--set", "metrics.prometheusRule.enabled=true"], capture_output=True, text=True, check=True)
    rules = [d for d in yaml.safe_load_all(out.stdout) if d and d.get("kind") == "PrometheusRule"]
    assert len(rules) == 1 and rules[0]["spec"] == yaml.safe_load(RULES.read_text())


def test_operator_mirror_reads_the_status_blocks() -> None:
    """The operator's /metrics mirror parses status.baseline/result through the engine's typed blocks; a status
    it cannot parse keeps the series it had; a deleted resource's series go."""
    from kompress.operator.metrics import ResultMirror

    mirror = ResultMirror()
    status = {"baseline": {"latencyP50Seconds": 0.018, "sizeBytes": 90, "cosineSimilarity": 1.0},
              "result": {"latencyP50Seconds": 0.009, "sizeBytes": 22, "speedup": 2.0, "energyMethod": "rapl"},
              "gates": {"passed": False, "failures": ["minSpeedup"]}}
    mirror.update("ns", "opt", status)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in mirror.collect() for s in fam.samples}
    assert samples[("kompress_optimization_speedup_ratio", (("namespace", "ns"), ("optimization", "opt")))] == 2.0
    assert samples[("kompress_optimization_gates_passed", (("namespace", "ns"), ("optimization", "opt")))] == 0.0
    mirror.update("ns", "opt", {"result": {"speedup": "fast"}})
    assert len(mirror.collect()) == len({k[0] for k in samples})
    mirror.forget("ns", "opt")
    assert mirror.collect() == []
