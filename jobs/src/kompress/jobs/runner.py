"""One optimization run: load -> baseline -> techniques or search -> measure -> gates -> report -> promote.

The same function runs behind `kompress run` on a laptop and inside the operator's Job. The data path reads
in one direction: spec -> catalog -> pipeline/search -> measure_variant -> report model -> gates -> registry."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kompress.jobs import gates
from kompress.jobs import techniques as techmod
from kompress.jobs.errors import ExitCode, KompressError, RuntimeFailure, require_torch
from kompress.jobs.io import data as datamod
from kompress.jobs.io import model_files, storage
from kompress.jobs.io import models as model_io
from kompress.jobs.io.checkpoints import Checkpoints
from kompress.jobs.measure import evaluate, op_profile
from kompress.jobs.measure.energy import Meter, Stopwatch, open_meter
from kompress.jobs.measure.variant import Baseline, Measured, MeasurePlan, measure_variant
from kompress.jobs.progress import Progress
from kompress.jobs.registry import repository as registry
from kompress.jobs.report import plot as report_plot
from kompress.jobs.report import render as report
from kompress.jobs.report.model import (
    Artifacts,
    DataFacts,
    Environment,
    ExportReport,
    ModelFacts,
    OptimizationReport,
    PromotionResult,
    RunEnergy,
    ServingSignature,
    TensorSpec,
    result_block,
)
from kompress.jobs.runtimes.base import Serving, openvino_installed, require_openvino, serving_names
from kompress.jobs.runtimes.onnxruntime import available_threads
from kompress.jobs.runtimes.ort_export import ORT_FILES, export_ort
from kompress.jobs.search import trials as search
from kompress.jobs.search.candidates import default_candidates
from kompress.jobs.spec.document import API_VERSION, Candidate, LoadedSpec, OptimizationSpec
from kompress.jobs.techniques import pipeline

SEED = 0
FIXED_STEPS = 6  # fetch, prepare, evaluate, gates, promote, write the report


@dataclass
class RunResult:
    report: OptimizationReport
    exit_code: ExitCode
    output_dir: Path


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    """Versions of what this process ran: an imported module's own version wins over installed metadata
    (onnxruntime-gpu imports as `onnxruntime`, and a CPU build's metadata may sit beside it)."""
    for module in ("numpy", "onnx", "onnxruntime"):  # the engine's own: imported, so their versions are read
        importlib.import_module(module)
    out = {"python": platform.python_version()}
    for dist in ("kompress-jobs", "onnx", "onnxruntime", "numpy", "torch", "transformers", "boto3", "openvino",
                 "nncf"):
        version = getattr(sys.modules.get(dist), "__version__", None)
        if version is None:
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        out[dist] = str(version)
    out["onnxruntimeProviders"] = ",".join(sys.modules["onnxruntime"].get_available_providers())
    return out


def new_report(loaded: LoadedSpec) -> OptimizationReport:
    return OptimizationReport(
        api_version=API_VERSION, name=loaded.name, started_at=_now(),
        spec=loaded.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        environment=_environment())


def _environment() -> Environment:
    """Where the run happened: the CPU and the cores it got, and how it was confined (user, read-only root)."""
    cpu = None
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), None)
    root_read_only = bool(os.statvfs("/").f_flag & os.ST_RDONLY) if hasattr(os, "statvfs") else None
    return Environment(platform=platform.platform(), machine=platform.machine(), seed=SEED, libraries=_versions(),
                       cpu=cpu, threads=available_threads(), uid=os.getuid() if hasattr(os, "getuid") else None,
                       root_read_only=root_read_only)


def run(loaded: LoadedSpec, output_dir: Path, *, output_uri: str | None = None, approve: bool = False,
        quiet: bool = False, resource_uid: str | None = None, promote: bool = True) -> RunResult:
    """Run the spec; ``promote=False`` leaves promotion to the caller (the operator promotes from the report)."""
    spec = loaded.spec
    planned = len(spec.steps()) if spec.search is None else spec.search.max_trials  # a search may stop early
    progress = Progress(FIXED_STEPS + planned, quiet=quiet)
    meter = open_meter(spec.target.energy.method, spec.target.device, spec.target.energy.cpu_watts_per_core)
    output_dir.mkdir(parents=True, exist_ok=True)
    rep = new_report(loaded)
    started = time.perf_counter()
    run_energy = Stopwatch(meter).__enter__()
    code = ExitCode.RUNTIME_FAILURE
    with tempfile.TemporaryDirectory(prefix="kompress-") as tmp:
        try:
            code = _run(loaded, rep, Path(tmp), output_dir, output_uri, progress, meter, approve, resource_uid,
                        promote)
        except KompressError as err:
            rep.outcome, rep.message, rep.error_kind = "failed", str(err), type(err).__name__
            code = err.exit_code
        except MemoryError:
            rep.outcome, rep.message = "failed", "out of memory (raise resources.memory)"
        finally:
            run_energy.__exit__()
            rep.finished_at = _now()
            rep.duration_seconds = round(time.perf_counter() - started, 2)
            rep.run_energy = RunEnergy(joules=run_energy.joules, method=meter.method)
    _write_outputs(rep, output_dir, output_uri, progress)
    return RunResult(rep, code, output_dir)


def _run(loaded: LoadedSpec, rep: OptimizationReport, work: Path, output_dir: Path, output_uri: str | None,
         progress: Progress, meter: Meter, approve: bool, resource_uid: str | None, promote: bool) -> ExitCode:
    spec = loaded.spec
    checkpoints = Checkpoints(storage.open_store(output_uri, field="--output") if output_uri
                              else storage.LocalStore(output_dir))
    _check_torch(spec)
    ws, candidates = open_workspace(loaded, work, checkpoints, progress)
    rep.model, rep.data = ws.model_facts, ws.data_facts
    serving = ws.baseline.serving
    if spec.search is None:
        result = pipeline.apply(ws, spec.steps(), "pipeline", evaluate_steps=True, step_lines=True)
        current, rep.steps = result.model, result.steps
    else:
        outcome = search.run(ws, spec.search, candidates, spec.gates, meter)
        rep.search = outcome.report(spec.search.objective, len(candidates), ws.op_share)
        if outcome.model is None:  # every candidate failed, or none applies: the original stays
            rep.outcome = "rejected"
            rep.message = ("no candidate produced a model to measure; nothing promoted ("
                           + ("; ".join(f"{t.name}: {t.message}" for t in outcome.trials)
                              or "no built-in candidate applies to where this model's time goes: "
                              + ", ".join(f"{op} {s:.0%}" for op, s in list(ws.op_share.items())[:4])) + ")")
            rep.promotion = PromotionResult(promoted=False, reason="no candidate")
            return ExitCode.GATES_REJECTED
        current, rep.steps, serving = outcome.model, outcome.steps, outcome.serving
        progress.info(f"search chose {outcome.trials[outcome.chosen or 0].name} on {serving.label} "
                      f"({outcome.stopped})")

    served, measured = _measure_result(ws, rep, current, serving, work, meter, progress)

    progress.step("applying gates")
    block = result_block(measured.candidate, measured.comparison)
    rep.gates = verdict = gates.evaluate(spec.gates, block, spec.search.objective if spec.search else None)
    rep.warnings = gates.regressions(block)
    for warning in rep.warnings:
        progress.info(f"WARNING: the optimized model is {warning}")
    _clear_model_outputs(output_dir)
    final = model_files.copy_model(served, output_dir / serving_names(serving.runtime)[0])
    exports: list[Path] = []
    if spec.export is not None:
        rep.export = _export(current, output_dir, ws, progress)
        exports = [Path(f) for f in rep.export.files]

    progress.step("promoting")
    rep.promotion = (_promote(loaded, rep, [*model_files.files_of(final), *exports], approve, resource_uid) if promote
                     else PromotionResult(promoted=False, reason="left to the caller (--no-promote)"))
    if not verdict.passed:
        rep.outcome, rep.message = "rejected", _rejection(rep, verdict.failures)
        return ExitCode.GATES_REJECTED
    rep.outcome = "succeeded"
    promo = rep.promotion
    rep.message = f"promoted to {promo.uri}" if promo.uri else f"gates passed; not promoted ({promo.reason})"
    return ExitCode.SUCCESS


def _measure_result(ws: pipeline.Workspace, rep: OptimizationReport, current: Path, serving: Serving, work: Path,
                    meter: Meter, progress: Progress) -> tuple[Path, Measured]:
    """The final measurement of what will be served (for OpenVINO the IR written from `current`, not the ONNX
    it came from), recorded in the report with the serving signature; returns the served model file."""
    progress.step(f"evaluating baseline ({ws.baseline.serving.label}) and optimized ({serving.label}) on "
                  f"{ws.evaluation.size} samples")
    ws.drop_torch_source()
    served = current
    if serving.runtime == "openvino":
        from kompress.jobs.runtimes.openvino import save_ir

        served = save_ir(current, work / "serve" / "model.xml", serving.precision or "f32")
    measured = measure_variant(ws.baseline, served, MeasurePlan.final(ws.spec.target), meter, progress,
                               serving=serving)
    rep.baseline, rep.optimized, rep.comparison = measured.baseline, measured.candidate, measured.comparison
    rep.signature = ServingSignature(inputs=_tensors(current, "input"), outputs=_tensors(current, "output"),
                                     runtime=serving.runtime, precision=measured.candidate.precision,
                                     format="openvino-ir" if serving.runtime == "openvino" else "onnx")
    return served, measured


MODEL_OUTPUTS = ("model.onnx", "model.onnx.data", "model.xml", "model.bin", *ORT_FILES)
"""The model files a run writes into its output folder (a previous run's are removed first, so the folder
never mixes two runs' models)."""


def _clear_model_outputs(output_dir: Path) -> None:
    for name in MODEL_OUTPUTS:
        (output_dir / name).unlink(missing_ok=True)


def _export(model: Path, output_dir: Path, ws: pipeline.Workspace, progress: Progress) -> ExportReport:
    """spec.export: the ORT format model beside the served one; an export that does not reproduce the ONNX
    model's outputs fails the run (it would be promoted beside it)."""
    progress.info("exporting the ORT format model (model.ort) and its reduced-operator config")
    exported = export_ort(model, output_dir, evaluate.latency_feeds(ws.evaluation, ws.spec.target))
    if not exported.matches_onnx:
        raise RuntimeFailure(f"export ort: model.ort's outputs differ from the ONNX model's by "
                             f"{exported.max_abs_difference:.3g}; nothing promoted")
    for line in exported.mobile_usability:
        progress.info(f"mobile usability: {line}")
    return exported


def _check_torch(spec: OptimizationSpec) -> None:
    """Before anything is fetched: a spec that needs PyTorch fails at once, in one line, where the engine has
    only its ONNX half (the slim image). A search's torch candidates fail as trials instead (pipeline.apply)."""
    if spec.model.format in ("huggingface", "torch-export"):
        require_torch(f"a {spec.model.format} model (exported to ONNX with PyTorch)", field="model.format")
    for i, (name, config) in enumerate(spec.steps()):
        if techmod.get(name).stage_of(config) == "torch":
            how = " (structured, or with finetune)" if name == "prune" else ""
            require_torch(f"technique '{name}'{how}", field=f"techniques[{i}]")
    if spec.target.runtime == "openvino":
        require_openvino("openvino", field="target.runtime")


def _rejection(rep: OptimizationReport, failures: list[str]) -> str:
    """Why nothing is promoted; a search where no trial beat the original says so in those words."""
    search = rep.search
    if search and search.trials and not any(
            t.metrics and not any(f.startswith("noRegression") for f in t.failures) for t in search.trials):
        return (f"no candidate improved {search.objective}; nothing promoted (the original stays the best: "
                + "; ".join(failures) + ")")
    return "gates failed: " + "; ".join(failures)


def _tensors(model: Path, kind: str) -> list[TensorSpec]:
    return [TensorSpec(name=t.name, dtype=t.dtype, shape=list(t.shape)) for t in model_io.tensor_specs(model, kind)]


def open_workspace(loaded: LoadedSpec, work: Path, checkpoints: Checkpoints,
                   progress: Progress) -> tuple[pipeline.Workspace, list[Candidate]]:
    """Fetch and prepare the model and data, split the rows, run the baseline once; the search candidates
    (given or built in) come back too. The workspace carries the facts for the report (model_facts,
    data_facts)."""
    spec = loaded.spec
    np.random.seed(SEED)
    progress.step(f"fetching model {spec.model.uri} and data {spec.data.uri}")
    model_local = storage.fetch(spec.model.uri, work / "fetch" / "model", field="model.uri")
    data_local = storage.fetch(spec.data.uri, work / "fetch" / "data", field="data.uri")
    dataset = datamod.load_npz(data_local)

    progress.step(f"preparing the model ({spec.model.format or 'format auto-detected'})")
    source = model_io.prepare(spec.model, model_local, work, dataset.inputs, seed=SEED)
    dataset = datamod.conform(dataset, source.inputs, declared=spec.data.inputs)
    calibration, evaluation, overlap = datamod.split(dataset, spec.data.calibration_samples,
                                                     spec.data.evaluation_samples, SEED)
    model_facts = ModelFacts(uri=spec.model.uri, format=source.format, sha256=source.sha256,
                             inputs=[i.name for i in source.inputs], metadata=source.metadata)
    data_facts = DataFacts(uri=spec.data.uri, sha256=dataset.sha256, samples=dataset.size,
                           evaluation_samples=evaluation.size, calibration_samples=calibration.size,
                           calibration_overlaps_evaluation=overlap, labels=dataset.labels is not None)
    op_share = _op_profile(source.onnx_path, evaluation, spec, progress) if spec.search else {}
    candidates = ((spec.search.candidates or default_candidates(source.format, source.metadata,
                                                                spec.target.device, op_share, spec.target.runtime))
                  if spec.search else [])
    if spec.search and spec.target.runtime == "auto" and not openvino_installed():
        progress.info("WARNING: target.runtime auto, but OpenVINO is not installed here (the slim image): only "
                      "ONNX Runtime is searched (install the extra `openvino`, or use the full image)")
    steps = spec.steps() + [s for c in candidates for s in c.steps()]
    train = (_training_rows(loaded, work, source.inputs, calibration, overlap, data_facts)
             if any(techmod.get(n).stage_of(c) == "torch" for n, c in steps)
             and dataset.feed_plan.is_batch_first else None)  # torch steps refuse data.inputs (pipeline)
    baseline = Baseline.open(source.onnx_path, evaluation, spec.model, spec.target, progress)
    ws = pipeline.Workspace(spec, source, model_local, calibration, evaluation, train, baseline, checkpoints,
                            [source.sha256, dataset.sha256, data_facts.train_sha256], progress, work, SEED,
                            model_facts=model_facts, data_facts=data_facts, op_share=op_share)
    return ws, candidates


def _op_profile(model: Path, evaluation: datamod.Dataset, spec: OptimizationSpec,
                progress: Progress) -> dict[str, float]:
    """Where the baseline's time goes per op type (what a search quantizes, and what it can expect to gain)."""
    share = op_profile.profile(model, evaluate.latency_feeds(evaluation, spec.target), spec.target)
    top = ", ".join(f"{op} {s:.0%}" for op, s in list(share.items())[:6])
    progress.info(f"baseline profile: {top}")
    return share


def _training_rows(loaded: LoadedSpec, work: Path, inputs: list, calibration: datamod.Dataset, overlap: bool,
                   facts: DataFacts) -> dict[str, np.ndarray] | None:
    """Rows for techniques that train: data.trainUri when set, else the calibration rows (never the
    evaluation rows, so a trained model is not scored on what it learned from). Records them in `facts`."""
    spec = loaded.spec
    rows = calibration
    if not spec.data.train_uri and overlap:
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


def _promote(loaded: LoadedSpec, rep: OptimizationReport, files: list[Path], approve: bool,
             resource_uid: str | None) -> PromotionResult:
    promo_spec = loaded.spec.promotion
    if promo_spec is None:
        return PromotionResult(promoted=False, reason="no promotion configured")
    if rep.gates is None or not rep.gates.passed:
        return PromotionResult(promoted=False, policy=promo_spec.policy, reason="gates failed")
    if promo_spec.awaiting_approval(approve):
        return PromotionResult(promoted=False, policy="manual", reason="awaiting approval (policy: manual)")
    return registry.promote_report(rep, [str(f) for f in files], promo_spec, resource_uid)


def _write_outputs(rep: OptimizationReport, output_dir: Path, output_uri: str | None, progress: Progress) -> None:
    progress.step(f"writing the report to {output_uri or output_dir}")
    plot_path = (_try_plot("plot", lambda: report_plot.plot(rep, output_dir / "report.png")) if rep.optimized
                 else None)
    search_plot = (_try_plot("search plot", lambda: search.plot(rep.search.trials, output_dir / "search.png"))
                   if rep.search else None)
    report.write_html(rep, plot_path, output_dir / "report.html", search_plot)
    model = next((output_dir / n for n in ("model.xml", "model.onnx") if (output_dir / n).exists()), None)
    files = {"model": model if rep.optimized else None,
             "report_json": output_dir / "report.json", "report_html": output_dir / "report.html",
             "plot": plot_path, "search_plot": search_plot}
    base = output_uri.rstrip("/") if output_uri else None
    rep.artifacts = Artifacts(**{k: (f"{base}/{f.name}" if base else str(f)) for k, f in files.items() if f})
    uploads: list[Path] = []
    if files["model"] is not None:
        uploads = model_files.files_of(files["model"])
        rep.artifacts.model_files = [f"{base}/{f.name}" if base else str(f) for f in uploads]
        if rep.export is not None:
            exported = [Path(f) for f in rep.export.files]
            rep.artifacts.exports = [f"{base}/{f.name}" if base else str(f) for f in exported]
            uploads += exported
    report.write_json(rep, output_dir / "report.json")
    if output_uri:
        store = storage.open_store(output_uri, field="--output")
        for f in [*uploads, *(output_dir / n for n in ("report.png", "search.png", "report.html", "report.json"))]:
            if f.exists():
                store.put_file(f.name, f)


def _try_plot(what: str, draw: object) -> Path | None:
    try:
        return draw()  # type: ignore[operator]
    except Exception as err:  # a plot is an extra: the report stands without it
        print(f"kompress: {what} skipped: {err}", file=sys.stderr)
        return None
