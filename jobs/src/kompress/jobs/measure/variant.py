"""One way to measure a variant. `measure_variant()` serves every pipeline step (a quick look), every search
trial (a short full measurement) and the final evaluation (the full one): the same outputs, quality,
interleaved timing with the baseline, size, and (as the plan asks) energy, peak memory and node placement.
Only the plan differs, so a trial's figures and the result's mean the same thing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs import gates
from kompress.jobs.io import model_files
from kompress.jobs.io.data import Dataset
from kompress.jobs.io.texts import TextLookup
from kompress.jobs.measure import evaluate, timing
from kompress.jobs.measure.energy import Meter
from kompress.jobs.measure.timing import TimingPlan
from kompress.jobs.progress import Progress
from kompress.jobs.report.model import MAIN_SET, Comparison, Quality, VariantMetrics, WorstCase
from kompress.jobs.runtimes.registry import Serving
from kompress.jobs.spec.document import SearchSpec
from kompress.jobs.spec.sections import GatesSpec, ModelSpec, TargetSpec
from kompress.jobs.tasks import registry as tasks
from kompress.jobs.tasks.base import JudgedSet

STEP_LATENCY_RUNS = 30
STEP_WARMUP_RUNS = 3
TRIAL_MAX_WARMUP = 5


@dataclass(frozen=True)
class MeasurePlan:
    timing: TimingPlan
    peak_memory: bool = False
    placement: bool = False
    """Which execution provider ran each node (GPU targets: ops without CUDA kernels fall back to the CPU)."""
    provenance: bool = False
    """sha256 and parameter counts of the files."""
    show_progress: bool = False
    slices: bool = True
    """Quality on every data.slices set too (what the gates judge; a pipeline step's quick look skips them)."""
    worst_cases: bool = False
    """List the samples that changed most, with their text (the result's report)."""

    @classmethod
    def step(cls) -> MeasurePlan:
        """A pipeline step: quality and a quick interleaved latency ratio (the final evaluation is thorough)."""
        return cls(TimingPlan(STEP_LATENCY_RUNS, STEP_WARMUP_RUNS, throughput=False, energy=False), slices=False)

    @classmethod
    def trial(cls, target: TargetSpec, search: SearchSpec, gates_spec: GatesSpec) -> MeasurePlan:
        """A search trial: everything a gate can check, over search.trialIterations timed runs."""
        return cls(TimingPlan(search.trial_iterations, min(target.warmup_iterations, TRIAL_MAX_WARMUP)),
                   peak_memory=gates_spec.max_peak_memory_bytes is not None)

    @classmethod
    def final(cls, target: TargetSpec) -> MeasurePlan:
        return cls(TimingPlan(target.iterations, target.warmup_iterations), peak_memory=True,
                   placement=target.device == "gpu", provenance=True, show_progress=True, worst_cases=True)


@dataclass
class EvaluationSet:
    """A data.slices entry: its rows and the baseline's outputs on them."""

    name: str
    data: Dataset
    outputs: np.ndarray


@dataclass
class Baseline:
    """The original model, run once on the evaluation rows (and every slice's); every variant is compared
    with it."""

    path: Path
    session: Any
    outputs: np.ndarray
    evaluation: Dataset
    model: ModelSpec
    target: TargetSpec
    serving: Serving = field(default_factory=Serving.reference)
    """The runtime the original is measured with (the target's; the reference runtime for target.runtime
    auto)."""
    slices: list[EvaluationSet] = field(default_factory=list)
    level: float = 0.95
    """Confidence level of the quality figures' intervals."""
    texts: TextLookup | None = None
    """A sample's text for the worst cases (the data's texts, or its token ids decoded)."""
    _facts: dict[str, Any] = field(default_factory=dict)
    """What does not change between measurements (sha256, parameters, peak memory, placement)."""

    @classmethod
    def open(cls, path: Path, evaluation: Dataset, model: ModelSpec, target: TargetSpec,
             progress: Progress | None = None, slices: dict[str, Dataset] | None = None, level: float = 0.95,
             texts: TextLookup | None = None) -> Baseline:
        serving = target.serving()
        session = evaluate.open_variant(path, target, serving)
        outputs = evaluate.run_all(session, evaluation, model.output, progress, "baseline")
        sets = [EvaluationSet(name, data, evaluate.run_all(session, data, model.output, progress,
                                                           f"baseline, slice {name}"))
                for name, data in (slices or {}).items()]
        return cls(path, session, outputs, evaluation, model, target, serving, sets, level, texts)

    def fact(self, name: str, compute: Any) -> Any:
        if name not in self._facts:
            self._facts[name] = compute()
        return self._facts[name]


@dataclass
class Measured:
    baseline: VariantMetrics
    candidate: VariantMetrics
    comparison: Comparison

    def headline(self) -> str:
        """One line for progress output."""
        q = self.candidate.quality
        parts = [f"accuracy {q.accuracy:.4f}"] if q.accuracy is not None else []
        if q.fidelity:
            parts.append(f"cosine {q.fidelity.cosine_similarity_mean:.4f}")
        parts.append(f"speedup {self.comparison.speedup:.2f}x")
        return ", ".join(parts)


def measure_variant(base: Baseline, model: Path, plan: MeasurePlan, meter: Meter | None = None,
                    progress: Progress | None = None, serving: Serving | None = None) -> Measured:
    """Measure `model` against the baseline as `plan` says (meter: needed when the plan times energy),
    served by `serving` (default: the baseline's runtime)."""
    shown = progress if plan.show_progress else None
    serving = serving or base.serving
    session = evaluate.open_variant(model, base.target, serving)
    outputs = evaluate.run_all(session, base.evaluation, base.model.output, shown, "optimized")
    task = tasks.get(base.model.task)
    main = task.judge_set(base.outputs, outputs, base.evaluation, MAIN_SET, base.level)
    base_q, cand_q = task.qualities(main, base.outputs, outputs, base.evaluation, base.level)
    judged = [(MAIN_SET, base.evaluation, main)]
    for s in base.slices if plan.slices else []:
        slice_outputs = evaluate.run_all(session, s.data, base.model.output, shown, f"optimized, slice {s.name}")
        judged.append((s.name, s.data, task.judge_set(s.outputs, slice_outputs, s.data, s.name, base.level)))
    cand_q.slices = [j.slice for _, _, j in judged[1:]]
    if plan.worst_cases:
        cand_q.worst_cases = worst_cases(judged, base.texts)
    speed = timing.measure_speed({"baseline": base.session, "candidate": session}, base.evaluation,
                                   base.target, plan.timing, meter, shown)  # type: ignore[arg-type]
    candidate_precision = getattr(session, "precision", None)
    del session
    baseline = _variant(base, base.path, base_q, speed["baseline"], plan, base.serving, cached=True)
    baseline.precision = getattr(base.session, "precision", None)
    candidate = _variant(base, model, cand_q, speed["candidate"], plan, serving, cached=False)
    candidate.precision = candidate_precision
    comparison = gates.comparison(baseline, candidate, task)
    comparison.speedup_spread = speedup_spread(speed["baseline"].round_medians, speed["candidate"].round_medians)
    return Measured(baseline, candidate, comparison)


WORST_CASES = 8
WORST_PER_SET = 3
TEXT_CHARS = 240


def worst_of(sets: list[tuple[np.ndarray, Callable[[int], WorstCase]]]) -> list[WorstCase]:
    """The cases that changed most: each set's WORST_PER_SET largest `change`, then the WORST_CASES largest of
    those; a case is built (its text decoded) only once chosen. `sets`: per set, its per-sample change and
    how to describe sample i."""
    found = [(float(change[i]), k, int(i)) for k, (change, _) in enumerate(sets)
             for i in np.argsort(-change, kind="stable")[:WORST_PER_SET]]
    found.sort(key=lambda t: -t[0])
    return [sets[k][1](i) for _, k, i in found[:WORST_CASES]]


def worst_cases(judged: list[tuple[str, Dataset, JudgedSet]], texts: TextLookup | None) -> list[WorstCase]:
    """The samples whose outputs changed most, over every evaluation set, with their text."""
    def case(name: str, data: Dataset, j: JudgedSet) -> Callable[[int], WorstCase]:
        def make(i: int) -> WorstCase:
            text = texts(data, i) if texts else None
            return WorstCase(slice=name, row=int(data.file_rows()[i]), change=round(float(j.change[i]), 6),
                             baseline=j.answers[i][0], optimized=j.answers[i][1],
                             text=text[:TEXT_CHARS] if text else None)
        return make

    return worst_of([(j.change, case(name, data, j)) for name, data, j in judged])


def speedup_spread(baseline_rounds: list[float], candidate_rounds: list[float]) -> float | None:
    """Half the interquartile range of the per-round baseline/candidate latency ratios: how far the speedup
    moves between rounds on this machine now (None with fewer than 4 rounds)."""
    if len(baseline_rounds) < 4 or len(baseline_rounds) != len(candidate_rounds):
        return None
    ratios = np.asarray(baseline_rounds) / np.maximum(np.asarray(candidate_rounds), 1e-12)
    q1, q3 = np.percentile(ratios, [25, 75])
    return float(q3 - q1) / 2


def _variant(base: Baseline, path: Path, quality: Quality, speed: timing.Speed, plan: MeasurePlan,
             serving: Serving, cached: bool) -> VariantMetrics:
    def fact(name: str, compute: Any) -> Any:
        return base.fact(name, compute) if cached else compute()

    m = VariantMetrics(size_bytes=model_files.size_bytes(path), quality=quality, latency_seconds=speed.latency,
                       throughput_inferences_per_second=speed.throughput_per_second,
                       throughput_batch_size=speed.throughput_batch_size, energy=speed.energy,
                       runtime=serving.runtime)
    if plan.provenance:
        m.sha256 = fact("sha256", lambda: model_files.sha256_file(path))
        m.parameters = fact("parameters", lambda: serving.engine.parameters(path))
    if plan.peak_memory:
        m.peak_memory_bytes, m.peak_memory_of = fact(
            "peakMemory", lambda: evaluate.peak_memory(path, base.evaluation, base.target, serving))
    if plan.placement:
        m.placement = fact("placement", lambda: evaluate.node_placement(path, base.evaluation, base.target, serving))
    return m
