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
    allowed_image_prefixes: tuple[str, ...] = ()
    """Images a spec may name in resources.image besides the engine image (policy; empty: none)."""
    allowed_service_accounts: tuple[str, ...] = ()
    """ServiceAccounts a spec may name in resources.serviceAccountName (policy; empty: none)."""
    storage_secret_label: str | None = "kompress.dev/storage-credentials"
    """A Secret named by storageSecretRef must carry this label with value "true" (None: any Secret)."""

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
            allowed_image_prefixes=_list(os.environ.get("KOMPRESS_ALLOWED_IMAGE_PREFIXES")),
            allowed_service_accounts=_list(os.environ.get("KOMPRESS_ALLOWED_SERVICE_ACCOUNTS")),
            storage_secret_label=os.environ.get("KOMPRESS_STORAGE_SECRET_LABEL", cls.storage_secret_label) or None,
        )


def _list(value: str | None) -> tuple[str, ...]:
    """A comma-separated environment value (the chart joins its lists so)."""
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())
