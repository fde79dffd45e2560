"""One optimization run: load -> baseline -> techniques or search -> measure -> gates -> report -> promote.

The same function runs behind `kompress run` on a laptop and inside the operator's Job. The data path reads
in one direction: spec -> io -> runtimes/tasks -> measure -> techniques (pipeline) -> search -> gates ->
report -> registry. Each stage returns a typed result into the run's `RunRecord`; `build_report` makes the
report from the record once, at the end (no stage writes into a shared report)."""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kompress.jobs import cpu, gates, generative_run
from kompress.jobs.errors import ExitCode, InvalidInputError, KompressError, RuntimeFailure, require_torch
from kompress.jobs.io import data as datamod
from kompress.jobs.io import model_files, storage, texts
from kompress.jobs.io import models as model_io
from kompress.jobs.io.checkpoints import Checkpoints
from kompress.jobs.io.frameworks import registry as frameworks
from kompress.jobs.measure import copies, evaluate
from kompress.jobs.measure.energy import Meter, Stopwatch, open_meter
from kompress.jobs.measure.variant import Baseline, MeasurePlan, measure_variant
from kompress.jobs.progress import Progress
from kompress.jobs.registry import repository as registry
from kompress.jobs.report import plot as report_plot
from kompress.jobs.report import render
from kompress.jobs.report.model import (
    Artifacts,
    Comparison,
    ConversionReport,
    DataFacts,
    Environment,
    ExportReport,
    GateVerdict,
    ModelFacts,
    OptimizationReport,
    Outcome,
    PromotionResult,
    RunEnergy,
    SearchReport,
    ServingSignature,
    SliceFacts,
    StepReport,
    TensorSpec,
    VariantMetrics,
    result_block,
)
from kompress.jobs.runtimes import litert
from kompress.jobs.runtimes import registry as runtimes
from kompress.jobs.runtimes.registry import Serving
from kompress.jobs.search import trials as search
from kompress.jobs.search.candidates import default_candidates, searched_runtimes
from kompress.jobs.spec.base import API_VERSION
from kompress.jobs.spec.document import Candidate, LoadedSpec, OptimizationSpec
from kompress.jobs.tasks import registry as tasks
from kompress.jobs.techniques import catalog, pipeline
from kompress.jobs.techniques.traits import CONV_OPS, MATMUL_OPS, MIN_SHARE

SEED = 0
FIXED_STEPS = 6  # fetch, prepare, evaluate, gates, promote, write the report


# ------------------------------------------------------------------------------------------ stage results


@dataclass
class Prepared:
    """The fetched, prepared model and data with the baseline run once, and the search's candidates."""

    ws: pipeline.Workspace
    candidates: list[Candidate]
    model: ModelFacts
    data: DataFacts
    conversion: ConversionReport | None = None
    """A framework model's conversion to ONNX, checked against the original."""


@dataclass
class Optimized:
    """What the fixed pipeline or the search produced: the model to measure, its steps, who serves it (None:
    a generative runtime, named in the final measurement's signature)."""

    model: Path
    steps: list[StepReport]
    serving: Serving | None


@dataclass
class FinalMeasurement:
    """The full measurement of what will be served, against the baseline."""

    served: Path
    """The file the serving runtime runs (for OpenVINO the IR written from the ONNX result)."""
    baseline: VariantMetrics
    optimized: VariantMetrics
    comparison: Comparison
    signature: ServingSignature


@dataclass
class Judged:
    gates: GateVerdict
    warnings: list[str]


@dataclass
class Ending:
    outcome: Outcome
    message: str
    code: ExitCode
    error_kind: str | None = None


@dataclass
class RunRecord:
    """Every stage's typed result, as far as the run got."""

    loaded: LoadedSpec
    started_at: str
    environment: Environment
    model: ModelFacts | None = None
    data: DataFacts | None = None
    prepared: Prepared | None = None
    search: SearchReport | None = None
    optimized: Optimized | None = None
    final: FinalMeasurement | None = None
    judged: Judged | None = None
    export: ExportReport | None = None
    promotion: PromotionResult | None = None
    ending: Ending = field(default_factory=lambda: Ending("failed", "", ExitCode.RUNTIME_FAILURE))
    finished_at: str | None = None
    duration_seconds: float | None = None
    run_energy: RunEnergy | None = None


@dataclass
class RunResult:
    report: OptimizationReport
    exit_code: ExitCode
    output_dir: Path


def build_report(record: RunRecord, artifacts: Artifacts | None = None) -> OptimizationReport:
    """The report of a run, built once from its stages' results."""
    loaded, prepared, final, judged = record.loaded, record.prepared, record.final, record.judged
    steps = record.optimized.steps if record.optimized else []
    return OptimizationReport(
        api_version=API_VERSION, name=loaded.name, started_at=record.started_at,
        spec=loaded.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        environment=record.environment, outcome=record.ending.outcome, message=record.ending.message,
        error_kind=record.ending.error_kind, finished_at=record.finished_at,
        duration_seconds=record.duration_seconds,
        model=record.model or (prepared.model if prepared else None),
        conversion=prepared.conversion if prepared else None,
        data=record.data or (prepared.data if prepared else None),
        steps=steps, search=record.search,
        baseline=final.baseline if final else None, optimized=final.optimized if final else None,
        comparison=final.comparison if final else None, signature=final.signature if final else None,
        gates=judged.gates if judged else None, warnings=judged.warnings if judged else [],
        promotion=record.promotion, run_energy=record.run_energy, export=record.export, artifacts=artifacts)


# ------------------------------------------------------------------------------------------ the run


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    """Versions of what this process ran: an imported module's own version wins over installed metadata
    (onnxruntime-gpu imports as `onnxruntime`, and a CPU build's metadata may sit beside it)."""
    reference = runtimes.reference()
    for module in ("numpy", "onnx", *reference.modules):  # the engine's own: imported, so their versions are read
        importlib.import_module(module)
    out = {"python": platform.python_version()}
    libraries = [lib for r in runtimes.all_runtimes() for lib in r.libraries]
    for dist in dict.fromkeys(["kompress-jobs", "onnx", *libraries, "numpy", "torch", "transformers", "boto3"]):
        version = getattr(sys.modules.get(dist), "__version__", None)
        if version is None:
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        out[dist] = str(version)
    providers = getattr(sys.modules[reference.modules[0]], "get_available_providers", None)
    if providers is not None:
        out["onnxruntimeProviders"] = ",".join(providers())
    return out


def _environment() -> Environment:
    """Where the run happened: the CPU, its notable flags and the cores it got, and how it was confined (user,
    read-only root)."""
    root_read_only = bool(os.statvfs("/").f_flag & os.ST_RDONLY) if hasattr(os, "statvfs") else None
    return Environment(platform=platform.platform(), machine=platform.machine(), seed=SEED, libraries=_versions(),
                       cpu=cpu.cpu_model(), cpu_flags=cpu.notable_flags(), gpu=cpu.gpu_model(),
                       threads=cpu.available_threads(),
                       uid=os.getuid() if hasattr(os, "getuid") else None, root_read_only=root_read_only)


def run(loaded: LoadedSpec, output_dir: Path, *, output_uri: str | None = None, approve: bool = False,
        quiet: bool = False, resource_uid: str | None = None, promote: bool = True) -> RunResult:
    """Run the spec; ``promote=False`` leaves promotion to the caller (the operator promotes from the report)."""
    spec = loaded.spec
    planned = len(spec.steps()) if spec.search is None else spec.search.max_trials  # a search may stop early
    progress = Progress(FIXED_STEPS + planned, quiet=quiet)
    meter = open_meter(spec.target.energy.method, spec.target.device, spec.target.energy.cpu_watts_per_core)
    output_dir.mkdir(parents=True, exist_ok=True)
    record = RunRecord(loaded, _now(), _environment())
    started = time.perf_counter()
    run_energy = Stopwatch(meter).__enter__()
    with tempfile.TemporaryDirectory(prefix="kompress-") as tmp:
        try:
            record.ending = _run(record, Path(tmp), output_dir, output_uri, progress, meter,
                                 Options(approve, resource_uid, promote))
        except KompressError as err:
            record.ending = Ending("failed", str(err), err.exit_code, type(err).__name__)
        except MemoryError:
            record.ending = Ending("failed", "out of memory (raise resources.memory)", ExitCode.RUNTIME_FAILURE)
        finally:
            run_energy.__exit__()
            record.finished_at = _now()
            record.duration_seconds = round(time.perf_counter() - started, 2)
            record.run_energy = RunEnergy(joules=run_energy.joules, method=meter.method)
    report = _write_outputs(record, output_dir, output_uri, progress)
    return RunResult(report, record.ending.code, output_dir)


@dataclass(frozen=True)
class Options:
    approve: bool
    resource_uid: str | None
    promote: bool


def _run(record: RunRecord, work: Path, output_dir: Path, output_uri: str | None, progress: Progress,
         meter: Meter, options: Options) -> Ending:
    """The stages in order; each result goes into the record as soon as it exists (a failure keeps what came
    before it)."""
    loaded = record.loaded
    spec = loaded.spec
    checkpoints = Checkpoints(storage.open_store(output_uri, field="--output") if output_uri
                              else storage.LocalStore(output_dir))
    if tasks.get(spec.model.task).generative:
        return _run_generation(record, work, output_dir, progress, meter, options)
    _check_installed(spec)
    record.prepared = prepared = open_workspace(loaded, work, checkpoints, progress)
    record.model, record.data = prepared.model, prepared.data
    ws = prepared.ws
    if prepared.conversion is not None and not prepared.conversion.check.passed:
        failures = "; ".join(g.message for g in prepared.conversion.check.gates if not g.passed)
        return Ending("rejected", f"the conversion to ONNX changed the model's results ({failures}); nothing "
                      "optimized or promoted", ExitCode.GATES_REJECTED)
    if spec.search is None:
        result = pipeline.apply(ws, spec.steps(), "pipeline", evaluate_steps=True, step_lines=True)
        record.optimized = Optimized(result.model, result.steps, ws.baseline.serving)
    else:
        outcome = search.run(ws, spec.search, prepared.candidates, spec.gates, meter)
        record.search = outcome.report(spec.search.objective, len(prepared.candidates), ws.op_share)
        if outcome.model is None:  # every candidate failed, or none applies: the original stays
            record.promotion = PromotionResult(promoted=False, reason="no candidate")
            return Ending("rejected", _no_candidate_message(outcome, ws) + _unsearched(spec), ExitCode.GATES_REJECTED)
        record.optimized = Optimized(outcome.model, outcome.steps, outcome.serving)
        progress.info(f"search chose {outcome.trials[outcome.chosen or 0].name} on {outcome.serving.label} "
                      f"({outcome.stopped}){_why_runtime(outcome, spec)}")

    record.final = _measure_result(ws, record.optimized, work, meter, progress)
    _judge(record, progress)
    files = _write_model(record, output_dir, progress)
    if record.export is not None and record.export.check is not None and not record.export.check.passed:
        failures = "; ".join(g.message for g in record.export.check.gates if not g.passed)
        record.promotion = PromotionResult(promoted=False, reason=f"export {record.export.format} failed its gates")
        return Ending("rejected", f"the {record.export.format} export misses the quality gates ({failures}); nothing "
                      "promoted", ExitCode.GATES_REJECTED)
    return _promote_and_end(record, files, options, progress)


def _judge(record: RunRecord, progress: Progress) -> None:
    """The gates on the final measurement, and the regressions said loudly even when the gates pass."""
    assert record.final is not None
    spec = record.loaded.spec
    progress.step("applying gates")
    block = result_block(record.final.optimized, record.final.comparison)
    # conversion alone (techniques: []) has nothing to beat the original with: the converted graph is the result
    gates_spec = spec.gates.model_copy(update={"no_regression": False}) if spec.conversion_only else spec.gates
    record.judged = judged = Judged(gates.evaluate(gates_spec, block, spec.search.objective if spec.search else None),
                                    [] if spec.conversion_only else gates.regressions(block))
    for warning in judged.warnings:
        progress.info(f"WARNING: the optimized model is {warning}")


def _promote_and_end(record: RunRecord, files: list[Path], options: Options, progress: Progress) -> Ending:
    assert record.judged is not None
    loaded, judged = record.loaded, record.judged
    spec = loaded.spec
    progress.step("promoting")
    record.promotion = (_promote(loaded, build_report(record), files, options) if options.promote
                        else PromotionResult(promoted=False, reason="left to the caller (--no-promote)"))
    if not judged.gates.passed:
        return Ending("rejected", _rejection(record.search, judged.gates.failures)
                      + (_unsearched(spec) if spec.search and not tasks.get(spec.model.task).generative else ""),
                      ExitCode.GATES_REJECTED)
    promo = record.promotion
    return Ending("succeeded", f"promoted to {promo.uri}" if promo.uri
                  else f"gates passed; not promoted ({promo.reason})", ExitCode.SUCCESS)


def _run_generation(record: RunRecord, work: Path, output_dir: Path, progress: Progress, meter: Meter,
                    options: Options) -> Ending:
    """text-generation: the generative stages (generative_run), then the same gates, report and promotion."""
    result = generative_run.GenerationResult()
    try:
        generative_run.run(record.loaded.spec, work, progress, meter, result)
    finally:
        record.model, record.data, record.search = result.model, result.data, result.search
    chosen, measured = result.chosen, result.measured
    if chosen is None or measured is None or chosen.folder is None or result.signature is None:
        record.promotion = PromotionResult(promoted=False, reason="no candidate")
        return Ending("rejected", "no candidate passed every gate; nothing promoted (the original stays the best: "
                      f"{result.message})", ExitCode.GATES_REJECTED)
    record.optimized = Optimized(chosen.folder, result.steps, None)
    record.final = FinalMeasurement(chosen.folder, measured.baseline, measured.candidate, measured.comparison,
                                    result.signature)
    _judge(record, progress)
    files = _write_folder(record, output_dir)
    return _promote_and_end(record, files, options, progress)


SERVED_FOLDER = "model"
"""A generative runtime's served folder inside the output folder."""


def _write_folder(record: RunRecord, output_dir: Path) -> list[Path]:
    """The served folder into <output>/model (a previous run's models are removed first); returns its files."""
    assert record.final is not None
    for name in model_outputs():
        (output_dir / name).unlink(missing_ok=True)
    target = output_dir / SERVED_FOLDER
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(record.final.served, target, symlinks=False)
    return sorted(p for p in target.iterdir() if p.is_file())


def _no_candidate_message(outcome: search.SearchOutcome, ws: pipeline.Workspace) -> str:
    """Why nothing was measured, and what the model's time goes to (a tree ensemble's ops have no INT8 kernel:
    compression brings nothing, and the run says so)."""
    profile = ", ".join(f"{op} {s:.0%}" for op, s in list(ws.op_share.items())[:4])
    compressible = sum(s for op, s in ws.op_share.items() if op in CONV_OPS | MATMUL_OPS)
    out = ("no candidate produced a model to measure; nothing promoted ("
           + ("; ".join(f"{t.name}: {t.message}" for t in outcome.trials)
              or "no built-in candidate applies to where this model's time goes: " + profile) + ")")
    if ws.op_share and compressible < MIN_SHARE:
        out += (f". Compression brings nothing here: the built-in recipes quantize Conv/MatMul/Gemm, which take "
                f"{compressible:.0%} of this model's time ({profile})")
    if ws.source.converted is not None:
        out += "; to promote the converted model as it is, set techniques: [] (conversion alone)"
    return out


def _unsearched(spec: OptimizationSpec) -> str:
    """When a search pinned to one runtime promotes nothing: one line naming the installed runtimes it did not
    search (no extra measurement)."""
    pinned = spec.pinned_runtime
    if pinned is None:
        return ""
    others = [r.name for r in runtimes.installed() if r.name != pinned and spec.target.device in r.devices]
    if not others:
        return ""
    return (f"; runtime pinned to {pinned}; {', '.join(others)} {'is' if len(others) == 1 else 'are'} installed and "
            f"{'was' if len(others) == 1 else 'were'} not searched: leave target.runtime unset or set auto to search "
            f"{'it' if len(others) == 1 else 'them'}")


def _why_runtime(outcome: search.SearchOutcome, spec: OptimizationSpec) -> str:
    """Under auto, one clause on why the chosen runtime won (its measured gain over the other runtimes' best)."""
    if not spec.searches_runtimes or outcome.chosen is None:
        return ""
    chosen = outcome.trials[outcome.chosen]
    others = [t for t in outcome.trials if t.passed and t.runtime != chosen.runtime and t.gain is not None]
    if not others:
        return f"; the only runtime with a passing trial is {chosen.runtime}"
    best = max(others, key=lambda t: t.gain or 0.0)
    return (f"; {chosen.runtime} won: {chosen.gain or 0:.2f}x against {best.runtime}'s best passing "
            f"{best.gain:.2f}x ({best.name})")


def _measure_result(ws: pipeline.Workspace, optimized: Optimized, work: Path, meter: Meter,
                    progress: Progress) -> FinalMeasurement:
    """The final measurement of what will be served (the serving runtime's own file, written from the ONNX
    result), with the serving signature."""
    serving = optimized.serving
    assert serving is not None
    progress.step(f"evaluating baseline ({ws.baseline.serving.label}) and optimized ({serving.label}) on "
                  f"{ws.evaluation.size} samples")
    ws.drop_torch_source()
    served = serving.engine.served_model(optimized.model, work / "serve", serving.precision)
    measured = measure_variant(ws.baseline, served, MeasurePlan.final(ws.spec.target), meter, progress,
                               serving=serving)
    signature = ServingSignature(inputs=_tensors(optimized.model, "input"),
                                 outputs=_tensors(optimized.model, "output"), runtime=serving.runtime,
                                 precision=measured.candidate.precision, format=serving.engine.layout.format)
    return FinalMeasurement(served, measured.baseline, measured.candidate, measured.comparison, signature)


def model_outputs() -> list[str]:
    """The model files a run may write into its output folder (a previous run's are removed first, so the
    folder never mixes two runs' models): every runtime's graph and companion, and its exports."""
    return list(dict.fromkeys([*(name for r in runtimes.all_runtimes()
                                 for name in (r.layout.graph, r.layout.companion, *r.export_files())), litert.FILE]))


def _write_model(record: RunRecord, output_dir: Path, progress: Progress) -> list[Path]:
    """The served model (and spec.export's artifacts) into the output folder; returns every file promoted."""
    assert record.final is not None and record.optimized is not None and record.prepared is not None
    for name in model_outputs():
        (output_dir / name).unlink(missing_ok=True)
    serving = record.optimized.serving
    assert serving is not None
    for stale in (output_dir / SERVED_FOLDER,):
        shutil.rmtree(stale, ignore_errors=True)
    final = model_files.copy_model(record.final.served, output_dir / serving.engine.layout.graph)
    export = record.prepared.ws.spec.export
    ws = record.prepared.ws
    if export is not None and record.judged is not None and not record.judged.gates.passed:
        progress.info(f"export {export.format} skipped: the result failed its gates, so nothing is promoted")
        export = None
    if export is not None and export.format == litert.FORMAT:
        assert ws.source.converted is not None
        record.export = copies.export_tflite(ws.source.converted, ws.source.format, ws.spec, ws.calibration,
                                             ws.evaluation, output_dir, ws.spec.target.session(serving).threads,
                                             progress)
    elif export is not None:
        record.export = _export(export.format, record.optimized.model, output_dir, record.prepared.ws, serving,
                                progress)
    exports = [Path(f) for f in record.export.files] if record.export is not None else []
    return [*model_files.files_of(final), *exports]


def _export(fmt: str, model: Path, output_dir: Path, ws: pipeline.Workspace, serving: Serving,
            progress: Progress) -> ExportReport:
    """spec.export, written by the serving runtime beside the served model; an export that does not reproduce
    the model's outputs fails the run (it would be promoted beside it)."""
    progress.info(f"exporting {fmt} with {serving.runtime}")
    exported: ExportReport = serving.engine.export(fmt, model, output_dir,
                                                   evaluate.latency_feeds(ws.evaluation, ws.spec.target))
    if exported.matches_onnx is False:
        raise RuntimeFailure(f"export {fmt}: the exported model's outputs differ from the ONNX model's by "
                             f"{exported.max_abs_difference:.3g}; nothing promoted")
    for line in exported.mobile_usability:
        progress.info(f"mobile usability: {line}")
    return exported


def _check_installed(spec: OptimizationSpec) -> None:
    """Before anything is fetched: a spec that needs PyTorch or a runtime this install lacks fails at once, in
    one line (the slim image). A search's torch candidates fail as trials instead (pipeline.apply)."""
    if spec.model.format in ("huggingface", "torch-export"):
        require_torch(f"a {spec.model.format} model (exported to ONNX with PyTorch)", field="model.format")
    framework = frameworks.find(spec.model.format)
    if framework is not None:
        framework.require()
    if spec.export is not None and spec.export.format == litert.FORMAT and spec.model.format is not None:
        litert.require(spec.model.format)
    for i, (name, config) in enumerate(spec.steps()):
        if catalog.get(name).stage_of(config) == "torch":
            how = " (structured, or with finetune)" if name == "prune" else ""
            require_torch(f"technique '{name}'{how}", field=f"techniques[{i}]")
    if not spec.searches_runtimes:
        runtimes.resolve(spec.target.runtime).require("this spec", field="target.runtime")


def _rejection(search_report: SearchReport | None, failures: list[str]) -> str:
    """Why nothing is promoted; a search where no trial beat the original says so in those words."""
    if search_report and search_report.trials and not any(
            t.metrics and not any(f.startswith("noRegression") for f in t.failures) for t in search_report.trials):
        return (f"no candidate improved {search_report.objective}; nothing promoted (the original stays the best: "
                + "; ".join(failures) + ")")
    return "gates failed: " + "; ".join(failures)


def _tensors(model: Path, kind: str) -> list[TensorSpec]:
    return [TensorSpec(name=t.name, dtype=t.dtype, shape=list(t.shape)) for t in model_io.tensor_specs(model, kind)]


# long: the fetch -> prepare -> split -> profile -> candidates -> baseline sequence reads best in one place
def open_workspace(loaded: LoadedSpec, work: Path, checkpoints: Checkpoints, progress: Progress) -> Prepared:
    """Fetch and prepare the model and data, split the rows, run the baseline once; the search candidates
    (given or built in) and the facts for the report come back too."""
    spec = loaded.spec
    np.random.seed(SEED)
    progress.step(f"fetching model {spec.model.uri} and data {spec.data.uri}")
    model_local = storage.fetch(spec.model.uri, work / "fetch" / "model", field="model.uri")
    data_local = storage.fetch(spec.data.uri, work / "fetch" / "data", field="data.uri")
    dataset = datamod.load_npz(data_local)

    progress.step(f"preparing the model ({spec.model.format or 'format auto-detected'})")
    source = model_io.prepare(spec.model, model_local, work, dataset.inputs, seed=SEED)
    if spec.export is not None and spec.export.format == litert.FORMAT:
        litert.require(source.format)  # an auto-detected format is known only now
    if spec.conversion_only and source.converted is None:
        raise InvalidInputError(f"techniques: [] converts a keras, tensorflow or sklearn model to ONNX and nothing "
                                f"more; this model is {source.format} (give at least one technique)",
                                field="techniques")
    dataset = datamod.conform(dataset, source.inputs, declared=spec.data.inputs)
    calibration, evaluation, overlap = datamod.split(dataset, spec.data.calibration_samples,
                                                     spec.data.evaluation_samples, SEED,
                                                     spec.data.allow_calibration_overlap)
    if calibration.size < min(spec.data.calibration_samples, dataset.size) and not overlap:
        progress.info(f"data: {dataset.size} rows hold {evaluation.size} evaluation rows and only {calibration.size} "
                      f"calibration rows (calibrationSamples {spec.data.calibration_samples}); calibration never "
                      "reuses evaluation rows unless data.allowCalibrationOverlap is set")
    slices, slice_facts = _load_slices(spec, work, source.inputs)
    model_facts = ModelFacts(uri=spec.model.uri, format=source.format, sha256=source.sha256,
                             inputs=[i.name for i in source.inputs], metadata=source.metadata)
    data_facts = DataFacts(uri=spec.data.uri, sha256=dataset.sha256, samples=dataset.size,
                           evaluation_samples=evaluation.size, calibration_samples=calibration.size,
                           calibration_overlaps_evaluation=overlap, labels=dataset.labels is not None,
                           slices=slice_facts)
    op_share = _op_profile(source.onnx_path, evaluation, spec, progress) if spec.search else {}
    searched = searched_runtimes(spec) if spec.search else []
    candidates = ((spec.search.candidates or default_candidates(source.graph_format, source.metadata, spec.target,
                                                                op_share, searched)) if spec.search else [])
    if spec.search and spec.searches_runtimes:
        progress.info(f"searching runtimes: {', '.join(r.name for r in searched)}"
                      + ("" if spec.target.runtime else " (target.runtime unset: every installed runtime)"))
        for name in spec.search_runtimes():
            r = runtimes.get(name)
            if r not in searched:
                progress.info(f"WARNING: {r.name} is not installed here (the slim image): it is not searched "
                              f"(install the extra `{r.extra}`, or use the full image)")
    steps = spec.steps() + [s for c in candidates for s in c.steps()]
    train = (_training_rows(loaded, work, source.inputs, calibration, overlap, data_facts)
             if any(catalog.get(n).stage_of(c) == "torch" for n, c in steps)
             and dataset.feed_plan.is_batch_first else None)  # torch steps refuse data.inputs (pipeline)
    baseline = Baseline.open(source.onnx_path, evaluation, spec.model, spec.target, progress, slices,
                             spec.gates.interval_level, texts.lookup(model_local if model_local.is_dir() else None))
    conversion = (copies.check_conversion(source.converted, source.format, baseline, spec, progress)
                  if source.converted is not None else None)
    ws = pipeline.Workspace(spec, source, model_local, calibration, evaluation, train, baseline, checkpoints,
                            [source.sha256, dataset.sha256, data_facts.train_sha256,
                             *(f.sha256 for f in slice_facts)], progress, work, SEED, op_share=op_share)
    return Prepared(ws, candidates, model_facts, data_facts, conversion)


def _load_slices(spec: OptimizationSpec, work: Path,
                 inputs: list[datamod.InputSpec]) -> tuple[dict[str, datamod.Dataset], list[SliceFacts]]:
    """data.slices: each fetched, checked against the model's inputs like data.uri, cut to its
    evaluationSamples (the first rows)."""
    sets: dict[str, datamod.Dataset] = {}
    facts = []
    for i, entry in enumerate(spec.data.slices):
        field = f"data.slices[{i}].uri"
        local = storage.fetch(entry.uri, work / "fetch" / "slices" / entry.name, field=field)
        data = datamod.conform(datamod.load_npz(local, field=field), inputs, field=field, declared=spec.data.inputs)
        n = min(entry.evaluation_samples, data.size)
        sets[entry.name] = data.rows(np.arange(n))
        facts.append(SliceFacts(name=entry.name, uri=entry.uri, sha256=data.sha256, samples=data.size,
                                evaluation_samples=n, labels=data.labels is not None))
    return sets, facts


def _op_profile(model: Path, evaluation: datamod.Dataset, spec: OptimizationSpec,
                progress: Progress) -> dict[str, float]:
    """Where the baseline's time goes per op type, on the reference runtime's profiler (what a search
    quantizes, and what it can expect to gain)."""
    share = evaluate.op_profile(model, evaluation, spec.target, Serving.reference())
    top = ", ".join(f"{op} {s:.0%}" for op, s in list(share.items())[:6])
    progress.info(f"baseline profile: {top}")
    return share


def _training_rows(loaded: LoadedSpec, work: Path, inputs: list[datamod.InputSpec], calibration: datamod.Dataset,
                   overlap: bool, facts: DataFacts) -> dict[str, np.ndarray] | None:
    """Rows for techniques that train: data.trainUri when set, else the calibration rows (never the
    evaluation rows, so a trained model is not scored on what it learned from). Records them in `facts`."""
    spec = loaded.spec
    rows = calibration
    if not spec.data.train_uri and (overlap or calibration.size == 0):
        facts.train_samples = 0  # training on evaluation rows would score the model on what it learned from
        return None
    if spec.data.train_uri:
        local = storage.fetch(spec.data.train_uri, work / "fetch" / "train", field="data.trainUri")
        rows = datamod.conform(datamod.load_npz(local, field="data.trainUri"), inputs, field="data.trainUri")
    n = min(rows.size, spec.data.train_samples)
    facts.train_uri = spec.data.train_uri or spec.data.uri + " (calibration rows)"
    facts.train_sha256, facts.train_samples = rows.sha256, n
    out = {k: v[:n] for k, v in rows.inputs.items()}
    if rows.labels is not None:
        out["labels"] = rows.labels[:n]
    return out


def _promote(loaded: LoadedSpec, report: OptimizationReport, files: list[Path], options: Options) -> PromotionResult:
    promo_spec = loaded.spec.promotion
    if promo_spec is None:
        return PromotionResult(promoted=False, reason="no promotion configured")
    if report.gates is None or not report.gates.passed:
        return PromotionResult(promoted=False, policy=promo_spec.policy, reason="gates failed")
    if promo_spec.awaiting_approval(options.approve):
        return PromotionResult(promoted=False, policy="manual", reason="awaiting approval (policy: manual)")
    return registry.promote_report(report, [str(f) for f in files], promo_spec, options.resource_uid)


def _write_outputs(record: RunRecord, output_dir: Path, output_uri: str | None,
                   progress: Progress) -> OptimizationReport:
    """report.json, report.html and the plots into the output folder (and the output URI): the report is
    built once from the record; its artifacts name the files written."""
    progress.step(f"writing the report to {output_uri or output_dir}")
    report = build_report(record)
    plot_path = (_try_plot("plot", lambda: report_plot.plot(report, output_dir / "report.png")) if report.optimized
                 else None)
    search_plot = (_try_plot("search plot", lambda: report_plot.search_plot(report.search.trials,  # type: ignore[union-attr]
                                                                            output_dir / "search.png"))
                   if report.search else None)
    (output_dir / "slices.png").unlink(missing_ok=True)  # a previous run's
    slice_plot = (_try_plot("slice plot", lambda: report_plot.slice_plot(report, output_dir / "slices.png"))
                  if report.optimized else None)
    graphs = dict.fromkeys([*(r.layout.graph for r in runtimes.all_runtimes()), SERVED_FOLDER])
    model = next((output_dir / n for n in graphs if (output_dir / n).exists()), None) if report.optimized else None
    base = output_uri.rstrip("/") if output_uri else None

    def rel(f: Path) -> str:
        return f.relative_to(output_dir).as_posix() if f.is_relative_to(output_dir) else f.name

    def where(f: Path) -> str:
        return f"{base}/{rel(f)}" if base else str(f)

    files = {"model": model, "report_json": output_dir / "report.json", "report_html": output_dir / "report.html",
             "plot": plot_path, "search_plot": search_plot, "slice_plot": slice_plot}
    uploads = ([] if model is None else sorted(p for p in model.iterdir() if p.is_file()) if model.is_dir()
               else model_files.files_of(model))
    exported = [Path(f) for f in report.export.files] if model is not None and report.export else []
    artifacts = Artifacts(**{k: where(f) for k, f in files.items() if f},
                          model_files=[where(f) for f in uploads], exports=[where(f) for f in exported])
    report = report.model_copy(update={"artifacts": artifacts})
    render.write_html(report, plot_path, output_dir / "report.html", search_plot, slice_plot)
    render.write_json(report, output_dir / "report.json")
    if output_uri:
        store = storage.open_store(output_uri, field="--output")
        for f in [*uploads, *exported,
                  *(output_dir / n for n in ("report.png", "search.png", "slices.png", "report.html", "report.json"))]:
            if f.exists():
                store.put_file(rel(f), f)
    return report


def _try_plot(what: str, draw: object) -> Path | None:
    try:
        return draw()  # type: ignore[operator,no-any-return]
    except Exception as err:  # a plot is an extra: the report stands without it
        print(f"kompress: {what} skipped: {err}", file=sys.stderr)
        return None
