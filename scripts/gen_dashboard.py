"""Generate the Grafana dashboard (charts/kompress/dashboards/kompress.json) from a short panel list.

Run: python scripts/gen_dashboard.py [--check]
Every PromQL expression here is executed against a real Prometheus by tests/test_metrics_e2e.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "charts" / "kompress" / "dashboards" / "kompress.json"
SEL = 'namespace=~"$namespace", optimization=~"$optimization"'
DS = {"type": "prometheus", "uid": "${datasource}"}

# (title, kind, unit, [(expr, legend)], width, height)
FLEET = [
    ("Optimizations by result (1h)", "stat", "none",
     [("sum by (result) (increase(kompress_optimizations_total[1h]))", "{{result}}")], 8, 5),
    ("Promotions (1h)", "stat", "none", [("sum(increase(kompress_promotions_total[1h]))", "promotions")], 4, 5),
    ("Gates passed", "stat", "none",
     [(f"sum(kompress_optimization_gates_passed{{{SEL}}})", "passed"),
      (f"count(kompress_optimization_gates_passed{{{SEL}}} == 0) or vector(0)", "failed")], 4, 5),
    ("Reconcile errors (rate)", "timeseries", "ops",
     [("sum(rate(kompress_reconcile_errors_total[5m]))", "errors/s")], 8, 5),
    ("Optimization duration p90", "stat", "s",
     [("histogram_quantile(0.9, sum by (le) (rate(kompress_optimization_duration_seconds_bucket[1h])))"
       " or histogram_quantile(0.9, sum by (le) (kompress_optimization_duration_seconds_bucket))", "p90")], 6, 5),
    ("Jobs started", "stat", "none", [("sum(kompress_jobs_started_total)", "jobs")], 6, 5),
    ("Reconciles", "stat", "none", [("sum(kompress_reconciles_total)", "reconciles")], 6, 5),
    ("Energy of optimization runs", "stat", "joule",
     [(f"sum(kompress_optimization_energy_joules{{{SEL}}})", "joules")], 6, 5),
]
PER_OPTIMIZATION = [
    ("Latency quantiles: baseline vs optimized", "timeseries", "s",
     [(f"kompress_model_latency_seconds{{{SEL}}}", "{{optimization}} {{variant}} q{{quantile}}")], 12, 8),
    ("Speedup", "bargauge", "x",
     [(f"kompress_optimization_speedup_ratio{{{SEL}}}", "{{namespace}}/{{optimization}}")], 6, 8),
    ("Size reduction", "bargauge", "x",
     [(f"kompress_optimization_size_reduction_ratio{{{SEL}}}", "{{namespace}}/{{optimization}}")], 6, 8),
    ("Model size", "bargauge", "bytes",
     [(f"kompress_model_size_bytes{{{SEL}}}", "{{optimization}} {{variant}}")], 8, 8),
    ("Accuracy drop", "bargauge", "percentunit",
     [(f"kompress_optimization_accuracy_drop_ratio{{{SEL}}}", "{{namespace}}/{{optimization}}")], 8, 8),
    ("Quality (accuracy or cosine similarity)", "bargauge", "percentunit",
     [(f"kompress_model_accuracy_ratio{{{SEL}}}", "{{optimization}} {{variant}} {{metric}}")], 8, 8),
    ("Energy per inference", "bargauge", "joule",
     [(f"kompress_model_inference_energy_joules{{{SEL}}}", "{{optimization}} {{variant}} ({{method}})")], 8, 8),
    ("Energy saved per inference", "bargauge", "percentunit",
     [(f'1 - (kompress_model_inference_energy_joules{{{SEL}, variant="optimized"}} / ignoring(variant) '
       f'kompress_model_inference_energy_joules{{{SEL}, variant="baseline"}})', "{{namespace}}/{{optimization}}")],
     8, 8),
    ("Throughput", "bargauge", "reqps",
     [(f"kompress_model_throughput_inferences_per_second{{{SEL}}}", "{{optimization}} {{variant}}")], 8, 8),
    ("Peak memory", "bargauge", "bytes",
     [(f"kompress_model_peak_memory_bytes{{{SEL}}}", "{{optimization}} {{variant}}")], 8, 8),
    ("Quality by evaluation set (point)", "bargauge", "none",
     [(f'kompress_slice_quality_ratio{{{SEL}, estimate="point"}}', "{{optimization}} {{slice}} {{metric}}")], 12, 10),
    ("Quality by evaluation set (worse bound of the 95% interval)", "bargauge", "none",
     [(f'kompress_slice_quality_ratio{{{SEL}, estimate="low", metric!~".*drop"}} or '
       f'kompress_slice_quality_ratio{{{SEL}, estimate="high", metric=~".*drop"}}',
       "{{optimization}} {{slice}} {{metric}}")], 12, 10),
]


def panel(pid: int, title: str, kind: str, unit: str, targets: list[tuple[str, str]], w: int, h: int,
          x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid, "type": kind, "title": title, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": leg,
                     "instant": kind != "timeseries"} for i, (e, leg) in enumerate(targets)],
    }


LANGUAGE_MODELS = [
    ("Decode tokens/s (batch 1)", "bargauge", "none",
     [(f"kompress_model_decode_tokens_per_second{{{SEL}}}", "{{optimization}} {{variant}}")], 8, 8),
    ("Time to first token", "bargauge", "s",
     [(f"kompress_model_time_to_first_token_seconds{{{SEL}}}", "{{optimization}} {{variant}}")], 8, 8),
    ("Perplexity increase", "bargauge", "percentunit",
     [(f"kompress_optimization_perplexity_increase_ratio{{{SEL}}}", "{{namespace}}/{{optimization}}")], 8, 8),
    ("Perplexity", "bargauge", "none",
     [(f"kompress_model_perplexity{{{SEL}}}", "{{optimization}} {{variant}}")], 8, 8),
    ("KL divergence from the float model", "bargauge", "none",
     [(f"kompress_model_kl_divergence{{{SEL}}}", "{{optimization}} {{variant}}")], 8, 8),
    ("Energy per generated token", "bargauge", "joule",
     [(f"kompress_model_token_energy_joules{{{SEL}}}", "{{optimization}} {{variant}} ({{method}})")], 8, 8),
]


def rows(pid: int, y: int, title: str, panels: list[tuple]) -> tuple[list[dict[str, Any]], int, int]:
    out = [{"id": pid, "type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
            "panels": []}]
    pid, y, x, row_h = pid + 1, y + 1, 0, 0
    for title_, kind, unit, targets, w, h in panels:
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        out.append(panel(pid, title_, kind, unit, targets, w, h, x, y))
        pid, x, row_h = pid + 1, x + w, max(row_h, h)
    return out, pid, y + row_h


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DS, "query": {"query": query, "refId": name},
            "definition": query, "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"text": "All", "value": "$__all"}, "sort": 1}


def dashboard() -> dict[str, Any]:
    fleet, pid, y = rows(1, 0, "Fleet", FLEET)
    per, pid, y = rows(pid, y, "Per optimization", PER_OPTIMIZATION)
    llm, _, _ = rows(pid, y, "Language models (text-generation)", LANGUAGE_MODELS)
    per += llm
    return {
        "uid": "kompress-overview", "title": "kompress: model optimizations", "tags": ["kompress"],
        "description": "Speed, size, quality and energy of every optimization; fleet health of the operator.",
        "editable": True, "graphTooltip": 1, "refresh": "30s", "schemaVersion": 39, "version": 1,
        "time": {"from": "now-24h", "to": "now"}, "timezone": "browser",
        "annotations": {"list": []},
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "pluginId": "prometheus"}],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1},
            variable("namespace", "Namespace", "label_values(kompress_model_size_bytes, namespace)"),
            variable("optimization", "Optimization",
                     'label_values(kompress_model_size_bytes{namespace=~"$namespace"}, optimization)'),
        ]},
        "panels": fleet + per,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file differs")
    args = parser.parse_args()
    text = json.dumps(dashboard(), indent=2) + "\n"
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/gen_dashboard.py", file=sys.stderr)
            sys.exit(1)
        return
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
