"""Operator metrics on /metrics (Prometheus naming: base units, _total)."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from kompress.jobs import metrics as result_metrics

REGISTRY = CollectorRegistry()
RECONCILES = Counter("kompress_reconciles_total", "Reconciles of ModelOptimization resources.", registry=REGISTRY)
RECONCILE_ERRORS = Counter("kompress_reconcile_errors_total", "Reconciles that raised an error.", registry=REGISTRY)
JOBS_STARTED = Counter("kompress_jobs_started_total", "Engine Jobs created.", registry=REGISTRY)
JOBS_FINISHED = Counter("kompress_jobs_finished_total", "Engine Jobs finished, by result.", ["result"],
                        registry=REGISTRY)
OPTIMIZATIONS = Counter("kompress_optimizations_total", "Optimizations finished, by result.", ["result"],
                        registry=REGISTRY)
PROMOTIONS = Counter("kompress_promotions_total", "Model versions promoted to a registry.", registry=REGISTRY)
for _result in ("succeeded", "rejected", "failed"):  # born at 0, so increase() sees the first one
    OPTIMIZATIONS.labels(result=_result)
    JOBS_FINISHED.labels(result=_result)
DURATION = Histogram("kompress_optimization_duration_seconds", "From Job creation to a final phase.",
                     buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400), registry=REGISTRY)


class ResultMirror:
    """The latest results of every ModelOptimization the operator has seen, as gauges (scraping the operator
    is enough); a resource's series go when the resource goes."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], list[result_metrics.Series]] = {}
        self._lock = threading.Lock()

    def update(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        blocks = {k: status[k] for k in ("baseline", "result") if status.get(k)}
        if not blocks:
            return
        passed = (status.get("gates") or {}).get("passed")
        items = list(result_metrics.series(namespace, name, blocks, passed))
        with self._lock:
            self._items[(namespace, name)] = items

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._items.pop((namespace, name), None)

    def collect(self) -> list[Any]:
        with self._lock:
            items = [s for group in self._items.values() for s in group]
        return result_metrics.to_families(items)


MIRROR = ResultMirror()
REGISTRY.register(MIRROR)  # type: ignore[arg-type]


def serve(port: int) -> None:
    start_http_server(port, addr="0.0.0.0", registry=REGISTRY)
