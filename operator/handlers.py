"""kopf wiring: thin handlers that hand every change to the Reconciler.

Run: kopf run --standalone --all-namespaces -m kompress.operator.handlers --liveness=http://0.0.0.0:8080/healthz
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kompress.operator import metrics
from kompress.operator.jobspec import GROUP, LABEL_NAME, PLURAL, VERSION
from kompress.operator.kube import KubeClient
from kompress.operator.reconciler import FINAL, Reconciler
from kompress.operator.settings import Settings

RESOURCE = (GROUP, VERSION, PLURAL)
_state: dict[str, Any] = {}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    # kopf's bookkeeping goes to annotations, so status holds only what kompress reports
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kompress.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kompress.dev")
    settings.posting.level = logging.WARNING  # only problems of kopf itself become Events; ours are explicit
    settings.watching.server_timeout = 300
    config = Settings.from_env()
    _state["settings"] = config
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    logger.info("kompress operator started: engine image %s, runs %s", config.engine_image,
                config.runs_uri or "<registry>/.kompress-runs")


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is not None:
        _state["reconciler"] = Reconciler(KubeClient.from_kopf(info), _state.get("settings") or Settings.from_env())
    return info


async def _reconcile(namespace: str, name: str) -> None:
    outcome = await _state["reconciler"].reconcile(namespace, name)
    if outcome is not None and outcome.retry_after:
        raise kopf.TemporaryError(outcome.status.get("message", "retrying"), delay=outcome.retry_after)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def on_change(namespace: str, name: str, **_: Any) -> None:
    await _reconcile(namespace, name)


@kopf.timer(*RESOURCE, interval=20, initial_delay=10, idle=5,
            when=lambda status, **_: (status or {}).get("phase") not in FINAL)
async def safety_net(namespace: str, name: str, **_: Any) -> None:
    """Catches what a missed watch event would leave behind (e.g. a Job finishing while we restarted)."""
    await _reconcile(namespace, name)


@kopf.on.event(*RESOURCE)
async def on_resource_event(type: str | None, namespace: str, name: str, **_: Any) -> None:
    """A deleted resource takes its series with it: from /metrics and from the Pushgateway."""
    if type != "DELETED":
        return
    metrics.MIRROR.forget(namespace, name)
    gateway = (_state.get("settings") or Settings()).pushgateway_url
    if gateway:
        from prometheus_client import delete_from_gateway

        try:
            delete_from_gateway(gateway, job="kompress", grouping_key={"namespace": namespace, "optimization": name})
        except OSError as err:
            logging.getLogger(__name__).warning("could not delete %s/%s from the Pushgateway: %s",
                                                namespace, name, err)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_NAME: kopf.PRESENT})
async def on_job_event(body: kopf.Body, **_: Any) -> None:
    if "reconciler" not in _state:
        return
    meta = body.get("metadata", {})
    owners = [o for o in meta.get("ownerReferences", []) if o.get("kind") == "ModelOptimization"]
    if owners:
        await _state["reconciler"].reconcile(meta["namespace"], owners[0]["name"])
