"""kopf wiring: thin handlers that hand every change to the Reconciler.

Run: kopf run --standalone --all-namespaces -m kompress.operator.handlers --liveness=http://0.0.0.0:8080/healthz
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import kopf

from kompress.operator import metrics
from kompress.operator.decide import FINAL
from kompress.operator.jobspec import GROUP, LABEL_NAME, PLURAL, VERSION
from kompress.operator.kube import KubeClient
from kompress.operator.reconciler import Reconciler
from kompress.operator.settings import Settings

RESOURCE = (GROUP, VERSION, PLURAL)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    # kopf's bookkeeping goes to annotations, so status holds only what kompress reports
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kompress.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kompress.dev")
    # Events: the reconciler posts its own with kopf.event (not filtered by level); kopf's log lines become
    # Events only with posting.loggers, and then only warnings and errors
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "kompress-operator"
    settings.posting.reporting_instance = "kompress-operator"
    settings.posting.event_name_prefix = "kompress-"
    settings.watching.server_timeout = 300
    memo.config = config = Settings.from_env()
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    logger.info("kompress operator started: engine image %s, runs %s", config.engine_image,
                config.runs_uri or "<registry>/.kompress-runs")


@kopf.on.login()
async def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's credentials, shared with the reconciler's client. Runs after startup, and again whenever kopf
    re-authenticates: the one Reconciler (which per-object memos share) then switches to the fresh client."""
    info = kopf.login_with_service_account(**kwargs)
    server = in_cluster_server()
    if info is not None and server:
        # kopf names the API server https://kubernetes.default.svc, which needs cluster DNS; client-go's
        # in-cluster config uses the address the kubelet puts in every pod's environment (found on a real node
        # without CoreDNS: the operator pod was up and could not reach the API)
        info = dataclasses.replace(info, server=server)
    info = info or kopf.login_with_kubeconfig(**kwargs)
    if info is not None:
        api = KubeClient.from_kopf(info)
        if "reconciler" in memo:
            await memo.reconciler.use(api)
        else:
            memo.reconciler = Reconciler(api, memo.config)
    return info


def in_cluster_server() -> str | None:
    """https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, as client-go's InClusterConfig builds it."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


async def _reconcile(memo: kopf.Memo, namespace: str, name: str) -> None:
    decision = await memo.reconciler.reconcile(namespace, name)
    if decision is not None and decision.retry_after:
        raise kopf.TemporaryError(decision.message or "retrying", delay=decision.retry_after)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def on_change(memo: kopf.Memo, namespace: str, name: str, **_: Any) -> None:
    await _reconcile(memo, namespace, name)


@kopf.timer(*RESOURCE, interval=20, initial_delay=10, idle=5,
            when=lambda status, **_: (status or {}).get("phase") not in FINAL)
async def safety_net(memo: kopf.Memo, namespace: str, name: str, **_: Any) -> None:
    """Catches what a missed watch event would leave behind (e.g. a Job finishing while we restarted)."""
    await _reconcile(memo, namespace, name)


@kopf.on.event(*RESOURCE)
async def on_resource_event(type: str | None, memo: kopf.Memo, namespace: str, name: str, **_: Any) -> None:
    """A deleted resource takes its series with it: from /metrics and from the Pushgateway."""
    if type != "DELETED":
        return
    metrics.MIRROR.forget(namespace, name)
    gateway = memo.config.pushgateway_url
    if gateway:
        from prometheus_client import delete_from_gateway

        try:
            delete_from_gateway(gateway, job="kompress", grouping_key={"namespace": namespace, "optimization": name})
        except OSError as err:
            logging.getLogger(__name__).warning("could not delete %s/%s from the Pushgateway: %s",
                                                namespace, name, err)


@kopf.on.event("", "v1", "pods", labels={LABEL_NAME: kopf.PRESENT})
async def on_pod_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A Job's pod changed: the node may say why it cannot run (image, Secret, scheduling, memory); the Job
    itself does not change then. The Job copies the resource's name into its pods' labels."""
    meta = body.get("metadata", {})
    name = (meta.get("labels") or {}).get(LABEL_NAME)
    if name and "reconciler" in memo:
        await memo.reconciler.reconcile(meta["namespace"], name)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_NAME: kopf.PRESENT})
async def on_job_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A Job changed: reconcile its owner (events go to the owner, whichever handler reconciles)."""
    meta = body.get("metadata", {})
    owners = [o for o in meta.get("ownerReferences", []) if o.get("kind") == "ModelOptimization"]
    if owners and "reconciler" in memo:
        await memo.reconciler.reconcile(meta["namespace"], owners[0]["name"])
