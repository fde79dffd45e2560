"""Reconcile one ModelOptimization: ensure its Job, follow it, read the result, apply gates, promote, and
write status. Idempotent: every call derives what to do from the API objects, never from memory, so an
operator restart or a repeated event changes nothing that was already done."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kompress.jobs import gates, model_io, registry, storage
from kompress.jobs.errors import KompressError
from kompress.jobs.spec import OptimizationSpec
from kompress.operator import conditions as cond
from kompress.operator import metrics
from kompress.operator.jobspec import GROUP, PLURAL, VERSION, build_job, job_name, run_key
from kompress.operator.kube import ApiError, KubeClient
from kompress.operator.settings import Settings

FINAL = ("Succeeded", "Rejected", "Failed")


@dataclass
class Outcome:
    """What one reconcile decided: the status patch and the events to post."""

    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    retry_after: float | None = None


def _seconds_between(start: str, end: str | None) -> float:
    import datetime as dt

    def parse(t: str) -> dt.datetime:
        return dt.datetime.fromisoformat(t.replace("Z", "+00:00"))

    stop = parse(end) if end else dt.datetime.now(dt.UTC)
    return max(0.0, (stop - parse(start)).total_seconds())


def resource_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


class Reconciler:
    def __init__(self, api: KubeClient, settings: Settings) -> None:
        self.api = api
        self.settings = settings
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def reconcile(self, namespace: str, name: str) -> Outcome | None:
        """Reconcile the current state of namespace/name (fetched fresh); None if it is gone."""
        lock = self._locks.setdefault((namespace, name), asyncio.Lock())
        async with lock:
            try:
                body = await self.api.get(resource_path(namespace, name))
            except ApiError as err:
                if err.status == 404:
                    self._locks.pop((namespace, name), None)
                    metrics.MIRROR.forget(namespace, name)
                    return None
                raise
            metrics.RECONCILES.inc()
            try:
                outcome = await self._decide(body)
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                raise
            await self._apply(body, outcome)
            merged = (body.get("status") or {}) | outcome.status
            metrics.MIRROR.update(namespace, name, merged)
            old_phase = (body.get("status") or {}).get("phase")
            if merged.get("phase") in FINAL and old_phase not in FINAL and merged.get("startedAt"):
                metrics.DURATION.observe(_seconds_between(merged["startedAt"], merged.get("finishedAt")))
            return outcome

    async def _apply(self, body: dict[str, Any], outcome: Outcome) -> None:
        meta = body["metadata"]
        old = body.get("status") or {}
        patch = {k: v for k, v in outcome.status.items() if old.get(k) != v}
        if patch:
            await self.api.merge_patch(resource_path(meta["namespace"], meta["name"]) + "/status", {"status": patch})
        for type_, reason, message in outcome.events:
            await self._event(body, type_, reason, message)

    async def _event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        now = cond.now()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelOptimization",
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": type_, "reason": reason, "message": message[:1024], "source": {"component": "kompress-operator"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": "kompress.dev/operator", "reportingInstance": "kompress-operator",
        }
        with contextlib.suppress(ApiError):  # an event lost is not worth failing a reconcile for
            await self.api.create(f"/api/v1/namespaces/{meta['namespace']}/events", event)

    # ---- decisions -------------------------------------------------------------------------------------

    async def _decide(self, body: dict[str, Any]) -> Outcome:
        meta = body["metadata"]
        gen = int(meta.get("generation", 1))
        status = body.get("status") or {}
        conds: list[dict[str, Any]] = list(status.get("conditions", []))
        out = Outcome()

        def finish(phase: str, **extra: Any) -> Outcome:
            out.status.update(phase=phase, conditions=conds, observedGeneration=gen, **extra)
            return out

        try:
            spec = OptimizationSpec.model_validate(body.get("spec") or {})
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            msg = f"invalid spec: {problems}"
            conds = cond.set_condition(conds, "Accepted", False, "InvalidSpec", msg, gen)
            conds = cond.set_condition(conds, "Stalled", True, "InvalidSpec", msg, gen)
            conds = cond.set_condition(conds, "Ready", False, "InvalidSpec", msg, gen)
            if status.get("phase") != "Failed":
                out.events.append(("Warning", "InvalidSpec", msg))
            return finish("Failed", message=msg)
        if spec.promotion and not spec.promotion.registry.startswith("s3://"):
            msg = ("spec.promotion.registry must be an s3:// URI in a cluster (the Job cannot write to the "
                   f"operator's disk), got {spec.promotion.registry!r}")
            conds = cond.set_condition(conds, "Accepted", False, "RegistryNotShared", msg, gen)
            conds = cond.set_condition(conds, "Stalled", True, "RegistryNotShared", msg, gen)
            if status.get("phase") != "Failed":
                out.events.append(("Warning", "RegistryNotShared", msg))
            return finish("Failed", message=msg)

        key = run_key(spec)
        jname = job_name(meta["name"], meta["uid"], key)
        conds = cond.set_condition(conds, "Accepted", True, "Valid", "spec accepted", gen)
        job = await self._get_job(meta["namespace"], jname)
        if job is None:
            manifest = build_job(body, spec, self.settings)
            try:
                job = await self.api.create(f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs", manifest)
                metrics.JOBS_STARTED.inc()
                out.events.append(("Normal", "JobCreated", f"created Job {jname}"))
            except ApiError as err:
                if err.status != 409:  # 409: created by an earlier attempt; adopt it
                    raise
                job = await self._get_job(meta["namespace"], jname)
            conds = cond.set_condition(conds, "JobRunning", False, "JobPending", f"Job {jname} created", gen)
            conds = cond.set_condition(conds, "Ready", False, "Running", "optimization in progress", gen)
            conds = cond.set_condition(conds, "Stalled", False, "Progressing", "", gen)
            return finish("Pending", jobName=jname, runKey=key, startedAt=status.get("startedAt") or cond.now(),
                          attempts=1, message=f"Job {jname} created")

        job_status = job.get("status") or {}
        job_conds = {c["type"]: c for c in job_status.get("conditions", []) if c.get("status") == "True"}
        attempts = int(job_status.get("failed", 0)) + int(job_status.get("active", 0)) + \
            int(job_status.get("succeeded", 0))
        base = {"jobName": jname, "runKey": key, "attempts": max(attempts, 1),
                "startedAt": status.get("startedAt") or cond.now()}
        if "Complete" not in job_conds and "Failed" not in job_conds:
            pods = await self._pods(meta["namespace"], jname)
            running = any((p.get("status") or {}).get("phase") == "Running" for p in pods)
            conds = cond.set_condition(conds, "JobRunning", running, "PodRunning" if running else "PodPending",
                                       f"Job {jname}: {'running' if running else 'waiting for a pod'}", gen)
            conds = cond.set_condition(conds, "Ready", False, "Running", "optimization in progress", gen)
            conds = cond.set_condition(conds, "Stalled", False, "Progressing", "", gen)
            if running and status.get("phase") != "Running":
                out.events.append(("Normal", "JobRunning", f"Job {jname} is running"))
            return finish("Running" if running else "Pending", **base)

        summary, exit_code = await self._summary(meta["namespace"], jname)
        conds = cond.set_condition(conds, "JobRunning", False, "JobFinished", f"Job {jname} finished", gen)
        finished = status.get("finishedAt") if status.get("runKey") == key else None
        base["finishedAt"] = finished or cond.now()
        completed = "Complete" in job_conds or summary.get("outcome") in ("succeeded", "rejected")
        if not completed:
            message = summary.get("message") or (job_conds.get("Failed") or {}).get("message") or "Job failed"
            permanent = exit_code == 2
            reason = "InvalidInput" if permanent else "RetriesExhausted"
            conds = cond.set_condition(conds, "Evaluated", False, reason, message, gen)
            conds = cond.set_condition(conds, "Ready", False, reason, message, gen)
            conds = cond.set_condition(conds, "Stalled", True, reason, message, gen)
            if status.get("phase") != "Failed":
                out.events.append(("Warning", reason, message))
                metrics.JOBS_FINISHED.labels(result="failed").inc()
                metrics.OPTIMIZATIONS.labels(result="failed").inc()
            return finish("Failed", message=message, **base)

        result = summary.get("result") or {}
        out.status.update(baseline=summary.get("baseline") or {}, result=result,
                          reportUri=summary.get("reportUri"))
        conds = cond.set_condition(conds, "Evaluated", True, "Measured", "baseline and result measured", gen)
        verdict = gates.evaluate(spec.gates, result)
        out.status["gates"] = {"passed": verdict["passed"], "failures": verdict["failures"]}
        first_time = status.get("phase") not in FINAL or status.get("runKey") != key
        if first_time and status.get("phase") != "Evaluating":
            metrics.JOBS_FINISHED.labels(result=summary.get("outcome", "succeeded")).inc()
        if not verdict["passed"]:
            msg = "; ".join(verdict["failures"])
            conds = cond.set_condition(conds, "GatesPassed", False, "GatesFailed", msg, gen)
            conds = cond.set_condition(conds, "Promoted", False, "GatesFailed", "not promoted: gates failed", gen)
            conds = cond.set_condition(conds, "Ready", False, "GatesFailed", msg, gen)
            conds = cond.set_condition(conds, "Stalled", True, "GatesFailed", msg, gen)
            if status.get("phase") != "Rejected":
                out.events.append(("Warning", "GatesFailed", msg))
                metrics.OPTIMIZATIONS.labels(result="rejected").inc()
            return finish("Rejected", message=f"gates failed: {msg}", **base)
        conds = cond.set_condition(conds, "GatesPassed", True, "AllGatesPassed",
                                   f"{len(verdict['results'])} gate(s) passed", gen)
        conds = cond.set_condition(conds, "Stalled", False, "Progressing", "", gen)
        promo = spec.promotion
        if promo is None:
            conds = cond.set_condition(conds, "Promoted", False, "NotConfigured", "no promotion configured", gen)
            conds = cond.set_condition(conds, "Ready", True, "Optimized", "gates passed", gen)
            if first_time:
                metrics.OPTIMIZATIONS.labels(result="succeeded").inc()
            return finish("Succeeded", message="gates passed (no promotion configured)", **base)
        if promo.policy == "manual" and not promo.approved:
            msg = "gates passed; set spec.promotion.approved: true to promote"
            conds = cond.set_condition(conds, "Promoted", False, "AwaitingApproval", msg, gen)
            conds = cond.set_condition(conds, "Ready", False, "AwaitingApproval", msg, gen)
            if status.get("message") != msg:
                out.events.append(("Normal", "AwaitingApproval", msg))
            return finish("Evaluating", message=msg, **base)
        promoted = cond.get(conds, "Promoted")
        if status.get("promotedTo") and status.get("runKey") == key and promoted and promoted["status"] == "True":
            return finish("Succeeded", **base)
        try:
            secret = await self._secret_values(meta["namespace"], spec)
            result_promo = await asyncio.to_thread(self._promote, summary, spec, meta["uid"], secret)
        except KompressError as err:
            msg = f"promotion failed: {err}"
            conds = cond.set_condition(conds, "Promoted", False, "PromotionFailed", msg, gen)
            conds = cond.set_condition(conds, "Ready", False, "PromotionFailed", msg, gen)
            out.events.append(("Warning", "PromotionFailed", msg))
            out.retry_after = 30
            return finish("Evaluating", message=msg, **base)
        verb = "promoted" if result_promo["created"] else "already promoted"
        msg = f"{verb} to {result_promo['uri']}"
        conds = cond.set_condition(conds, "Promoted", True, "Promoted", msg, gen)
        conds = cond.set_condition(conds, "Ready", True, "Promoted", msg, gen)
        out.events.append(("Normal", "Promoted", msg))
        if result_promo["created"]:
            metrics.PROMOTIONS.inc()
        if first_time:
            metrics.OPTIMIZATIONS.labels(result="succeeded").inc()
        return finish("Succeeded", message=msg, promotedTo=result_promo["uri"],
                      promotedVersion=result_promo["version"], **base)

    # ---- helpers -----------------------------------------------------------------------------------------

    async def _get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.api.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def _pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        pods = await self.api.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": f"job-name={job}"})
        return sorted(pods.get("items", []), key=lambda p: p["metadata"].get("creationTimestamp", ""))

    async def _summary(self, namespace: str, job: str) -> tuple[dict[str, Any], int | None]:
        """The engine's summary from the newest finished pod's termination message, and its exit code."""
        for pod in reversed(await self._pods(namespace, job)):
            for cs in (pod.get("status") or {}).get("containerStatuses", []):
                term = (cs.get("state") or {}).get("terminated")
                if term:
                    text = term.get("message") or ""
                    try:
                        summary = json.loads(text)
                    except ValueError:
                        summary = {"message": text.strip().splitlines()[-1] if text.strip() else
                                   f"engine exited with code {term.get('exitCode')}"}
                    return (summary if isinstance(summary, dict) else {}), term.get("exitCode")
        return {}, None

    async def _secret_values(self, namespace: str, spec: OptimizationSpec) -> dict[str, str] | None:
        """The referenced storage Secret's values: the operator promotes with the user's credentials."""
        if spec.storage_secret_ref is None:
            return None
        try:
            secret = await self.api.get(f"/api/v1/namespaces/{namespace}/secrets/{spec.storage_secret_ref.name}")
        except ApiError as err:
            raise KompressError(f"storageSecretRef {spec.storage_secret_ref.name!r}: {err}") from None
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    def _promote(self, summary: dict[str, Any], spec: OptimizationSpec, uid: str,
                 secret: dict[str, str] | None) -> dict[str, Any]:
        """Download the run's model and report from S3 and promote them (blocking; runs in a thread)."""
        if secret is not None:
            with storage.credentials(secret):
                return self._promote(summary, spec, uid, None)
        assert spec.promotion is not None
        report_uri, model_uri = summary.get("reportUri"), summary.get("modelUri")
        if not (report_uri and model_uri and storage.is_s3(report_uri)):
            raise KompressError("the run left no report and model in S3 (set KOMPRESS_RUNS_URI or an s3:// registry)")
        with tempfile.TemporaryDirectory() as tmp:
            report_file = storage.fetch(report_uri, Path(tmp) / "report", field="reportUri")
            model = storage.fetch(model_uri, Path(tmp) / "model", field="modelUri")
            report = json.loads(report_file.read_text())
            inputs = model_io.tensor_specs(model, "input")
            outputs = model_io.tensor_specs(model, "output")
            return registry.promote_report(report, model, spec.promotion, uid, inputs, outputs)
