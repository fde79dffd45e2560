"""Trials for a causal language model (text-generation): each candidate is a weight-only recipe (or an inference
precision) on one generative runtime, measured against that runtime's own float export — quality on the
evaluation windows against the source model's reference, decode speed interleaved with the float model — and
gated. The search keeps the best trial on its objective that passes every gate; the never-a-regression rule
applies (a trial that does not decode faster than the float model beyond the noise is not a success).

The float export of every runtime is checked against the source before any trial on it runs."""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs import gates
from kompress.jobs.errors import InvalidInputError, KompressError, RuntimeFailure
from kompress.jobs.io.causal_lm import CausalLM
from kompress.jobs.io.corpus import TextSplit
from kompress.jobs.measure import generation as gm
from kompress.jobs.measure.energy import Meter
from kompress.jobs.measure.variant import TEXT_CHARS, worst_of
from kompress.jobs.progress import Progress
from kompress.jobs.report.model import (
    MAIN_SET,
    Comparison,
    GateVerdict,
    LanguageQuality,
    Quality,
    StepReport,
    Trial,
    VariantMetrics,
    WorstCase,
    result_block,
)
from kompress.jobs.runtimes import genai_registry as generative
from kompress.jobs.runtimes.generative import ExportLimits, GenerativeRuntime, GenerativeSession
from kompress.jobs.spec.base import SpecModel
from kompress.jobs.spec.document import Candidate, OptimizationSpec
from kompress.jobs.tasks import registry as tasks
from kompress.jobs.techniques import catalog
from kompress.jobs.techniques.configs import WeightOnlyConfig
from kompress.jobs.techniques.context import GenerationContext


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@dataclass
class FloatModel:
    """A runtime's float export: the baseline every variant on that runtime is compared with."""

    runtime: GenerativeRuntime
    folder: Path
    session: GenerativeSession
    compared: gm.Compared
    precision: str | None
    export_seconds: float
    slices: dict[str, gm.Compared] = field(default_factory=dict)
    """Its quality on each of data.slices."""

    @property
    def quality(self) -> LanguageQuality:
        return self.compared.quality


@dataclass
class Measured:
    baseline: VariantMetrics
    candidate: VariantMetrics
    comparison: Comparison


@dataclass
class TrialResult:
    trial: Trial
    folder: Path | None = None
    measured: Measured | None = None
    compared: gm.Compared | None = None
    """Its quality on the evaluation windows (what the final re-measurement reuses: only timing is redone)."""
    slices: dict[str, gm.Compared] = field(default_factory=dict)
    """Its quality on each of data.slices."""
    runtime: str = ""
    precision: str | None = None
    steps: list[StepReport] = field(default_factory=list)


class GenerationWorkspace:
    """What every trial shares: the spec, the float Hugging Face folder, the tokenized text, the source's
    reference log-probabilities, each runtime's float export (made on first use) and the meter."""

    def __init__(self, spec: OptimizationSpec, lm: CausalLM, text: TextSplit, reference: gm.Reference, work: Path,
                 progress: Progress, meter: Meter, threads: int, tokenizer: Any,
                 slices: dict[str, gm.Reference] | None = None) -> None:
        self.spec, self.lm, self.text, self.reference = spec, lm, text, reference
        self.tokenizer = tokenizer
        """The model's own tokenizer (what the text was cut with; it decodes the worst windows)."""
        self.slices = slices or {}
        """The source's reference log-probabilities on each of data.slices."""
        self.work, self.progress, self.meter, self.threads = work, progress, meter, threads
        generation = spec.target.generation
        self.limits = ExportLimits(max(spec.data.text.sequence_length, generation.prompt_tokens + generation.new_tokens)
                                   + 1)
        self.floats: dict[str, FloatModel] = {}
        self.sensitivity: dict[tuple[Any, ...], dict[str, float]] = {}

    def float_model(self, runtime: GenerativeRuntime) -> FloatModel:
        if runtime.name in self.floats:
            return self.floats[runtime.name]
        runtime.require("this spec")
        self.progress.info(f"exporting the float model with {runtime.name}")
        started = time.perf_counter()
        folder = runtime.export_float(self.lm.hf_dir, self.work / runtime.name / "float", self.limits)
        seconds = time.perf_counter() - started
        precision = runtime.precision(None)
        session = runtime.open(folder, self.threads, precision)
        compared = gm.compare(session, self.reference, self.progress, f"{runtime.name} float")
        quality = compared.quality
        gm.check_export(quality, runtime.name)
        self.progress.info(f"{runtime.name} float export matches the source: mean KL {quality.kl_divergence_mean:.2g}, "
                           f"top-1 agreement {quality.token_agreement:.4f}, perplexity {quality.perplexity:.3f} "
                           f"(exported in {seconds:.0f} s)")
        self.floats[runtime.name] = FloatModel(runtime, folder, session, compared, precision, seconds,
                                               self.compare_slices(session, f"{runtime.name} float"))
        return self.floats[runtime.name]

    def compare_slices(self, session: GenerativeSession, label: str) -> dict[str, gm.Compared]:
        """The session's quality on each of data.slices."""
        return {name: gm.compare(session, ref, self.progress, f"{label}, slice {name}")
                for name, ref in self.slices.items()}

    def context(self, runtime: GenerativeRuntime, workdir: Path, config: WeightOnlyConfig) -> GenerationContext:
        """The step's context; sensitivity is shared by every recipe with the same grid."""
        key = (config.bits, config.group_size, config.symmetric)
        return GenerationContext(runtime, self.lm.hf_dir, self.floats[runtime.name].folder, workdir, self.limits,
                                 self.text.calibration, self.progress, self.sensitivity.get(key, {}))

    def close(self) -> None:
        for f in self.floats.values():
            f.session.close()

    def worst_windows(self, base: FloatModel, compared: gm.Compared,
                      slices: dict[str, gm.Compared]) -> list[WorstCase]:
        """The evaluation windows where the variant's next-token distributions moved most from the source's (mean
        KL), each set's few worst, with both models' perplexity on the window and its text."""
        def case(name: str, cand: gm.Compared, float_: gm.Compared, ref: gm.Reference) -> Callable[[int], WorstCase]:
            return lambda i: WorstCase(
                slice=name, row=i, change=round(float(cand.window_kl[i]), 6),
                baseline=f"perplexity {np.exp(float_.window_nll[i]):.2f}",
                optimized=f"perplexity {np.exp(cand.window_nll[i]):.2f}",
                text=str(self.tokenizer.decode([int(t) for t in ref.windows[i]]))[:TEXT_CHARS])

        sets = [(compared.window_kl, case(MAIN_SET, compared, base.compared, self.reference)),
                *((c.window_kl, case(n, c, base.slices[n], self.slices[n])) for n, c in slices.items())]
        return worst_of(sets)



def serving_of(candidate: Candidate, spec: OptimizationSpec) -> tuple[GenerativeRuntime, str | None]:
    runtime = generative.get(candidate.runtime) if candidate.runtime else _default_runtime(spec)
    return runtime, runtime.precision(candidate.precision or spec.target.precision)


def _default_runtime(spec: OptimizationSpec) -> GenerativeRuntime:
    named = spec.target.runtime
    return generative.get(named) if named in generative.names() else generative.default()


def searched_runtimes(spec: OptimizationSpec) -> list[GenerativeRuntime]:
    """A pinned runtime, or (unset, auto) every installed generative runtime."""
    if spec.target.runtime in generative.names():
        return [generative.get(spec.target.runtime)]
    return generative.installed() or [generative.default()]


def exporting_runtimes(spec: OptimizationSpec, lm: CausalLM, progress: Progress) -> list[GenerativeRuntime]:
    """The searched runtimes whose exporter takes this architecture (the others are said and skipped); none,
    or a pinned runtime that refuses it, fails the run in one line naming the exporter."""
    searched = searched_runtimes(spec) if spec.search else [_default_runtime(spec)]
    refusals = {r.name: why for r in searched if (why := r.refuses(lm.architecture, lm.model_type))}
    able = [r for r in searched if r.name not in refusals]
    if not able:
        raise InvalidInputError("; ".join(refusals.values()), field="model.uri")
    for why in refusals.values():
        progress.info(f"WARNING: {why}: not searched")
    return able


def default_candidates(runtimes: list[GenerativeRuntime], lm: CausalLM) -> list[Candidate]:
    """Each runtime's own recipes (its defaults and what beats them), as candidates, taken in turn from each
    runtime so that a trial budget covers every runtime."""
    lists = [[Candidate.model_validate({"name": f"{runtime.name} {name}", "techniques": steps,
                                        "runtime": runtime.name, "precision": precision})
              for name, steps, precision in runtime.search_recipes(lm.config)]
             for runtime in runtimes]
    return [c for row in itertools.zip_longest(*lists) for c in row if c is not None]


def variant_metrics(folder: Path, quality: LanguageQuality, timed: gm.Timed, spec: OptimizationSpec,
                    runtime: str, precision: str | None, rounds: int) -> VariantMetrics:
    generation = spec.target.generation
    speed = timed.speed(generation.prompt_tokens, generation.new_tokens)
    return VariantMetrics(size_bytes=folder_bytes(folder), language=quality, generation=speed,
                          latency_seconds=timed.latency(), energy=timed.energy(), runtime=runtime,
                          precision=precision, throughput_inferences_per_second=speed.decode_tokens_per_second,
                          throughput_batch_size=1)


def measure(ws: GenerationWorkspace, base: FloatModel, folder: Path, session: GenerativeSession,
            compared: gm.Compared, slices: dict[str, gm.Compared], precision: str | None, rounds: int) -> Measured:
    spec = ws.spec
    prompts = ws.text.prompts[:rounds]
    base_t, cand_t, spread = gm.time_pair(base.session, session, prompts, spec.target.generation.new_tokens, ws.meter)
    quality = compared.quality.model_copy(
        update={"continuation_agreement": gm.continuation_agreement(base_t, cand_t)})
    baseline = variant_metrics(base.folder, base.quality, base_t, spec, base.runtime.name, base.precision, rounds)
    candidate = variant_metrics(folder, quality, cand_t, spec, base.runtime.name, precision, rounds)
    level = spec.gates.interval_level
    candidate.quality = Quality(intervals=gm.judge(MAIN_SET, compared, base.compared, level).intervals,
                                interval_level=level,
                                slices=[gm.judge(name, c, base.slices[name], level) for name, c in slices.items()],
                                worst_cases=ws.worst_windows(base, compared, slices))
    cmp = gates.comparison(baseline, candidate, tasks.get(spec.model.task))
    return Measured(baseline, candidate, cmp.model_copy(update={"speedup_spread": spread}))


def objective_gain(objective: str, m: Measured) -> float:
    if objective == "size":
        return float(m.comparison.size_reduction)
    if objective == "energy" and m.comparison.energy_reduction:
        return float(m.comparison.energy_reduction)
    return float(m.comparison.speedup)


# long: one trial, from the recipe to the verdict, reads best in one place
def run_trial(ws: GenerationWorkspace, candidate: Candidate, index: int) -> TrialResult:
    spec = ws.spec
    search = spec.search
    objective = search.objective if search else "latency"
    runtime, precision = serving_of(candidate, spec)
    techniques = candidate.model_dump(mode="json", by_alias=True, exclude_none=True).get("techniques", [])
    trial = Trial(key=f"{index}", index=index, name=candidate.label(), expected_gain=1.0, techniques=techniques,
                  status="error", passed=False, runtime=runtime.name, precision=precision)
    started = time.perf_counter()
    result = TrialResult(trial, runtime=runtime.name, precision=precision)
    try:
        base = ws.float_model(runtime)
        folder, steps = apply_steps(ws, runtime, candidate.steps(), ws.work / runtime.name / f"trial-{index}")
        session = runtime.open(folder, ws.threads, precision)
        try:
            compared = gm.compare(session, ws.reference, ws.progress, trial.name)
            result.slices = ws.compare_slices(session, trial.name)
            generation = spec.target.generation  # a trial's rounds, then the chosen one's in full
            rounds = min(generation.trial_rounds, generation.rounds) if search else generation.rounds
            measured = measure(ws, base, folder, session, compared, result.slices, precision, rounds)
        finally:
            session.close()
    except gm.ExportMismatch:
        raise
    except Exception as err:  # a trial that fails is recorded as one (the search goes on); the message says why
        trial.message = str(err) if isinstance(err, KompressError) else f"{type(err).__name__}: " + (
            str(err).strip().splitlines() or [""])[0][:400]
        trial.duration_seconds = round(time.perf_counter() - started, 1)
        ws.progress.info(f"trial {trial.name}: error: {err}")
        return result
    block = result_block(measured.candidate, measured.comparison)
    verdict: GateVerdict = gates.evaluate(spec.gates, block, objective if search else None)
    trial.metrics, trial.steps = block, steps
    trial.status, trial.passed = ("passed" if verdict.passed else "rejected"), verdict.passed
    trial.failures, trial.gain = verdict.failures, objective_gain(objective, measured)
    trial.duration_seconds = round(time.perf_counter() - started, 1)
    result.folder, result.measured, result.steps, result.compared = folder, measured, steps, compared
    ws.progress.info(describe(trial, measured))
    return result


def describe(trial: Trial, m: Measured) -> str:
    lang, gen = m.candidate.language, m.candidate.generation
    assert lang is not None and gen is not None and m.baseline.generation is not None
    return (f"trial {trial.name}: {trial.status}; decode {gen.decode_tokens_per_second:.1f} tok/s "
            f"(x{m.comparison.speedup:.2f} the float model's {m.baseline.generation.decode_tokens_per_second:.1f}), "
            f"perplexity {lang.perplexity:.3f} ({(m.comparison.perplexity_increase or 0):+.1%}), "
            f"KL {lang.kl_divergence_mean:.4f}, top-1 agreement {lang.token_agreement:.3f}, "
            f"size x{m.comparison.size_reduction:.2f}"
            + (f"; {'; '.join(trial.failures)}" if trial.failures else ""))


def apply_steps(ws: GenerationWorkspace, runtime: GenerativeRuntime, steps: list[tuple[str, SpecModel]],
                workdir: Path) -> tuple[Path, list[StepReport]]:
    """The candidate's weightOnly step applied to the runtime's float export (no step: the float export, served
    at another precision)."""
    base = ws.floats[runtime.name]
    if not steps:
        return base.folder, []
    if len(steps) > 1:
        raise RuntimeFailure("a text-generation candidate applies one weightOnly step")
    name, config = steps[0]
    assert isinstance(config, WeightOnlyConfig)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    ctx = ws.context(runtime, workdir, config)
    started = time.perf_counter()
    result = catalog.get(name).apply(base.folder, config, ctx)
    ws.sensitivity[(config.bits, config.group_size, config.symmetric)] = ctx.sensitivity
    assert isinstance(result.model_path, Path)
    step = StepReport(technique=name, stage="generation", config=config.model_dump(mode="json", by_alias=True),
                      duration_seconds=round(time.perf_counter() - started, 1),
                      size_bytes=folder_bytes(result.model_path), details=result.details)
    return result.model_path, [step]


def choose(results: list[TrialResult]) -> TrialResult | None:
    passed = [r for r in results if r.trial.passed and r.trial.gain is not None]
    return max(passed, key=lambda r: r.trial.gain or 0.0) if passed else None

