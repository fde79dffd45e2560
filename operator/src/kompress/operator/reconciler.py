"""Reconcile one ModelOptimization: observe it (the resource, its Job, the Job's pods), `decide`, and carry the
decision out — create the Job, promote, patch status, post events, count. Idempotent: every call derives what
to do from the API objects, never from memory, so an operator restart or a repeated event changes nothing
that was already done."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from kompress.jobs.errors import KompressError
from kompress.jobs.io import storage
from kompress.jobs.registry import repository as registry
from kompress.jobs.report import render as report
from kompress.jobs.report.model import PromotionResult
from kompress.jobs.spec.sections import PromotionSpec
from kompress.operator import conditions, metrics
from kompress.operator.decide import (
    FINAL,
    Count,
    CreateJob,
    Decision,
    DeleteJob,
    Event,
    Observed,
    Promote,
    accept,
    decide,
    problems,
    promoted,
    wanted_status,
)
from kompress.operator.jobspec import GROUP, PLURAL, VERSION
from kompress.operator.kube import ApiError, KubeClient
from kompress.operator.settings import Settings


def resource_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


class Reconciler:
    """Runs inside a kopf operator (handlers.py): its Events go through kopf.event, kopf's posting queue, with the
    resource as the involved object whichever handler (resource, Job event, timer) triggered the reconcile."""

    def __init__(self, api: KubeClient, settings: Settings) -> None:
        self.api = api
        self.settings = settings
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def use(self, api: KubeClient) -> None:
        """Talk to the API through `api` from now on (a re-login's fresh credentials)."""
        old, self.api = self.api, api
        if old is not api:
            await old.close()

    async def reconcile(self, namespace: str, name: str) -> Decision | None:
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
                obs = await self._observe(body)
                return await self._carry_out(obs, decide(obs))
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                raise

    async def _observe(self, body: dict[str, Any]) -> Observed:
        spec, problem = accept(body.get("spec") or {})
        obs = Observed(body, self.settings, conditions.now(), spec, problem)
        superseded = await self._superseded(body, obs.job_name)
        obs = dataclasses.replace(obs, superseded=superseded)
        if spec is None:
            return obs
        namespace = body["metadata"]["namespace"]
        job = await self._get_job(namespace, obs.job_name)
        if job is None:  # the Job is yet to be created: the policy checks the Secret it would be given
            labels = await self._secret_labels(namespace, spec.storage_secret_ref.name) \
                if spec.storage_secret_ref else None
            return dataclasses.replace(obs, secret_labels=labels, secret_missing=bool(spec.storage_secret_ref)
                                       and labels is None)
        pods = await self._pods(namespace, obs.job_name)
        return dataclasses.replace(obs, job=job, pods=pods)

    # ---- side effects: all of them happen here ---------------------------------------------------------------

    async def _carry_out(self, obs: Observed, decision: Decision) -> Decision:
        """First what the status depends on (create the Job; promote, whose result gives the final decision),
        then the status patch, then what is only recorded (events, counters, the metrics mirror)."""
        notes: list[Event | Count] = []
        for effect in decision.effects:
            if isinstance(effect, CreateJob):
                if await self._create_job(effect.manifest):
                    notes.extend(effect.then)
            elif isinstance(effect, DeleteJob):
                if await self._delete_job(effect):
                    notes.extend(effect.then)
            elif isinstance(effect, Promote):
                return await self._carry_out(obs, promoted(obs, decision, await self._promote(effect)))
            else:
                notes.append(effect)
        status = wanted_status(obs, decision)
        old = obs.status
        patch = {k: v for k, v in status.items() if old.get(k) != v}
        if patch:
            meta = obs.meta
            await self.api.merge_patch(resource_path(meta["namespace"], meta["name"]) + "/status", {"status": patch})
        for note in notes:
            if isinstance(note, Event):
                kopf.event(obs.body, type=note.type,  # type: ignore[arg-type]  # a plain dict as kopf's Body
                           reason=note.reason, message=note.message)
            else:
                metrics.count(note.metric, note.labels)
        self._mirror(obs, old | status)
        return decision

    def _mirror(self, obs: Observed, status: dict[str, Any]) -> None:
        meta = obs.meta
        metrics.MIRROR.update(meta["namespace"], meta["name"], status)
        if status.get("phase") in FINAL and obs.status.get("phase") not in FINAL and status.get("startedAt"):
            metrics.DURATION.observe(_seconds_between(status["startedAt"], status.get("finishedAt")))

    async def _create_job(self, manifest: dict[str, Any]) -> bool:
        """Create the Job; False when it exists already (an earlier attempt created it: adopt it)."""
        try:
            await self.api.create(f"/apis/batch/v1/namespaces/{manifest['metadata']['namespace']}/jobs", manifest)
        except ApiError as err:
            if err.status != 409:
                raise
            return False
        return True

    async def _delete_job(self, effect: DeleteJob) -> bool:
        """Delete a superseded Job; False when it was gone already (its Event then was posted before)."""
        try:
            await self.api.delete(f"/apis/batch/v1/namespaces/{effect.namespace}/jobs/{effect.name}")
        except ApiError as err:
            if err.status != 404:
                raise
            return False
        return True

    async def _promote(self, effect: Promote) -> PromotionResult | str:
        """Promote with the user's storage credentials (in a thread: it reads the report and has S3 copy the
        model); a failure that a later retry may fix comes back as its message."""
        try:
            secret = await self._secret_values(effect.namespace, effect.secret_name)
            return await asyncio.to_thread(promote_run, effect.report_uri, effect.model_uri, effect.promotion,
                                           effect.resource_uid, secret)
        except KompressError as err:
            return str(err)
        except ValidationError as err:
            return f"the run's report.json does not match the report schema: {problems(err)}"

    # ---- reads ---------------------------------------------------------------------------------------------

    async def _get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.api.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def _superseded(self, body: dict[str, Any], current: str) -> list[dict[str, Any]]:
        """The Job the status still follows when an edit changed the run (status.jobName is not `current`), if
        it runs yet: one GET, and only after such an edit."""
        meta, previous = body["metadata"], (body.get("status") or {}).get("jobName")
        if not previous or previous == current:
            return []
        job = await self._get_job(meta["namespace"], previous)
        if job is None or job["metadata"].get("deletionTimestamp") or _job_finished(job):
            return []
        return [job] if any(o.get("uid") == meta["uid"] for o in job["metadata"].get("ownerReferences", [])) else []

    async def _pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        pods = await self.api.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": f"job-name={job}"})
        return sorted(pods.get("items", []), key=lambda p: p["metadata"].get("creationTimestamp", ""))

    async def _secret_labels(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's labels (None: it does not exist). Its values are not looked at here."""
        try:
            secret = await self.api.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return dict(secret["metadata"].get("labels") or {})

    async def _secret_values(self, namespace: str, name: str | None) -> dict[str, str] | None:
        """The referenced storage Secret's values: the operator promotes with the user's credentials."""
        if name is None:
            return None
        try:
            secret = await self.api.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as err:
            raise KompressError(f"storageSecretRef {name!r}: {err}") from None
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def promote_run(report_uri: str | None, model_uri: str | None, promotion: PromotionSpec, uid: str,
                secret: dict[str, str] | None) -> PromotionResult:
    """Read the run's report from S3 and promote its model (blocking). Only the report passes through the
    operator: the model's files are copied by the S3 server into the registry (the chart gives the operator a
    64Mi /tmp; a model is often bigger), and the serving config comes from the report's signature."""
    if not (report_uri and model_uri and storage.is_s3(report_uri)):
        raise KompressError("the run left no report and model in S3 (set KOMPRESS_RUNS_URI or an s3:// registry)")
    with (storage.credentials(secret) if secret is not None else contextlib.nullcontext(),
          tempfile.TemporaryDirectory() as tmp):
        run_report = report.read_json(storage.fetch(report_uri, Path(tmp) / "report", field="reportUri").read_bytes())
        artifacts = run_report.artifacts
        files = [*((artifacts.model_files if artifacts else []) or [model_uri]),
                 *(artifacts.exports if artifacts else [])]
        # what a Job reports is input: a local path would have the operator copy its own files into the registry
        local = [f for f in files if not storage.is_s3(f)]
        if local:
            raise KompressError(f"the run reported model files outside S3 ({', '.join(local)}); refusing to promote")
        return registry.promote_report(run_report, files, promotion, uid)


def _job_finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions", []))


def _seconds_between(start: str, end: str | None) -> float:
    def parse(t: str) -> dt.datetime:
        return dt.datetime.fromisoformat(t.replace("Z", "+00:00"))

    stop = parse(end) if end else dt.datetime.now(dt.UTC)
    return max(0.0, (stop - parse(start)).total_seconds())
