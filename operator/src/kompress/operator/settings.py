"""Operator settings, from the environment the Helm chart sets."""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass

VERSION = importlib.metadata.version("kompress-operator")


@dataclass(frozen=True)
class Settings:
    engine_image: str = f"ghcr.io/kompress/kompress:{VERSION}"
    """Image of the engine Jobs (spec.resources.image overrides it)."""
    runs_uri: str | None = None
    """s3:// prefix for run outputs (report, optimized model); default: <promotion.registry>/.kompress-runs."""
    max_attempts: int = 3
    """Pods per Job before a runtime failure is final (the Job controller's backoff between them)."""
    metrics_port: int = 9090
    pushgateway_url: str | None = None
    """Passed to Jobs, which push their results there; the operator deletes a resource's group with it."""
    job_ttl_seconds: int | None = None
    """ttlSecondsAfterFinished of Jobs (None: keep them; they go with their resource)."""

    @classmethod
    def from_env(cls) -> Settings:
        ttl = os.environ.get("KOMPRESS_JOB_TTL_SECONDS")
        return cls(
            engine_image=os.environ.get("KOMPRESS_ENGINE_IMAGE", cls.engine_image),
            runs_uri=os.environ.get("KOMPRESS_RUNS_URI") or None,
            max_attempts=int(os.environ.get("KOMPRESS_MAX_ATTEMPTS", cls.max_attempts)),
            metrics_port=int(os.environ.get("KOMPRESS_METRICS_PORT", cls.metrics_port)),
            pushgateway_url=os.environ.get("KOMPRESS_PUSHGATEWAY_URL") or None,
            job_ttl_seconds=int(ttl) if ttl else None,
        )
