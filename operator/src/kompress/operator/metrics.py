"""Operator metrics on /metrics (Prometheus naming: base units, _total)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from pydantic import ValidationError

from kompress.jobs.report import metrics as result_metrics
from kompress.jobs.report.model import MetricsBlock, ResultBlock

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
COUNTERS = {"kompress_jobs_started_total": JOBS_STARTED, "kompress_jobs_finished_total": JOBS_FINISHED,
            "kompress_optimizations_total": OPTIMIZATIONS, "kompress_promotions_total": PROMOTIONS}
DURATION = Histogram("kompress_optimization_duration_seconds", "From Job creation to a final phase.",
                     buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400), registry=REGISTRY)


def count(metric: str, labels: dict[str, str] | None = None) -> None:
    """Increment one of `COUNTERS` (what a reconcile decision's Count effect asks for)."""
    counter = COUNTERS[metric]
    (counter.labels(**labels) if labels else counter).inc()


class ResultMirror:
    """The latest results of every ModelOptimization the operator has seen, as gauges (scraping the operator
    is enough); a resource's series go when the resource goes."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], list[result_metrics.Series]] = {}
        self._lock = threading.Lock()

    def update(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            baseline = MetricsBlock.model_validate(status["baseline"]) if status.get("baseline") else None
            result = ResultBlock.model_validate(status["result"]) if status.get("result") else None
        except ValidationError as err:  # e.g. written by another version of the operator: keep what we had
            logging.getLogger(__name__).warning("%s/%s: status not mirrored: %s", namespace, name, err)
            return
        if baseline is None and result is None:
            return
        passed = (status.get("gates") or {}).get("passed")
        items = list(result_metrics.series(namespace, name, baseline, result, passed))
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
