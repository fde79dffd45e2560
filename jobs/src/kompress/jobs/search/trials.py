"""Accuracy-aware search: try candidate recipes, keep the best one that passes every gate.

- Candidates run in order of *expected* gain for the objective (most aggressive first), so a passing
  aggressive recipe is found early; with early stop the search ends once a passing trial's measured gain is
  at least the expected gain of every candidate left (none of them is expected to beat it).
- Every trial is measured like the final model, only shorter: quality on the evaluation rows, latency
  interleaved with the baseline, size, energy (and peak memory when a gate needs it); then the gates.
- Trials are recorded (with their models) in the checkpoint folder as they finish, so a search interrupted
  by a Job restart resumes from its completed trials instead of redoing them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from kompress.jobs import gates
from kompress.jobs.errors import KompressError, RuntimeFailure
from kompress.jobs.io import model_files
from kompress.jobs.io.checkpoints import fingerprint
from kompress.jobs.measure.energy import Meter
from kompress.jobs.measure.variant import Measured, MeasurePlan, measure_variant
from kompress.jobs.report.model import GateVerdict, ResultBlock, SearchReport, StepReport, Trial, result_block
from kompress.jobs.runtimes.registry import Serving
from kompress.jobs.search import sensitivity
from kompress.jobs.search.candidates import expected_gain
from kompress.jobs.spec.base import SpecModel
from kompress.jobs.spec.document import Candidate, SearchSpec
from kompress.jobs.spec.sections import GatesSpec
from kompress.jobs.techniques import pipeline
from kompress.jobs.techniques.pipeline import Workspace

Objective = Literal["latency", "size", "energy"]


@dataclass
class SearchOutcome:
    trials: list[Trial]
    chosen: int | None
    """Index of the chosen trial (None: no trial produced a model)."""
    model: Path | None
    steps: list[StepReport]
    stopped: str
    serving: Serving = field(default_factory=Serving.reference)
    """The runtime (and precision) of the chosen trial."""

    def report(self, objective: Objective, candidates: int, op_share: dict[str, float]) -> SearchReport:
        return SearchReport(objective=objective, candidates=candidates, stopped=self.stopped, chosen=self.chosen,
                            trials=self.trials, profile=dict(list(op_share.items())[:12]))


def _objective_gain(objective: str, measured: Measured) -> float:
    cmp, base, trial = measured.comparison, measured.baseline, measured.candidate
    if objective == "size":
        return float(cmp.size_reduction)
    if objective == "energy" and base.energy and trial.energy and trial.energy.joules_per_inference > 0:
        return float(base.energy.joules_per_inference / trial.energy.joules_per_inference)
    return float(cmp.speedup)


FALLBACK_ROUNDS = (1, 2, 4, 8)
"""How many of the worst activations (each with the nodes that touch it) each fallback round keeps in float."""
LOSSLESS_STEPS = frozenset({"graphOptimize"})
"""Steps that do not change what the model computes: a loss after them is the quantizer's."""


def _needs_fallback(cand: Candidate, trial: Trial) -> bool:
    """A static INT8 candidate that missed a quality gate while it still beat the original, and whose loss is
    the quantizer's (only graph rewrites before it): repairable by keeping layers in float. Static only: the
    sensitivity analysis simulates calibrated activation ranges, which dynamic INT8 does not use."""
    if not cand.techniques:
        return False
    *before, (name, config) = cand.steps()
    failed = {f.split(":", 1)[0] for f in trial.failures}
    return (trial.status == "rejected" and name == "quantize" and getattr(config, "method", "") == "static"
            and all(n in LOSSLESS_STEPS for n, _ in before)
            and bool(failed & gates.SET_GATES) and "noRegression" not in failed)


def _with_excluded(cand: Candidate, kept: dict[str, str]) -> Candidate:
    """The candidate with its final quantize step leaving `kept` nodes in float."""
    doc = cand.model_dump(mode="json", by_alias=True, exclude_none=True)
    quantize = doc["techniques"][-1]["quantize"]
    quantize["excludeNodes"] = sorted(set(quantize.get("excludeNodes", [])) | set(kept))
    doc["name"] = f"{cand.label()[:40]}+fp32x{len(kept)}"
    return Candidate.model_validate(doc)


class Search:
    """One search over candidate recipes: it holds what every trial shares (the workspace, the search and
    gate settings, the meter, the checkpoint scope and the trials finished so far), so each step is a method
    of a few arguments."""

    def __init__(self, ws: Workspace, search: SearchSpec, candidates: list[Candidate], gates_spec: GatesSpec,
                 meter: Meter) -> None:
        self.ws, self.search, self.candidates, self.gates_spec, self.meter = ws, search, candidates, gates_spec, meter
        target = ws.spec.target
        # What a trial computes depends on these; budgets (maxTrials, timeout, early stop) do not, so raising a
        # budget and re-running reuses the finished trials.
        self.store = ws.checkpoints.scope("search-" + fingerprint(ws.lineage, search.trial_iterations,
                                                                  gates_spec.model_dump(mode="json"),
                                                                  target.model_dump(mode="json", exclude_none=True),
                                                                  [c.model_dump(mode="json") for c in candidates]))
        self.done: dict[str, Trial] = {}
        self.trials: list[Trial] = []

    def ranked(self) -> list[tuple[float, int, Candidate]]:
        """Candidates by expected gain, most aggressive first (ties: as listed)."""
        ws, target = self.ws, self.ws.spec.target
        return sorted(((expected_gain(c, self.search.objective, ws.source.metadata, target.device, ws.op_share,
                                      c.serving(target)), i, c) for i, c in enumerate(self.candidates)),
                      key=lambda t: (-t[0], t[1]))

    def run(self) -> SearchOutcome:
        ws = self.ws
        ws.keep_torch_source = True  # trials that train start from the same source model: load it once
        self.done = self._load_trials()
        if self.done:
            ws.progress.info(f"search: resuming, {len(self.done)} trial(s) already completed are not run again")
        started = time.perf_counter() - sum(t.duration_seconds for t in self.done.values())
        stopped = "all candidates tried"
        for rank, (expected, _, cand) in enumerate(self.ranked()):
            stop = self._stop_reason(started, expected)
            if stop:
                stopped = stop
                break
            trial = self._trial(cand, rank, expected)
            self.trials.append(trial)
            self.trials += self._fallback(cand, trial, expected)
        return self._choose(stopped)

    def _load_trials(self) -> dict[str, Trial]:
        """Trials a killed run finished (recorded as they finish); a record this engine cannot read is redone."""
        try:
            return {t.key: t for t in (Trial.model_validate(raw) for raw in self.store.read_json("trials.json") or [])}
        except ValueError as err:
            self.ws.progress.info(f"search: recorded trials are from another report schema, redoing them ({err})")
            return {}

    def _trial(self, cand: Candidate, rank: int, expected: float) -> Trial:
        """The candidate's trial: run now, or the one a previous attempt finished."""
        key = fingerprint(cand.model_dump(mode="json"))
        if key not in self.done:
            self.done[key] = self._run_trial(cand, key, rank, expected)
            self.store.write_json("trials.json", [t.to_json() for t in self.done.values()])
        return self.done[key]

    def _stop_reason(self, started: float, expected: float) -> str | None:
        search, trials = self.search, self.trials
        best = max((t.gain for t in trials if t.status == "passed" and t.gain is not None), default=None)
        if len([t for t in trials if t.fallback_of is None]) >= search.max_trials:  # repairs are not candidates
            return f"maxTrials ({search.max_trials}) reached"
        if time.perf_counter() - started > search.timeout_seconds:
            return f"timeoutSeconds ({search.timeout_seconds}) reached"
        if search.early_stop and best is not None and best >= expected:
            return (f"early stop: a passing trial measured {best:.2f}x, no candidate left is expected to beat it "
                    f"(next expected {expected:.2f}x)")
        return None

    def _measure(self, model: Path, serving: Serving) -> tuple[ResultBlock, float, GateVerdict]:
        ws, search = self.ws, self.search
        measured = measure_variant(ws.baseline, model, MeasurePlan.trial(ws.spec.target, search, self.gates_spec),
                                   self.meter, serving=serving)
        block = result_block(measured.candidate, measured.comparison)
        return (block, _objective_gain(search.objective, measured),
                gates.evaluate(self.gates_spec, block, search.objective))

    def _run_trial(self, cand: Candidate, key: str, rank: int, expected: float) -> Trial:
        ws, objective = self.ws, self.search.objective
        ws.progress.step(f"trial {len(self.done) + 1}: {cand.label()} (expected {expected:.2f}x {objective})")
        t0 = time.perf_counter()
        techniques = [s.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
                      for s in cast("list[SpecModel]", cand.techniques)]
        serving = cand.serving(ws.spec.target)
        try:
            result = pipeline.apply(ws, cand.steps(), f"trial-{key}", evaluate_steps=False, step_lines=False,
                                    serving=serving)
            block, gain, verdict = self._measure(result.model, serving)
        except KompressError as err:
            ws.progress.info(f"trial {cand.label()}: error: {err}")
            return Trial(key=key, index=rank, name=cand.label(), expected_gain=expected, techniques=techniques,
                         status="error", passed=False, message=str(err),
                         duration_seconds=round(time.perf_counter() - t0, 2), runtime=serving.runtime,
                         precision=serving.precision)
        for f in model_files.files_of(result.model):
            self.store.put_file(f"trial-{key}/{f.name.replace(result.model.name, 'model.onnx')}", f)
        ws.progress.info(f"trial {cand.label()}: {objective} gain {gain:.2f}x, "
                         f"{'passes' if verdict.passed else 'fails: ' + '; '.join(verdict.failures)}")
        return Trial(key=key, index=rank, name=cand.label(), expected_gain=expected, techniques=techniques,
                     status="passed" if verdict.passed else "rejected", passed=verdict.passed, gain=gain,
                     metrics=block, failures=verdict.failures, steps=result.steps,
                     duration_seconds=round(time.perf_counter() - t0, 2), runtime=serving.runtime,
                     precision=serving.precision)

    def _fallback(self, cand: Candidate, trial: Trial, expected: float) -> list[Trial]:
        """Accuracy-aware fallback (Intel Neural Compressor's idea, on our measured gates): keep the nodes
        around the activations that quantize worst in float, a few more each round, until the gates hold or
        the gain is gone; every round is a trial of its own in the report."""
        if not _needs_fallback(cand, trial):
            return []
        ws, steps = self.ws, cand.steps()
        source = (ws.source.onnx_path if len(steps) == 1 else
                  pipeline.apply(ws, steps[:-1], f"trial-{trial.key}-input", evaluate_steps=False,
                                 step_lines=False, serving=cand.serving(ws.spec.target)).model)
        quantize_config = steps[-1][1]
        try:
            ranked = sensitivity.rank(source, ws.calibration, list(quantize_config.op_types) or None)  # type: ignore[attr-defined]
        except Exception as err:  # the analysis is a repair attempt: the trial stands as measured without it
            ws.progress.info(f"trial {cand.label()}: fallback analysis failed: {type(err).__name__}: {err}")
            return []
        out: list[Trial] = []
        previous: dict[str, str] = {}
        for count in (n for n in FALLBACK_ROUNDS if n <= len(ranked)):
            kept = {node: f"{s.tensor}: INT8 SQNR {s.sqnr_db:.1f} dB" for s in ranked[:count] for node in s.nodes}
            if not kept or kept.keys() == previous.keys():
                continue
            previous = kept
            repaired = self._trial(_with_excluded(cand, kept), trial.index, expected)
            if repaired.fallback_of is None:
                repaired.fallback_of, repaired.kept_in_float = trial.name, kept
                self.store.write_json("trials.json", [t.to_json() for t in self.done.values()])
            out.append(repaired)
            failed = {f.split(":", 1)[0] for f in repaired.failures}
            if repaired.status != "rejected" or "noRegression" in failed:
                break  # the gates hold, or keeping more in float cost the gain (or the trial broke)
        return out

    def _choose(self, stopped: str) -> SearchOutcome:
        """The passing trial with the best measured gain; if none passes, the one closest to passing (fewest
        failed gates, then best quality), so the report shows what the best attempt missed."""
        trials = self.trials
        measured = [(i, t) for i, t in enumerate(trials) if t.status in ("passed", "rejected") and t.metrics]
        if not measured:
            return SearchOutcome(trials, None, None, [], stopped)
        passing = [(i, t) for i, t in measured if t.status == "passed"]
        if passing:
            index, chosen = max(passing, key=lambda it: it[1].gain or 0.0)
        else:
            index, chosen = min(measured, key=lambda it: (len(it[1].failures),
                                                          -(it[1].metrics.accuracy  # type: ignore[union-attr]
                                                            or it[1].metrics.cosine_similarity or 0.0)))  # type: ignore[union-attr]
        for t in trials:
            t.chosen = t is chosen
        model = self.ws.work / "search" / "chosen" / "model.onnx"
        if not self.store.get_file(f"trial-{chosen.key}/model.onnx", model):
            raise RuntimeFailure(f"the chosen trial's model ({chosen.name}) is missing from the checkpoints")
        self.store.get_file(f"trial-{chosen.key}/model.onnx.data", model.with_name("model.onnx.data"))
        return SearchOutcome(trials, index, model, chosen.steps, stopped, Serving(chosen.runtime, chosen.precision))


def run(ws: Workspace, search: SearchSpec, candidates: list[Candidate], gates_spec: GatesSpec,
        meter: Meter) -> SearchOutcome:
    """Run a search (see `Search`)."""
    return Search(ws, search, candidates, gates_spec, meter).run()
