"""Operator metrics on /metrics (Prometheus naming: base units, _total)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, start_http_server

REGISTRY = CollectorRegistry()
RECONCILES = Counter("kompress_reconciles_total", "Reconciles of ModelOptimization resources.", registry=REGISTRY)
RECONCILE_ERRORS = Counter("kompress_reconcile_errors_total", "Reconciles that raised an error.", registry=REGISTRY)
JOBS_STARTED = Counter("kompress_jobs_started_total", "Engine Jobs created.", registry=REGISTRY)
JOBS_FINISHED = Counter("kompress_jobs_finished_total", "Engine Jobs finished, by result.", ["result"],
                        registry=REGISTRY)
OPTIMIZATIONS = Counter("kompress_optimizations_total", "Optimizations finished, by result.", ["result"],
                        registry=REGISTRY)
PROMOTIONS = Counter("kompress_promotions_total", "Model versions promoted to a registry.", registry=REGISTRY)


def serve(port: int) -> None:
    start_http_server(port, addr="0.0.0.0", registry=REGISTRY)
