"""The ModelOptimization's status as a typed model: what the operator writes, and the source of the CRD's
status schema (``crd.status_schema()``).

``decide.wanted_status`` validates every status it builds through ``ModelOptimizationStatus`` (unknown fields
and wrong types are an error, not something the apiserver silently prunes), and ``scripts/gen_crd.py``
generates the CRD's ``status`` openAPIV3Schema from it; ``tests/test_crd.py`` fails when the committed CRD
drifts from this model. The measured blocks (``baseline``, ``result``) are the engine's own report blocks
(``MetricsBlock``, ``ResultBlock``): the operator copies them from the Job's summary unchanged.

Light on purpose (pydantic only, like the engine's report model): the operator imports no ML library.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kompress.jobs.report.model import MetricsBlock, ResultBlock

Phase = Literal["Pending", "Running", "Evaluating", "Succeeded", "Rejected", "Failed"]

class StatusPart(BaseModel):
    """camelCase in the resource, snake_case in Python; unknown fields are an error."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              use_attribute_docstrings=True)


class Condition(StatusPart):
    """A metav1.Condition: one aspect of the resource's state."""

    type: str = Field(max_length=316)
    """Condition type: Accepted, JobRunning, Evaluated, GatesPassed, Promoted, Ready or Stalled."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """A CamelCase reason for the condition's last transition."""
    message: str = Field(max_length=32768)
    """A human-readable message about the transition."""
    last_transition_time: dt.datetime
    """When the condition last changed status."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation the condition was set for."""


class GatesStatus(StatusPart):
    """Outcome of the quality gates."""

    passed: bool
    """True when every gate that is set passed."""
    failures: list[str] = []
    """One line per failed gate."""


class ModelOptimizationStatus(StatusPart):
    """Observed state, written by the kompress operator."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation the operator last acted on."""
    phase: Phase | None = None
    """Summary of progress; use conditions for logic."""
    conditions: list[Condition] = Field(default=[], json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    """Latest observations: Accepted, JobRunning, Evaluated, GatesPassed, Promoted, Ready, and Stalled when the
    resource cannot progress without a change from the user."""
    job_name: str | None = None
    """Name of the Kubernetes Job running the optimization."""
    run_key: str | None = None
    """Digest of the spec fields that define a run; a new key means a new Job."""
    attempts: int | None = Field(default=None, ge=0)
    """Job attempts started so far (retries are bounded)."""
    message: str | None = None
    """Last outcome in words (the engine's message on failure)."""
    report_uri: str | None = None
    """Where the run's report.json is stored."""
    promoted_to: str | None = None
    """Registry location of the promoted model version."""
    promoted_version: int | None = Field(default=None, ge=0)
    """Version number of the promoted model in the registry."""
    started_at: dt.datetime | None = None
    """When the optimization Job started."""
    finished_at: dt.datetime | None = None
    """When the optimization finished (successfully or not)."""
    baseline: MetricsBlock | None = None
    """Measurements of the baseline (original) model."""
    result: ResultBlock | None = None
    """Measurements of the optimized model, its comparison with the baseline and the run's own cost."""
    warnings: list[str] = []
    """Where the result is worse than the original (slower, larger, hungrier)."""
    gates: GatesStatus | None = None
    """Outcome of the quality gates."""
