"""A text-generation run's stages, up to the measured result: fetch the model (a Hugging Face folder or a GGUF
file) and check it fits the Job's memory before any work, make the float folder, split and tokenize the text,
compute the source's reference log-probabilities, run the candidates (a search) or the one pipeline as trials
on their generative runtimes, and measure the chosen one in full (more rounds, peak memory). The runner
applies the gates, writes the served folder and the report, and promotes, as for every task."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.cpu import available_threads
from kompress.jobs.errors import InvalidInputError
from kompress.jobs.io import causal_lm, corpus, storage
from kompress.jobs.io.models import sha256_tree
from kompress.jobs.measure import generation as gm
from kompress.jobs.measure.energy import Meter
from kompress.jobs.progress import Progress
from kompress.jobs.report.model import (
    MAIN_SET,
    DataFacts,
    ModelFacts,
    SearchReport,
    ServingSignature,
    SliceFacts,
    StepReport,
    TensorSpec,
    TextFacts,
    Trial,
)
from kompress.jobs.runtimes import genai_registry as generative
from kompress.jobs.runtimes.generative import GenerativeRuntime
from kompress.jobs.search import generation as trials
from kompress.jobs.spec.document import Candidate, OptimizationSpec

SEED = 0


@dataclass
class GenerationResult:
    """What the stages produced, as far as they got (a failure keeps what came before it)."""

    model: ModelFacts | None = None
    data: DataFacts | None = None
    search: SearchReport | None = None
    steps: list[StepReport] = field(default_factory=list)
    chosen: trials.TrialResult | None = None
    measured: trials.Measured | None = None
    signature: ServingSignature | None = None
    message: str = ""


def cache_root() -> Path:
    """Where converted models are kept between runs (KOMPRESS_CACHE; the run's own folder when not writable)."""
    root = Path(os.environ.get("KOMPRESS_CACHE") or Path.home() / ".cache" / "kompress") / "llm"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return Path("/tmp") / "kompress-llm"
    return root


def check_installed(spec: OptimizationSpec) -> None:
    """A pinned runtime that is not installed fails at once in one line; unset, at least one must be."""
    searched = trials.searched_runtimes(spec)
    if spec.target.runtime in generative.names() or len(searched) == 1:
        searched[0].require("this spec")


# long: the stages in order, each result kept as soon as it exists
def run(spec: OptimizationSpec, work: Path, progress: Progress, meter: Meter, out: GenerationResult) -> None:
    check_installed(spec)
    progress.step(f"fetching model {spec.model.uri} and text {spec.data.uri}")
    local = storage.fetch(spec.model.uri, work / "fetch" / "model", field="model.uri")
    fmt, _, params, precision = causal_lm.inspect(local, spec.model.format)
    limit, source = causal_lm.memory_limit(spec.resources.memory)
    need = causal_lm.check_memory(params, limit, source)
    progress.info(f"{fmt} model, {params / 1e6:.0f}M parameters stored as {precision}; compressing needs about "
                  f"{need / 2**30:.1f} GiB" + (f" of {limit / 2**30:.1f} GiB ({source})" if limit else ""))
    text_local = storage.fetch(spec.data.uri, work / "fetch" / "data", field="data.uri")

    progress.step("preparing the float model and the text")
    lm = causal_lm.prepare(local, spec.model.format, cache_root(), sha256_tree(local), progress)
    able = trials.exporting_runtimes(spec, lm, progress)  # before any work: an exporter may refuse the model
    out.model = ModelFacts(uri=spec.model.uri, format=lm.source_format, sha256=lm.sha256, inputs=["input_ids"],
                           metadata=lm.metadata())
    tokenizer = _tokenizer(lm)
    text = _split(spec, tokenizer, text_local)
    out.data = DataFacts(uri=spec.data.uri, sha256=text.sha256, samples=len(text.evaluation) + len(text.calibration),
                         evaluation_samples=len(text.evaluation), calibration_samples=len(text.calibration),
                         calibration_overlaps_evaluation=False, labels=False,
                         text=TextFacts(calibration_documents=text.calibration_documents,
                                        evaluation_documents=text.evaluation_documents,
                                        calibration_tokens=text.calibration_tokens,
                                        evaluation_tokens=text.evaluation_tokens,
                                        sequence_length=spec.data.text.sequence_length))
    progress.info(f"text: {len(text.evaluation)} evaluation windows of {spec.data.text.sequence_length} tokens from "
                  f"{len(text.evaluation_documents)} documents; {len(text.calibration)} calibration sequences from "
                  f"{len(text.calibration_documents)} others")
    slices = _slices(spec, tokenizer, work, progress, out.data)
    references = gm.build_references(lm.hf_dir, {MAIN_SET: text.evaluation, **slices}, work / "reference", progress)
    reference = references.pop(MAIN_SET)
    ws = trials.GenerationWorkspace(spec, lm, text, reference, work, progress, meter,
                                    spec.target.threads or available_threads(), tokenizer, references)
    try:
        _trials(ws, able, out)
        if out.chosen is not None:
            _final(ws, out)
    finally:
        ws.close()


def _slices(spec: OptimizationSpec, tokenizer: Any, work: Path, progress: Progress,
            facts: DataFacts) -> dict[str, list[np.ndarray]]:
    """data.slices: each text cut into evaluation windows like data.uri's (recorded in `facts`)."""
    out = {}
    t = spec.data.text
    for i, entry in enumerate(spec.data.slices):
        field = f"data.slices[{i}].uri"
        local = storage.fetch(entry.uri, work / "fetch" / "slices" / entry.name, field=field)
        windows, digest = corpus.slice_windows(local, tokenizer, sequence_length=t.sequence_length,
                                               windows=min(entry.evaluation_samples, t.evaluation_windows), field=field)
        facts.slices.append(SliceFacts(name=entry.name, uri=entry.uri, sha256=digest, samples=len(windows),
                                       evaluation_samples=len(windows)))
        progress.info(f"slice {entry.name}: {len(windows)} windows of {t.sequence_length} tokens")
        out[entry.name] = windows
    return out


def _tokenizer(lm: causal_lm.CausalLM) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(lm.hf_dir)
    except Exception as err:  # a folder whose tokenizer files do not load
        raise InvalidInputError(f"the model's tokenizer does not load ({err})", field="model.uri") from None


def _split(spec: OptimizationSpec, tokenizer: Any, text_local: Path) -> corpus.TextSplit:
    t, g = spec.data.text, spec.target.generation
    return corpus.split_text(text_local, tokenizer, sequence_length=t.sequence_length,
                             evaluation_windows=t.evaluation_windows, calibration_sequences=t.calibration_sequences,
                             calibration_length=t.calibration_length, prompt_tokens=g.prompt_tokens,
                             prompts=g.rounds)


def _candidates(ws: trials.GenerationWorkspace, able: list[GenerativeRuntime]) -> list[Candidate]:
    spec = ws.spec
    if spec.search is None:
        doc = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        return [Candidate.model_validate({"techniques": doc["techniques"]})]
    names = {r.name for r in able}
    given = [c for c in spec.search.candidates or [] if trials.serving_of(c, spec)[0].name in names]
    return given if spec.search.candidates else trials.default_candidates(able, ws.lm)


def _trials(ws: trials.GenerationWorkspace, able: list[GenerativeRuntime], out: GenerationResult) -> None:
    spec, progress = ws.spec, ws.progress
    candidates = _candidates(ws, able)
    budget = spec.search.max_trials if spec.search else 1
    deadline = time.monotonic() + (spec.search.timeout_seconds if spec.search else 7 * 86400)
    results: list[trials.TrialResult] = []
    stopped = "every candidate tried"
    for i, candidate in enumerate(candidates[:budget]):
        if time.monotonic() > deadline:
            stopped = "search.timeoutSeconds reached"
            break
        progress.step(f"trial {i + 1}/{min(budget, len(candidates))}: {candidate.label()}")
        results.append(trials.run_trial(ws, candidate, i))
    if len(candidates) > budget:
        stopped = f"search.maxTrials {budget} reached ({len(candidates) - budget} candidates not tried)"
    out.chosen = trials.choose(results) if spec.search else (results[0] if results[0].measured else None)
    if spec.search is not None:
        if out.chosen is not None:
            out.chosen.trial.chosen = True
        listed: list[Trial] = [r.trial for r in results]
        out.search = SearchReport(objective=spec.search.objective, candidates=len(candidates), stopped=stopped,
                                  chosen=results.index(out.chosen) if out.chosen else None, trials=listed)
    if out.chosen is None:
        out.message = "; ".join(f"{r.trial.name}: {r.trial.message or '; '.join(r.trial.failures)}"
                                for r in results)


def _final(ws: trials.GenerationWorkspace, out: GenerationResult) -> None:
    """The chosen variant timed over target.generation.rounds against its float model, with peak memory."""
    chosen = out.chosen
    assert chosen is not None and chosen.folder is not None and chosen.measured is not None
    spec, progress = ws.spec, ws.progress
    runtime = generative.get(chosen.runtime)
    base = ws.floats[runtime.name]
    rounds = spec.target.generation.rounds
    measured = chosen.measured
    for other in [name for name in ws.floats if name != runtime.name]:  # nothing else loaded while timing
        ws.floats.pop(other).session.close()
    if spec.search is not None:
        progress.step(f"measuring {chosen.trial.name} against the float model over {rounds} rounds")
        session = runtime.open(chosen.folder, ws.threads, chosen.precision)
        try:
            assert chosen.compared is not None
            measured = trials.measure(ws, base, chosen.folder, session, chosen.compared, chosen.slices,
                                      chosen.precision, rounds)
        finally:
            session.close()
    prompt, new = ws.text.prompts[0], spec.target.generation.new_tokens
    progress.info("measuring peak memory while generating (a fresh process per model)")
    base_peak = gm.peak_memory(runtime.name, base.folder, ws.threads, base.precision, prompt, new, ws.work)
    cand_peak = gm.peak_memory(runtime.name, chosen.folder, ws.threads, chosen.precision, prompt, new, ws.work)
    baseline = measured.baseline.model_copy(update={"peak_memory_bytes": base_peak, "peak_memory_of": "host"})
    candidate = measured.candidate.model_copy(update={"peak_memory_bytes": cand_peak, "peak_memory_of": "host",
                                                      "sha256": sha256_tree(chosen.folder)})
    ratio = cand_peak / base_peak if cand_peak and base_peak else None
    out.measured = trials.Measured(baseline, candidate, measured.comparison.model_copy(update={"memory_ratio": ratio}))
    out.steps = chosen.steps
    vocab: int | str = int(ws.lm.config.get("vocab_size") or 0) or "vocab"
    out.signature = ServingSignature(
        inputs=[TensorSpec(name="input_ids", dtype="int64", shape=["batch", "sequence"])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", "sequence", vocab])],
        runtime=runtime.name, precision=chosen.precision, format=runtime.serving_format)
