"""A model's copies in other forms, each judged against the original framework's own outputs on the main
evaluation rows, by the spec's quality gates: the ONNX graph a Keras, TensorFlow or scikit-learn model was
converted to (before anything else is done with it: a converter that changes results is caught, not
compressed), and the TFLite export (in the LiteRT interpreter)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kompress.jobs import gates
from kompress.jobs.errors import KompressError, RuntimeFailure, first_line
from kompress.jobs.io.data import Dataset
from kompress.jobs.io.frameworks.base import Converted
from kompress.jobs.measure.variant import Baseline
from kompress.jobs.progress import Progress
from kompress.jobs.report.model import ConversionReport, CopyCheck, ExportReport, GateResult
from kompress.jobs.runtimes import litert
from kompress.jobs.spec.document import OptimizationSpec
from kompress.jobs.tasks import registry as tasks

BATCH = 32
TFLITE_TIMED_RUNS = 50
TFLITE_TIME_BUDGET_SECONDS = 20.0


def run_batched(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], data: Dataset, output: str,
                batch: int = BATCH) -> np.ndarray:
    """`output` of `run` over every row of `data`, batch by batch (feeds keyed by the ONNX graph's input names)."""
    parts = [np.asarray(run(data.feeds(start, start + batch))[output]) for start in range(0, data.size, batch)]
    return np.concatenate(parts, axis=0)


def _check(spec: OptimizationSpec, reference: np.ndarray, copy: np.ndarray, data: Dataset, name: str, level: float,
           floor: dict[str, float] | None) -> CopyCheck:
    if copy.shape != reference.shape and copy.size == reference.size:
        copy = copy.reshape(reference.shape)
    judged = tasks.get(spec.model.task).judge_set(reference, copy, data, name, level)
    results = gates.judge_copy(spec.gates, judged.slice, floor)
    broken = int((~np.isfinite(copy)).sum())
    if broken:  # whatever gates are set (or none): a copy that computes NaN or inf is broken
        results.append(GateResult(gate="finiteOutputs", threshold=0.0, measured=float(broken), passed=False,
                                  slice=name, message=f"finiteOutputs: {broken} of {copy.size} output values are "
                                                      "NaN or infinite"))
    return CopyCheck(samples=data.size, quality=judged.slice,
                     max_abs_difference=float(np.abs(reference.astype(np.float64) - copy).max()),
                     gates=results, passed=all(r.passed for r in results))


def check_conversion(converted: Converted, fmt: str, baseline: Baseline, spec: OptimizationSpec,
                     progress: Progress) -> ConversionReport:
    """The converted graph's outputs (the baseline's, on its runtime) against the original framework's on the
    same rows; keeps the original's outputs on `converted` for the TFLite export's check."""
    output = spec.model.output or converted.outputs[0]
    progress.info(f"conversion: running the original {fmt} model on {baseline.evaluation.size} evaluation rows")
    converted.reference = run_batched(converted.run_original, baseline.evaluation, output)
    check = _check(spec, converted.reference, baseline.outputs, baseline.evaluation, "conversion", baseline.level,
                   {"minCosineSimilarity": gates.CONVERSION_MIN_COSINE})
    q = check.quality
    progress.info(f"conversion: {converted.route}; against the original: cosine {q.cosine_similarity:.6f}"
                  + (f", top-1 agreement {q.top1_agreement:.4f}" if q.top1_agreement is not None else "")
                  + f", max |diff| {check.max_abs_difference:.3g} ({'holds' if check.passed else 'FAILS'} the gates)")
    return ConversionReport(framework=fmt, route=converted.route, versions=converted.versions, check=check)


def export_tflite(converted: Converted, fmt: str, spec: OptimizationSpec, calibration: Dataset, evaluation: Dataset,
                  output_dir: Path, threads: int, progress: Progress) -> ExportReport:
    """spec.export tflite: written from the original, run in LiteRT on the evaluation rows, judged against the
    original's outputs by the quality gates, and timed on one batch of target.batchSize."""
    # the format and the extra were checked by the runner once the format was known (litert.require)
    saved_model = converted.original.saved_model
    assert spec.export is not None and converted.reference is not None and saved_model is not None
    precision = spec.export.tflite_precision
    progress.info(f"exporting tflite ({precision}) from the original {fmt} model")
    rows = {k: calibration.inputs[k] for k in converted.inputs} if calibration.size else {}
    written = litert.write(saved_model, precision, rows, output_dir / litert.FILE)
    output = spec.model.output or converted.outputs[0]
    try:
        interpreter = litert.Interpreter(written.path, threads, (converted.inputs, converted.outputs),
                                         converted.original.tensor_names)
        outputs = run_batched(interpreter.run, evaluation, output)
    except KompressError:
        raise
    except Exception as err:  # the interpreter's own errors, as one line
        raise RuntimeFailure(f"the tflite model does not run in LiteRT: {first_line(err)}") from None
    check = _check(spec, converted.reference, outputs.astype(np.float32), evaluation, "tflite",
                   spec.gates.interval_level, None)
    latency = _time(interpreter, evaluation, spec.target.batch_size)
    report = ExportReport(format=litert.FORMAT, files=[str(written.path)], route=written.route, precision=precision,
                          size_bytes=written.path.stat().st_size, latency_p50_seconds=latency,
                          runtime=litert.Interpreter.version(), check=check,
                          max_abs_difference=check.max_abs_difference)
    q = check.quality
    progress.info(f"tflite {precision}: {written.path.stat().st_size / 1e6:.2f} MB, p50 {latency * 1e3:.2f} ms in "
                  f"{report.runtime}; against the original: cosine {q.cosine_similarity:.4f}"
                  + (f", accuracy {q.accuracy:.4f} (original {q.baseline_accuracy:.4f})"
                     if q.accuracy is not None and q.baseline_accuracy is not None else "")
                  + (f", top-1 agreement {q.top1_agreement:.4f}" if q.top1_agreement is not None else ""))
    return report


def _time(interpreter: litert.Interpreter, data: Dataset, batch: int) -> float:
    feeds = data.feeds(0, min(batch, data.size))
    interpreter.run(feeds)  # warm-up (allocates for this shape)
    times: list[float] = []
    budget = time.perf_counter() + TFLITE_TIME_BUDGET_SECONDS
    while len(times) < TFLITE_TIMED_RUNS and (len(times) < 5 or time.perf_counter() < budget):
        started = time.perf_counter()
        interpreter.run(feeds)
        times.append(time.perf_counter() - started)
    return statistics.median(times)
