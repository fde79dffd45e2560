"""One optimization run: load -> baseline -> techniques -> evaluate -> gates -> report -> promote.

The same function runs behind `kompress run` on a laptop and inside the operator's Job."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs import data as datamod
from kompress.jobs import evaluate, gates, model_io, onnx_utils, pipeline, registry, report, search, storage
from kompress.jobs import techniques as techmod
from kompress.jobs.checkpoints import Checkpoints
from kompress.jobs.energy import Stopwatch, open_meter
from kompress.jobs.errors import ExitCode, KompressError, RuntimeFailure
from kompress.jobs.progress import Progress
from kompress.jobs.spec import API_VERSION, LoadedSpec

SEED = 0
FIXED_STEPS = 6  # fetch, prepare, evaluate, gates, promote, write the report


@dataclass
class RunResult:
    report: dict[str, Any]
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
    for dist in ("kompress", "onnx", "onnxruntime", "numpy", "torch", "transformers", "boto3"):
        version = getattr(sys.modules.get(dist), "__version__", None)
        if version is None:
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        out[dist] = str(version)
    out["onnxruntimeProviders"] = ",".join(sys.modules["onnxruntime"].get_available_providers())
    return out


def run(loaded: LoadedSpec, output_dir: Path, *, output_uri: str | None = None, approve: bool = False,
        quiet: bool = False, resource_uid: str | None = None, promote: bool = True) -> RunResult:
    """Run the spec; ``promote=False`` leaves promotion to the caller (the operator promotes from the report)."""
    spec = loaded.spec
    steps = spec.steps()
    planned = len(steps) if spec.search is None else spec.search.max_trials  # a search may stop early
    progress = Progress(FIXED_STEPS + planned, quiet=quiet)
    meter = open_meter(spec.target.energy.method, spec.target.device, spec.target.energy.cpu_watts_per_core)
    output_dir.mkdir(parents=True, exist_ok=True)
    rep: dict[str, Any] = {
        "apiVersion": API_VERSION, "kind": "OptimizationReport", "name": loaded.name, "outcome": "failed",
        "message": "", "startedAt": _now(), "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "steps": [], "environment": {"platform": platform.platform(), "machine": platform.machine(),
                                     "seed": SEED, "libraries": _versions()},
    }
    started = time.perf_counter()
    run_energy = Stopwatch(meter).__enter__()
    code = ExitCode.RUNTIME_FAILURE
    with tempfile.TemporaryDirectory(prefix="kompress-") as tmp:
        work = Path(tmp)
        try:
            code = _run(loaded, rep, work, output_dir, output_uri, progress, meter, approve, resource_uid,
                        promote)
        except KompressError as err:
            rep["outcome"], rep["message"] = "failed", str(err)
            rep["errorKind"] = type(err).__name__
            code = err.exit_code
        except MemoryError:
            rep["outcome"], rep["message"] = "failed", "out of memory (raise resources.memory)"
        finally:
            run_energy.__exit__()
            rep["finishedAt"] = _now()
            rep["durationSeconds"] = round(time.perf_counter() - started, 2)
            rep["runEnergy"] = {"joules": run_energy.joules, "method": meter.method}
    _write_outputs(rep, output_dir, output_uri, progress)
    return RunResult(rep, code, output_dir)


def _run(loaded: LoadedSpec, rep: dict[str, Any], work: Path, output_dir: Path, output_uri: str | None,
         progress: Progress,
         meter: Any, approve: bool, resource_uid: str | None, promote: bool) -> ExitCode:
    spec = loaded.spec
    checkpoints = Checkpoints(storage.open_store(output_uri, field="--output") if output_uri
                              else storage.LocalStore(output_dir))
    ws, candidates = open_workspace(loaded, rep, work, checkpoints, progress)
    source, evaluation, target = ws.source, ws.evaluation, spec.target
    base_session, base_out, inputs = ws.base_session, ws.base_out, source.inputs
    if spec.search is None:
        result = pipeline.apply(ws, spec.steps(), "pipeline", evaluate_steps=True, step_lines=True)
        current, rep["steps"] = result.model, result.steps
    else:
        outcome = search.run(ws, spec.search, candidates, spec.gates, meter)
        rep["search"] = {"objective": spec.search.objective, "candidates": len(candidates),
                         "stopped": outcome.stopped, "chosen": outcome.chosen, "trials": outcome.trials}
        if outcome.model is None:
            raise RuntimeFailure("search: no candidate produced a model: "
                                 + "; ".join(f"{t['name']}: {t.get('message')}" for t in outcome.trials))
        current, rep["steps"] = outcome.model, outcome.steps
        progress.info(f"search chose {outcome.trials[outcome.chosen]['name']} ({outcome.stopped})")

    progress.step(f"evaluating baseline and optimized on {evaluation.size} samples")
    sessions = {"baseline": base_session, "optimized": evaluate.open_session(current, target)}
    del ws
    opt_out = evaluate.run_all(sessions["optimized"], evaluation.inputs, spec.model.output, progress, "optimized")
    base_q, opt_q = evaluate.quality(base_out, opt_out, evaluation, spec.model.task)
    speed = evaluate.measure_speed(sessions, evaluation, target, meter, progress)
    del sessions, base_session
    base_mem, base_mem_of = evaluate.peak_memory(source.onnx_path, evaluation, target)
    opt_mem, opt_mem_of = evaluate.peak_memory(current, evaluation, target)
    baseline = {**evaluate.static_facts(source.onnx_path), **speed["baseline"], "quality": base_q,
                "parameters": onnx_utils.parameter_count(source.onnx_path),
                "peakMemoryBytes": base_mem, "peakMemoryOf": base_mem_of}
    optimized = {**evaluate.static_facts(current), **speed["optimized"], "quality": opt_q,
                 "parameters": onnx_utils.parameter_count(current),
                 "peakMemoryBytes": opt_mem, "peakMemoryOf": opt_mem_of}
    if target.device == "gpu":  # ops the CUDA provider cannot run fall back to the CPU: say which
        baseline["placement"] = evaluate.node_placement(source.onnx_path, evaluation, target)
        optimized["placement"] = evaluate.node_placement(current, evaluation, target)
    rep["baseline"], rep["optimized"] = baseline, optimized

    progress.step("applying gates")
    rep["comparison"] = gates.comparison(baseline, optimized)
    verdict = gates.evaluate(spec.gates, report.status_blocks(rep)["result"])
    rep["gates"] = verdict
    final = onnx_utils.copy_model(current, output_dir / "model.onnx")

    progress.step("promoting")
    if promote:
        rep["promotion"] = _promote(loaded, rep, final, verdict["passed"], approve, resource_uid, inputs, current)
    else:
        rep["promotion"] = {"promoted": False, "reason": "left to the caller (--no-promote)"}
    if not verdict["passed"]:
        rep["outcome"] = "rejected"
        rep["message"] = "gates failed: " + "; ".join(verdict["failures"])
        return ExitCode.GATES_REJECTED
    rep["outcome"] = "succeeded"
    promo = rep["promotion"]
    rep["message"] = (f"promoted to {promo['uri']}" if promo.get("uri")
                      else f"gates passed; not promoted ({promo.get('reason')})")
    return ExitCode.SUCCESS


def open_workspace(loaded: LoadedSpec, rep: dict[str, Any], work: Path, checkpoints: Checkpoints,
                   progress: Progress) -> tuple[pipeline.Workspace, list[Any]]:
    """Fetch and prepare the model and data, split the rows, run the baseline once; the search candidates
    (given or built in) come back too. Fills rep["model"] and rep["data"]."""
    spec = loaded.spec
    np.random.seed(SEED)
    progress.step(f"fetching model {spec.model.uri} and data {spec.data.uri}")
    model_local = storage.fetch(spec.model.uri, work / "fetch" / "model", field="model.uri")
    data_local = storage.fetch(spec.data.uri, work / "fetch" / "data", field="data.uri")
    dataset = datamod.load_npz(data_local)

    progress.step(f"preparing the model ({spec.model.format or 'format auto-detected'})")
    source = model_io.prepare(spec.model, model_local, work, dataset.inputs, seed=SEED)
    inputs = source.inputs
    dataset = datamod.conform(dataset, inputs)
    calibration, evaluation, overlap = datamod.split(dataset, spec.data.calibration_samples,
                                                     spec.data.evaluation_samples, SEED)
    rep["model"] = {"uri": spec.model.uri, "format": source.format, "sha256": source.sha256,
                    "inputs": [i.name for i in inputs], "metadata": source.metadata}
    rep["data"] = {"uri": spec.data.uri, "sha256": dataset.sha256, "samples": dataset.size,
                   "evaluationSamples": evaluation.size, "calibrationSamples": calibration.size,
                   "calibrationOverlapsEvaluation": overlap, "labels": dataset.labels is not None}

    candidates = ((spec.search.candidates or search.default_candidates(source.format, source.metadata,
                                                                       spec.target.device))
                  if spec.search else [])
    steps_needing_torch = spec.steps() + [s for c in candidates for s in c.steps()]
    train = _training_rows(loaded, rep, work, inputs, calibration, steps_needing_torch)
    base_session = evaluate.open_session(source.onnx_path, spec.target)
    base_out = evaluate.run_all(base_session, evaluation.inputs, spec.model.output, progress, "baseline")
    ws = pipeline.Workspace(spec, source, model_local, calibration, evaluation, train, base_session, base_out,
                            checkpoints, [source.sha256, dataset.sha256, rep["data"].get("trainSha256")],
                            progress, work, SEED)
    return ws, candidates


def _training_rows(loaded: LoadedSpec, rep: dict[str, Any], work: Path, inputs: list,
                   calibration: datamod.Dataset, steps: list) -> dict[str, np.ndarray] | None:
    """Rows for techniques that train: data.trainUri when set, else the calibration rows (never the
    evaluation rows, so a trained model is not scored on what it learned from)."""
    spec = loaded.spec
    if not any(techmod.get(n).stage_of(c) == "torch" for n, c in steps):
        return None
    rows = calibration
    if not spec.data.train_uri and rep["data"]["calibrationOverlapsEvaluation"]:
        # training on evaluation rows would score the model on what it learned from
        rep["data"]["trainSamples"] = 0
        return None
    if spec.data.train_uri:
        local = storage.fetch(spec.data.train_uri, work / "fetch" / "train", field="data.trainUri")
        rows = datamod.conform(datamod.load_npz(local, field="data.trainUri"), inputs, field="data.trainUri")
    n = min(rows.size, spec.data.train_samples)
    rep["data"] |= {"trainUri": spec.data.train_uri or spec.data.uri + " (calibration rows)",
                    "trainSha256": rows.sha256, "trainSamples": n}
    out = {k: v[:n] for k, v in rows.inputs.items()}
    if rows.labels is not None:
        out["labels"] = rows.labels[:n]
    return out


def _promote(loaded: LoadedSpec, rep: dict[str, Any], final: Path, passed: bool, approve: bool,
             resource_uid: str | None, inputs: list, model_path: Path) -> dict[str, Any]:
    promo_spec = loaded.spec.promotion
    if promo_spec is None:
        return {"promoted": False, "reason": "no promotion configured"}
    if not passed:
        return {"promoted": False, "policy": promo_spec.policy, "reason": "gates failed"}
    if promo_spec.policy == "manual" and not (approve or promo_spec.approved):
        return {"promoted": False, "policy": "manual", "reason": "awaiting approval (policy: manual)"}
    outputs = model_io.tensor_specs(model_path, "output")
    return registry.promote_report(rep, final, promo_spec, resource_uid, inputs, outputs)


def _write_outputs(rep: dict[str, Any], output_dir: Path, output_uri: str | None, progress: Progress) -> None:
    progress.step(f"writing the report to {output_uri or output_dir}")
    artifacts: dict[str, str] = {}
    plot_path = None
    if rep.get("optimized"):
        try:
            plot_path = report.plot(rep, output_dir / "report.png")
        except Exception as err:
            print(f"kompress: plot skipped: {err}", file=sys.stderr)
    search_plot = None
    if rep.get("search"):
        try:
            search_plot = search.plot(rep["search"]["trials"], output_dir / "search.png")
        except Exception as err:
            print(f"kompress: search plot skipped: {err}", file=sys.stderr)
    report.write_html(rep, plot_path, output_dir / "report.html", search_plot)
    if (output_dir / "model.onnx").exists() and rep.get("optimized"):
        artifacts["model"] = str(output_dir / "model.onnx")
    artifacts |= {"reportJson": str(output_dir / "report.json"), "reportHtml": str(output_dir / "report.html")}
    if plot_path:
        artifacts["plot"] = str(plot_path)
    if search_plot:
        artifacts["searchPlot"] = str(search_plot)
    if output_uri:
        base = output_uri.rstrip("/")
        artifacts = {k: f"{base}/{Path(v).name}" for k, v in artifacts.items()}
    rep["artifacts"] = artifacts
    report.write_json(rep, output_dir / "report.json")
    if output_uri:
        store = storage.open_store(output_uri, field="--output")
        for name in ("model.onnx", "model.onnx.data", "report.png", "search.png", "report.html", "report.json"):
            f = output_dir / name
            if f.exists() and (name != "model.onnx" or "model" in artifacts):
                store.put_file(name, f)
