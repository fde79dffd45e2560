"""Runtimes side by side: MiniLM and the digits CNN on ONNX Runtime and OpenVINO, FP32, INT8 and bf16, in one run.

For each model (the engine's own examples, minilm-int8.yaml and digits-int8.yaml: same model, data, rows and
calibration/evaluation split as `kompress run`) the variants are
  ORT FP32 | ORT quantize_dynamic defaults (no options) | OpenVINO FP32 (f32 precision hint) |
  OpenVINO default precision (bf16 on CPUs with AMX/AVX512-BF16, else f32; the precision compiled is printed) |
  NNCF INT8 on OpenVINO (kompress's quantize backend nncf, f32 hint) | the same NNCF QDQ model on ORT |
  kompress's recipe on ORT (the example's techniques, through the technique registry).
Latency: batch 1 (`--batch`), every variant timed by the engine's `timing.measure_speed` in one run (blocks of
consecutive calls, variants alternating block by block; p50 of all timed calls). Quality on the evaluation rows:
mean cosine similarity to ORT FP32's outputs (the task's `quality`), and top-1 accuracy against the labels where
the data has them (digits).

Run: python bench/runtimes.py [--models minilm,digits] [--threads 2] [--iterations 200] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "jobs" / "src" / "kompress" / "jobs" / "examples"
MODELS = {"minilm": "minilm-int8.yaml", "digits": "digits-int8.yaml"}
SEED = 0  # runner.SEED: the same calibration/evaluation split as `kompress run`
BASELINE = "ORT FP32"


@dataclass
class Prepared:
    """One example's model and rows, as the engine prepares them."""

    spec: Any  # OptimizationSpec
    source: Any  # model_io.SourceModel
    calibration: Any  # data.Dataset
    evaluation: Any  # data.Dataset


def prepare(example: str, work: Path) -> Prepared:
    from kompress.jobs.io import data, storage
    from kompress.jobs.io import models as model_io
    from kompress.jobs.spec.document import load_spec_file

    spec = load_spec_file(EXAMPLES / example).spec
    local = storage.fetch(spec.model.uri, work / "fetch", field="model.uri")
    if local.is_file():  # a private copy: ONNX Runtime's quantizers write beside their input
        local = Path(shutil.copy2(local, work / local.name))
    dataset = data.load_npz(storage.fetch(spec.data.uri, work / "fetch", field="data.uri"))
    source = model_io.prepare(spec.model, local, work, dataset.inputs, seed=SEED)
    dataset = data.conform(dataset, source.inputs, declared=spec.data.inputs)
    calibration, evaluation, _ = data.split(dataset, spec.data.calibration_samples, spec.data.evaluation_samples,
                                            SEED)
    return Prepared(spec, source, calibration, evaluation)


def context(p: Prepared, workdir: Path) -> Any:
    from kompress.jobs.techniques.context import StepContext

    return StepContext(workdir=workdir, calibration=p.calibration.inputs, labels=p.calibration.labels,
                       metadata=dict(p.source.metadata), task=p.spec.model.task, seed=SEED,
                       input_plan=p.calibration.plan)


def build(p: Prepared, work: Path) -> tuple[dict[str, tuple[Path, Any]], float]:
    """Each variant's file and how it is served; and the seconds NNCF's quantization took."""
    from onnxruntime.quantization import quantize_dynamic

    from kompress.jobs.cpu import cpu_has_bf16
    from kompress.jobs.runtimes.registry import Serving
    from kompress.jobs.techniques.catalog import get
    from kompress.jobs.techniques.configs import QuantizeConfig
    from kompress.jobs.techniques.quantize import quantize

    fp32 = p.source.onnx_path
    qdyn = work / "quantize_dynamic_defaults.onnx"
    quantize_dynamic(str(fp32), str(qdyn))
    t0 = time.perf_counter()
    nncf = quantize(fp32, QuantizeConfig(method="static", backend="nncf"), context(p, work / "nncf")).model_path
    nncf_seconds = time.perf_counter() - t0
    current = fp32
    for i, (name, config) in enumerate(p.spec.steps()):
        current = get(name).apply(current, config, context(p, work / f"recipe{i}")).model_path
    ov = Serving("openvino", "f32")
    default = Serving("openvino", "bf16" if cpu_has_bf16() else "f32")
    return {BASELINE: (fp32, Serving()), "ORT quantize_dynamic defaults": (qdyn, Serving()),
            "OpenVINO FP32": (fp32, ov), "OpenVINO default precision": (fp32, default),
            "NNCF INT8 on OpenVINO": (nncf, ov), "NNCF QDQ on ORT": (nncf, Serving()),
            "kompress recipe on ORT": (current, Serving())}, nncf_seconds


def measure(p: Prepared, variants: dict[str, tuple[Path, Any]], threads: int, batch: int,
            iterations: int) -> tuple[list[dict[str, Any]], str]:
    """One row per variant (quality on the evaluation rows, latency from one interleaved timing run), and how
    the latency was timed."""
    from kompress.jobs.io import model_files
    from kompress.jobs.measure import evaluate, timing
    from kompress.jobs.measure.evaluate import open_variant
    from kompress.jobs.tasks import registry as tasks

    target = p.spec.target.model_copy(update={"threads": threads, "batch_size": batch})
    sessions = {name: open_variant(path, target, serving) for name, (path, serving) in variants.items()}
    print(f"  quality on {p.evaluation.size} rows ...", file=sys.stderr, flush=True)
    outputs = {name: evaluate.run_all(s, p.evaluation, p.spec.model.output) for name, s in sessions.items()}
    print(f"  timing {len(sessions)} variants side by side ...", file=sys.stderr, flush=True)
    plan = timing.TimingPlan(iterations, target.warmup_iterations, throughput=False, energy=False)
    speeds = timing.measure_speed(sessions, p.evaluation, target, plan, None)
    base_p50 = speeds[BASELINE].latency.p50
    rows = []
    for name, (path, serving) in variants.items():
        base_q, q = tasks.get(p.spec.model.task).quality(outputs[BASELINE], outputs[name], p.evaluation)
        p50 = speeds[name].latency.p50
        rows.append({"variant": name, "runtime": serving.runtime,
                     "precision": getattr(sessions[name], "precision", "graph types"),
                     "p50Ms": p50 * 1e3, "speedupVsOrtFp32": base_p50 / p50,
                     "cosine": q.fidelity.cosine_similarity_mean if q.fidelity else 1.0,
                     "accuracy": q.accuracy if name != BASELINE else base_q.accuracy,
                     "sizeMB": model_files.size_bytes(path) / 1e6})
    return rows, speeds[BASELINE].latency.method


def run_model(name: str, threads: int, batch: int, iterations: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        print(f"{name}: preparing model and data ...", file=sys.stderr, flush=True)
        p = prepare(MODELS[name], Path(tmp))
        print(f"{name}: building variants (NNCF included) ...", file=sys.stderr, flush=True)
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout is for the tables
            variants, nncf_seconds = build(p, Path(tmp))
        rows, method = measure(p, variants, threads, batch, iterations)
    shape = {k: list(v.shape[1:]) for k, v in p.evaluation.inputs.items()}
    return {"model": name, "spec": MODELS[name], "recipe": [n for n, _ in p.spec.steps()], "inputShape": shape,
            "evaluationRows": p.evaluation.size, "nncfSeconds": nncf_seconds, "timing": method, "rows": rows}


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def versions() -> dict[str, str]:
    import nncf
    import onnxruntime
    import openvino

    return {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__, "nncf": nncf.__version__}


def fastest(rows: list[dict[str, Any]], min_cosine: float) -> str:
    ok = [r for r in rows if r["cosine"] >= min_cosine]
    best = min(ok, key=lambda r: r["p50Ms"]) if ok else None
    return f"{best['variant']} ({best['speedupVsOrtFp32']:.2f}x)" if best else "none"


def print_table(result: dict[str, Any]) -> None:
    labels = any(r["accuracy"] is not None for r in result["rows"])
    print(f"\n### {result['model']} ({result['spec']}; input {result['inputShape']}; "
          f"quality on {result['evaluationRows']} evaluation rows; NNCF quantization {result['nncfSeconds']:.1f} s; "
          f"kompress recipe: {' -> '.join(result['recipe'])})\n\ntiming: {result['timing']}\n")
    head = ["variant", "runtime", "precision", "p50 ms", "x ORT FP32", "cosine"] + (["top-1 acc"] if labels else [])
    print("| " + " | ".join(head) + " | size MB |")
    print("|" + "---|" * (len(head) + 1))
    for r in result["rows"]:
        cells = [r["variant"], r["runtime"], r["precision"], f"{r['p50Ms']:.3f}", f"{r['speedupVsOrtFp32']:.2f}x",
                 f"{r['cosine']:.5f}"] + ([f"{r['accuracy']:.4f}"] if labels else [])
        print("| " + " | ".join(cells) + f" | {r['sizeMB']:.2f} |")
    print(f"\nfastest with cosine >= 0.99: {fastest(result['rows'], 0.99)}; "
          f"with cosine >= 0.995: {fastest(result['rows'], 0.995)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,digits", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every variant")
    parser.add_argument("--batch", type=int, default=1, help="latency batch size")
    parser.add_argument("--iterations", type=int, default=200, help="timed calls per variant")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown := [m for m in names if m not in MODELS]:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    from kompress.jobs.cpu import cpu_has_bf16

    results = [run_model(name, args.threads, args.batch, args.iterations) for name in names]
    lib = versions()
    print(f"CPU: {cpu_name()} (bf16 native: {'yes' if cpu_has_bf16() else 'no'}); {args.threads} thread(s); "
          + ", ".join(f"{k} {v}" for k, v in lib.items()))
    print(f"Latency: batch {args.batch}, p50 of all timed calls after a warm-up; each model's variants timed in one "
          f"run by kompress's timing.measure_speed (--iterations {args.iterations} sets the rounds; a fast "
          "model's blocks hold more calls: see each table's timing line)")
    for result in results:
        print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu_name(), "threads": args.threads, "batch": args.batch,
                                         "iterations": args.iterations, "libraries": lib, "models": results},
                                        indent=2))
        print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
