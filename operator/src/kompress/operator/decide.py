"""What to do about one ModelOptimization, decided from what was observed of it.

One small function per phase, each returning a `Decision`: the wanted status (phase, message, the outcome
whose conditions `conditions.TABLE` lists, extra status fields) and the side effects it wants, as data
(`CreateJob`, `Promote`, `Event`, `Count`). Nothing here talks to the API server, S3 or the metrics registry:
`Reconciler` observes, calls `decide`, and carries the decision out. Promotion is a round trip: `evaluated`
asks for `Promote`, and `promoted` maps its result (or its failure) to the final decision."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kompress.jobs import gates
from kompress.jobs.errors import ExitCode
from kompress.jobs.report.model import PromotionResult, ResultBlock, RunSummary
from kompress.jobs.spec.document import OptimizationSpec
from kompress.jobs.spec.sections import PromotionSpec
from kompress.operator import conditions, pod_trouble, policy
from kompress.operator.jobspec import build_job, job_name, run_key
from kompress.operator.settings import Settings
from kompress.operator.status import ModelOptimizationStatus

FINAL = ("Succeeded", "Rejected", "Failed")
PROMOTION_RETRY_SECONDS = 30.0

# ---- effects: what a decision wants done ------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event on the resource."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Count:
    """Increment an operator counter (a name in `metrics.COUNTERS`)."""

    metric: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CreateJob:
    manifest: dict[str, Any]
    then: tuple[Event | Count, ...] = ()
    """Recorded only when this call created the Job (not when an earlier attempt had: 409)."""


@dataclass(frozen=True)
class Promote:
    """Promote the run's model; `promoted` turns the result into the final decision."""

    report_uri: str | None
    model_uri: str | None
    promotion: PromotionSpec
    resource_uid: str
    namespace: str
    secret_name: str | None


@dataclass(frozen=True)
class DeleteJob:
    """Delete a Job (and, Foreground, its pods): one an edit of the spec superseded."""

    namespace: str
    name: str
    then: tuple[Event, ...] = ()
    """Recorded only when this call deleted it."""


Effect = CreateJob | Promote | DeleteJob | Event | Count


@dataclass(frozen=True)
class Decision:
    phase: str
    outcome: str
    """A row of `conditions.TABLE`: the conditions this decision sets."""
    message: str | None = None
    """status.message (None: left as it is)."""
    fields: dict[str, Any] = field(default_factory=dict)
    """Other status fields (jobName, runKey, baseline, result, gates, promotedTo...)."""
    effects: tuple[Effect, ...] = ()
    retry_after: float | None = None
    values: dict[str, Any] = field(default_factory=dict)
    """More values for the conditions' message templates."""


# ---- what was observed -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """The resource and, when its spec is accepted, its Job and the Job's pods (oldest first)."""

    body: dict[str, Any]
    settings: Settings
    now: str
    spec: OptimizationSpec | None = None
    problem: tuple[str, str] | None = None
    """(reason, message) when the operator refuses the spec."""
    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    superseded: list[dict[str, Any]] = field(default_factory=list)
    """The resource's other Jobs (earlier runs of an edited spec) that still run."""
    secret_labels: dict[str, str] | None = None
    """Labels of the Secret spec.storageSecretRef names, read before its Job is created (None: not read)."""
    secret_missing: bool = False
    """spec.storageSecretRef names a Secret that does not exist (read before its Job is created)."""

    @property
    def meta(self) -> dict[str, Any]:
        return self.body["metadata"]

    @property
    def status(self) -> dict[str, Any]:
        return self.body.get("status") or {}

    @property
    def generation(self) -> int:
        return int(self.meta.get("generation", 1))

    @property
    def key(self) -> str:
        return run_key(self.spec) if self.spec else ""

    @property
    def job_name(self) -> str:
        return job_name(self.meta["name"], self.meta["uid"], self.key) if self.spec else ""

    @property
    def same_run(self) -> bool:
        """The status already describes this run (same run key)."""
        return self.status.get("runKey") == self.key

    @property
    def first_result(self) -> bool:
        """No final phase was reported for this run yet (counters count each run's end once)."""
        return self.status.get("phase") not in FINAL or not self.same_run


def problems(err: ValidationError) -> str:
    """A pydantic error on one line: `field.path: message; ...`."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in err.errors())


def accept(spec: dict[str, Any]) -> tuple[OptimizationSpec | None, tuple[str, str] | None]:
    """The parsed spec, or why the operator refuses it: what the schema cannot check."""
    try:
        parsed = OptimizationSpec.model_validate(spec)
    except ValidationError as err:
        return None, ("InvalidSpec", f"invalid spec: {problems(err)}")
    if parsed.promotion and not parsed.promotion.registry.startswith("s3://"):
        return None, ("RegistryNotShared", "spec.promotion.registry must be an s3:// URI in a cluster (the Job "
                      f"cannot write to the operator's disk), got {parsed.promotion.registry!r}")
    return parsed, None


# ---- the Job's termination summary ------------------------------------------------------------------------


@dataclass(frozen=True)
class Termination:
    summary: RunSummary = field(default_factory=RunSummary)
    message: str | None = None
    """The engine's message (or the last line of its log tail)."""
    exit_code: int | None = None
    contract_broken: bool = False
    """The message is JSON but not a RunSummary: engine and operator disagree on the contract."""


def read_termination(text: str, exit_code: int | None) -> Termination:
    """The pod's termination message: the engine's RunSummary, or (FallbackToLogsOnError) the log tail."""
    try:
        summary = RunSummary.model_validate_json(text)
    except ValidationError as err:
        if err.errors()[0]["type"] == "json_invalid" and exit_code == 0:  # a success writes its summary: this
            # one was cut off (the engine killed mid-write, a full disk); never read a result into it
            return Termination(message="the Job's summary is not complete JSON (cut off?): "
                                       f"{text.strip()[:200]!r}", exit_code=exit_code, contract_broken=True)
        if err.errors()[0]["type"] == "json_invalid":  # not JSON: the log tail; its last line says most
            lines = text.strip().splitlines()
            return Termination(message=lines[-1] if lines else f"engine exited with code {exit_code}",
                               exit_code=exit_code)
        return Termination(message=f"the Job's summary does not match the report schema: {problems(err)}",
                           exit_code=exit_code, contract_broken=True)
    return Termination(summary, summary.message, exit_code)


def termination(pods: list[dict[str, Any]]) -> Termination:
    """From the newest pod whose container terminated."""
    for pod in reversed(pods):
        for cs in (pod.get("status") or {}).get("containerStatuses", []):
            term = (cs.get("state") or {}).get("terminated")
            if term:
                return read_termination(term.get("message") or "", term.get("exitCode"))
    return Termination()


# ---- decisions, one per phase -----------------------------------------------------------------------------


def decide(obs: Observed) -> Decision:
    decision = _decide(obs)
    if not obs.superseded:
        return decision
    follows = f"the status follows Job {obs.job_name}" if obs.job_name else "the spec is invalid"
    stop = [DeleteJob(job["metadata"]["namespace"], job["metadata"]["name"], then=(Event(
        "Normal", "Superseded", f"deleted Job {job['metadata']['name']}: the spec changed; {follows}"),))
        for job in obs.superseded]
    return dataclasses.replace(decision, effects=(*stop, *decision.effects))


def _decide(obs: Observed) -> Decision:
    if obs.problem is not None:
        return invalid(obs)
    if obs.job is None:
        return pending(obs)
    done = _job_conditions(obs.job)
    if "Complete" not in done and "Failed" not in done:
        return running(obs)
    term = termination(obs.pods)
    if term.contract_broken:
        return failed(obs, term, "SummaryInvalid")
    if "Complete" not in done and term.summary.outcome not in ("succeeded", "rejected"):
        assert obs.spec is not None
        killed = pod_trouble.when_failed(obs.job, obs.pods, obs.spec)
        if killed is not None:  # the node ended it (deadline, memory limit), not the engine
            return failed(obs, Termination(message=killed.message), killed.reason)
        permanent = term.exit_code == ExitCode.INVALID_INPUT
        return failed(obs, term, "InvalidInput" if permanent else "RetriesExhausted")
    return evaluated(obs, term.summary)


def invalid(obs: Observed) -> Decision:
    assert obs.problem is not None
    reason, message = obs.problem
    warn = () if obs.status.get("phase") == "Failed" else (Event("Warning", reason, message),)
    return Decision("Failed", reason, message, effects=warn)


def pending(obs: Observed) -> Decision:
    """No Job for this run yet: create it, once the tenant policy allows what the spec asks for."""
    assert obs.spec is not None
    denied = policy.violations(obs.spec, obs.settings, obs.secret_labels)
    if denied:
        message = "; ".join(map(str, denied))
        warn = () if obs.status.get("message") == message else (Event("Warning", "PolicyDenied", message),)
        # a spec field only an edit can change: Failed; a Secret's label can be fixed beside the spec: the
        # timer looks again while the phase is Pending
        spec_only = any(v.field != "spec.storageSecretRef" for v in denied)
        return Decision("Failed" if spec_only else "Pending", "PolicyDenied", message, effects=warn)
    if obs.secret_missing and obs.settings.storage_secret_label:
        # the policy can only vouch for a Secret it can read: wait for it (the timer looks again)
        ref = obs.spec.storage_secret_ref.name if obs.spec.storage_secret_ref else "?"
        message = (f"spec.storageSecretRef: Secret {ref!r} does not exist in namespace {obs.meta['namespace']}; "
                   f"create it (labelled {obs.settings.storage_secret_label}=true)")
        warn = () if obs.status.get("message") == message else (Event("Warning", "SecretNotFound", message),)
        return Decision("Pending", "SecretNotFound", message, effects=warn)
    name = obs.job_name
    created = (Event("Normal", "JobCreated", f"created Job {name}"), Count("kompress_jobs_started_total"))
    manifest = build_job(obs.body, obs.spec, obs.settings)
    return Decision("Pending", "JobCreated", f"Job {name} created", _run_fields(obs, None),
                    (CreateJob(manifest, then=created),))


def running(obs: Observed) -> Decision:
    """The Job exists and has not concluded: a pod waits or runs (or the node says why it cannot)."""
    assert obs.spec is not None
    trouble = pod_trouble.while_running(obs.pods, obs.spec)
    if trouble is not None:
        return stalled(obs, trouble)
    up = any((p.get("status") or {}).get("phase") == "Running" for p in obs.pods)
    note = (Event("Normal", "JobRunning", f"Job {obs.job_name} is running"),) \
        if up and obs.status.get("phase") != "Running" else ()
    return Decision("Running" if up else "Pending", "PodRunning" if up else "PodPending",
                    fields=_run_fields(obs, obs.job), effects=note)


def stalled(obs: Observed, trouble: pod_trouble.Trouble) -> Decision:
    """The Job's pod cannot start (or an attempt was killed): say why, once, while the Job controller retries."""
    up = any((p.get("status") or {}).get("phase") == "Running" for p in obs.pods)
    warn = () if obs.status.get("message") == trouble.message else (Event("Warning", trouble.reason, trouble.message),)
    return Decision("Running" if up else "Pending", trouble.reason, trouble.message, _run_fields(obs, obs.job), warn)


def failed(obs: Observed, term: Termination, reason: str) -> Decision:
    """The Job failed (or its summary cannot be read): nothing measured, nothing promoted."""
    job_failed = _job_conditions(obs.job or {}).get("Failed") or {}
    message = term.message or job_failed.get("message") or "Job failed"
    notes: tuple[Effect, ...] = () if obs.status.get("phase") == "Failed" else (
        Event("Warning", reason, message), Count("kompress_jobs_finished_total", {"result": "failed"}),
        Count("kompress_optimizations_total", {"result": "failed"}))
    return Decision("Failed", reason, message, _finished_fields(obs), notes)


def evaluated(obs: Observed, summary: RunSummary) -> Decision:
    """The Job measured a result: the resource's gates decide (they may have changed since the Job ran)."""
    assert obs.spec is not None
    objective = obs.spec.search.objective if obs.spec.search else None
    verdict = gates.evaluate(obs.spec.gates, summary.result or ResultBlock(), objective)
    if summary.result is None:  # nothing was measured (a search where no candidate produced a model): the
        # gates have nothing to pass, whatever they say, and there is no model to promote
        reason = summary.message or "the run measured no result"
        verdict = verdict.model_copy(update={"passed": False, "failures": [*verdict.failures, reason]})
    fields = _finished_fields(obs) | {
        "baseline": summary.baseline.to_json() if summary.baseline else {},
        "result": summary.result.to_json() if summary.result else {},
        "reportUri": summary.report_uri, "warnings": summary.warnings,
        "gates": {"passed": verdict.passed, "failures": verdict.failures},
    }
    notes: tuple[Effect, ...] = ()
    if obs.first_result and obs.status.get("phase") != "Evaluating":
        notes = (Count("kompress_jobs_finished_total", {"result": summary.outcome or "succeeded"}),
                 *(Event("Warning", "WorseThanOriginal", f"the optimized model is {w}") for w in summary.warnings))
    # the branches below set the phase and outcome
    measured = Decision("Evaluating", "Promoted", fields=fields, effects=notes, values={"gates": len(verdict.results)})
    if not verdict.passed:
        return rejected(obs, measured, "; ".join(verdict.failures))
    return to_promote(obs, measured, summary)


def rejected(obs: Observed, measured: Decision, failures: str) -> Decision:
    notes = () if obs.status.get("phase") == "Rejected" else (
        Event("Warning", "GatesFailed", failures), Count("kompress_optimizations_total", {"result": "rejected"}))
    return dataclasses.replace(measured, phase="Rejected", outcome="GatesFailed", message=f"gates failed: {failures}",
                               effects=measured.effects + notes, values=measured.values | {"failures": failures})


def to_promote(obs: Observed, measured: Decision, summary: RunSummary) -> Decision:
    """Gates passed: promote, unless none is configured, an approval is missing, or this run is promoted."""
    assert obs.spec is not None
    promo = obs.spec.promotion
    if promo is None:
        succeeded = (Count("kompress_optimizations_total", {"result": "succeeded"}),) if obs.first_result else ()
        return dataclasses.replace(measured, phase="Succeeded", outcome="NotConfigured",
                                   message="gates passed (no promotion configured)",
                                   effects=measured.effects + succeeded)
    if promo.awaiting_approval():
        msg = "gates passed; set spec.promotion.approved: true to promote"
        ask = (Event("Normal", "AwaitingApproval", msg),) if obs.status.get("message") != msg else ()
        return dataclasses.replace(measured, outcome="AwaitingApproval", message=msg,
                                   effects=measured.effects + ask)
    done = conditions.get(obs.status.get("conditions", []), "Promoted")
    if obs.status.get("promotedTo") and obs.same_run and done and done["status"] == "True":
        return dataclasses.replace(measured, phase="Succeeded", outcome="Promoted", message=obs.status.get("message"))
    promote = Promote(summary.report_uri, summary.model_uri, promo, obs.meta["uid"], obs.meta["namespace"],
                      obs.spec.storage_secret_ref.name if obs.spec.storage_secret_ref else None)
    return dataclasses.replace(measured, effects=(*measured.effects, promote))


def promoted(obs: Observed, asked: Decision, result: PromotionResult | str) -> Decision:
    """The final decision once `asked`'s Promote was carried out: `result`, or why it failed."""
    kept = tuple(e for e in asked.effects if not isinstance(e, Promote))
    if isinstance(result, str):
        msg = f"promotion failed: {result}"
        return dataclasses.replace(asked, outcome="PromotionFailed", message=msg, effects=(
            *kept, Event("Warning", "PromotionFailed", msg)), retry_after=PROMOTION_RETRY_SECONDS)
    msg = f"{'promoted' if result.created else 'already promoted'} to {result.uri}"
    notes: list[Effect] = [Event("Normal", "Promoted", msg)]
    if result.created:
        notes.append(Count("kompress_promotions_total"))
    if obs.first_result:
        notes.append(Count("kompress_optimizations_total", {"result": "succeeded"}))
    return dataclasses.replace(asked, phase="Succeeded", outcome="Promoted", message=msg,
                               fields=asked.fields | {"promotedTo": result.uri, "promotedVersion": result.version},
                               effects=(*kept, *notes))


# ---- the wanted status ------------------------------------------------------------------------------------


def wanted_status(obs: Observed, decision: Decision) -> dict[str, Any]:
    """The status `decision` asks for: its phase, fields, message and its outcome's conditions. Checked against
    the typed status model (the CRD's status schema is generated from it): a field the CRD lacks, which the
    apiserver would silently prune, or a value of the wrong type raises here instead."""
    values = {"message": decision.message or "", "job": obs.job_name} | decision.values
    conds = conditions.apply(list(obs.status.get("conditions", [])), decision.outcome, obs.generation, obs.now,
                             **values)
    status: dict[str, Any] = {"phase": decision.phase, "conditions": conds, "observedGeneration": obs.generation,
                              **decision.fields}
    if decision.message is not None:
        status["message"] = decision.message
    ModelOptimizationStatus.model_validate(status)
    return status


def _job_conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Job's conditions that are True, by type (Complete, Failed...)."""
    return {c["type"]: c for c in (job.get("status") or {}).get("conditions", []) if c.get("status") == "True"}


def _run_fields(obs: Observed, job: dict[str, Any] | None) -> dict[str, Any]:
    st = (job or {}).get("status") or {}
    attempts = sum(int(st.get(k, 0)) for k in ("failed", "active", "succeeded"))
    started = obs.status.get("startedAt") if obs.same_run else None
    return {"jobName": obs.job_name, "runKey": obs.key, "attempts": max(attempts, 1),
            "startedAt": started or obs.now}


def _finished_fields(obs: Observed) -> dict[str, Any]:
    finished = obs.status.get("finishedAt") if obs.same_run else None
    return _run_fields(obs, obs.job) | {"finishedAt": finished or obs.now}
