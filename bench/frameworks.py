"""Models from other frameworks side by side with the conversions their own authors ship, in one run.

basic-pitch 0.4.0 ships its SavedModel together with Spotify's own ONNX (tf2onnx) conversion; fer 25.10.3 ships
its Keras emotion model together with its own quantized TFLite. On each, this compares, on the same rows:
  basic-pitch  the SavedModel in TensorFlow | the peer's nmp.onnx on ONNX Runtime | kompress's conversion on ONNX
               Runtime | kompress's `search: {}` result (the engine's report: its final measurement);
  fer          the peer's emotion_model_quantized.tflite | kompress's tflite int8 | fp16 | fp32, all in LiteRT.
Quality: cosine to the original framework's outputs (basic-pitch: the pitch contour; fer: the 7 class scores)
and top-1 agreement (fer). Latency: batch 1, 2 threads, the variants alternating call by call, p50 over
`--iterations` calls each. Data: scripts/framework_zoo.py (harmonic notes; photograph crops: fidelity only).

Needs the tensorflow tier's environment (.ci/install-tf-tier.sh):
  $KOMPRESS_CACHE/venv-tf/bin/python bench/frameworks.py [--iterations 200] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import framework_zoo  # noqa: E402

THREADS = 2


def interleaved(runs: dict[str, Callable[[], Any]], iterations: int) -> dict[str, float]:
    """p50 seconds of each callable, called in turn (a, b, c, a, b, c, ...) after 5 warm-up rounds."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(iterations + 5):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            if i >= 5:
                times[name].append(time.perf_counter() - started)
    return {k: statistics.median(v) for k, v in times.items()}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_search(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    subprocess.run([sys.executable, "-m", "kompress.jobs.cli", "run", str(path), "-o", str(work / "out"), "-q"],
                   cwd=work, check=False, capture_output=True, text=True)
    return json.loads((work / "out" / "report.json").read_text())


def contour(outputs: list[np.ndarray]) -> np.ndarray:
    return next(o for o in outputs if o.shape[-1] == 264)


def basic_pitch(work: Path, iterations: int) -> list[dict[str, Any]]:
    from kompress.jobs.io.frameworks import registry as frameworks
    from kompress.jobs.spec.sections import ModelSpec

    model = framework_zoo.extract(framework_zoo.PITCH_MODEL, work)
    peer = framework_zoo.extract(framework_zoo.PITCH_PEER_ONNX, work)
    x = framework_zoo.harmonic_notes(48)
    converted = frameworks.get("tensorflow").convert(model, work, ModelSpec(uri=str(model), task="generic"))
    # compared on the pitch contour (the 264-bin output; the peer's graph names its outputs its own way)
    original = np.concatenate([contour(converted.original.run([x[i:i + 8]])) for i in range(0, len(x), 8)])
    sessions = {"peer nmp.onnx (ORT)": ort_session(peer), "kompress conversion (ORT)": ort_session(
        converted.onnx_path)}

    def ort_all(session: Any) -> np.ndarray:
        name = session.get_inputs()[0].name
        return np.concatenate([contour(session.run(None, {name: x[i:i + 8]})) for i in range(0, len(x), 8)])

    one = x[:1]
    latency = interleaved({"SavedModel (TensorFlow)": lambda: converted.original.run([one]),
                           **{k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: one}))
                              for k, s in sessions.items()}}, iterations)
    rows = [{"model": "basic-pitch", "variant": "SavedModel (TensorFlow)", "size_mb": None, "cosine": 1.0,
             "p50_ms": latency["SavedModel (TensorFlow)"] * 1e3}]
    for name, session in sessions.items():
        path = peer if name.startswith("peer") else converted.onnx_path
        rows.append({"model": "basic-pitch", "variant": name, "size_mb": path.stat().st_size / 1e6,
                     "cosine": cosine(original, ort_all(session)), "p50_ms": latency[name] * 1e3})
    np.savez(work / "notes.npz", input_2=x)
    report = run_search({"apiVersion": "kompress.dev/v1alpha1", "kind": "ModelOptimization",
                         "metadata": {"name": "pitch"},
                         "spec": {"model": {"uri": str(model), "task": "generic"},
                                  "data": {"uri": str(work / "notes.npz"), "calibrationSamples": 16,
                                           "evaluationSamples": 32},
                                  "search": {"maxTrials": 6, "trialIterations": 30},
                                  "target": {"threads": THREADS, "iterations": iterations},
                                  "gates": {"minCosineSimilarity": 0.99}}}, work / "search")
    if report.get("optimized"):
        base, best = report["baseline"], report["optimized"]
        rows.append({"model": "basic-pitch", "variant": f"kompress search: {best.get('runtime')} "
                     f"{best.get('precision') or ''} ({report['outcome']})", "size_mb": best["sizeBytes"] / 1e6,
                     "cosine": best["quality"]["fidelity"]["cosineSimilarityMean"],
                     "p50_ms": best["latencySeconds"]["p50"] * 1e3,
                     "note": f"x{report['comparison']['speedup']:.2f} vs the conversion on ORT in the engine's own "
                             f"run (baseline p50 {base['latencySeconds']['p50'] * 1e3:.2f} ms)"})
    else:
        rows.append({"model": "basic-pitch", "variant": f"kompress search ({report['outcome']})",
                     "note": report.get("message", "")})
    return rows


def fer(work: Path, iterations: int) -> list[dict[str, Any]]:
    from kompress.jobs.io.frameworks import registry as frameworks
    from kompress.jobs.runtimes import litert
    from kompress.jobs.spec.sections import ModelSpec

    model = framework_zoo.extract(framework_zoo.FER_MODEL, work)
    peer = framework_zoo.extract(framework_zoo.FER_PEER_TFLITE, work)
    x = framework_zoo.photo_crops(400)
    calibration, evaluation = x[:100], x[100:]
    converted = frameworks.get("keras").convert(model, work, ModelSpec(uri=str(model), task="classification"))
    original = np.concatenate([converted.original.run([evaluation[i:i + 50]])[0] for i in range(0, 300, 50)])
    paths = {"peer emotion_model_quantized.tflite": peer}
    for precision in ("int8", "fp16", "fp32"):
        written = litert.write(converted.original.saved_model, precision, {"input_1": calibration},
                               work / f"fer-{precision}.tflite")
        paths[f"kompress tflite {precision}"] = written.path
    from ai_edge_litert.interpreter import Interpreter

    def scores(path: Path, rows: np.ndarray) -> np.ndarray:
        it = Interpreter(model_path=str(path), num_threads=THREADS)
        it.allocate_tensors()
        d, o = it.get_input_details()[0], it.get_output_details()[0]
        out = []
        for row in rows:
            sample = row[None]
            if d["dtype"] == np.int8:  # the peer's model takes int8 input: quantize as its parameters say
                scale, zero = d["quantization"]
                sample = np.clip(np.round(sample / scale + zero), -128, 127).astype(np.int8)
            it.set_tensor(d["index"], sample.astype(d["dtype"]))
            it.invoke()
            y = it.get_tensor(o["index"]).astype(np.float32)
            if o["dtype"] == np.int8:
                scale, zero = o["quantization"]
                y = (y - zero) * scale
            out.append(y[0])
        return np.asarray(out)

    def caller(path: Path) -> Callable[[], Any]:
        it = Interpreter(model_path=str(path), num_threads=THREADS)
        d = it.get_input_details()[0]
        it.allocate_tensors()
        sample = np.zeros(d["shape"], d["dtype"])

        def call() -> None:
            it.set_tensor(d["index"], sample)
            it.invoke()
        return call

    latency = interleaved({k: caller(p) for k, p in paths.items()}, iterations)
    rows = []
    for name, path in paths.items():
        got = scores(path, evaluation)
        rows.append({"model": "fer", "variant": name, "size_mb": path.stat().st_size / 1e6,
                     "cosine": cosine(original, got),
                     "top1": float((got.argmax(1) == original.argmax(1)).mean()), "p50_ms": latency[name] * 1e3})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from kompress.jobs import cpu

    with tempfile.TemporaryDirectory(prefix="kompress-bench-") as tmp:
        rows = fer(Path(tmp), args.iterations) + basic_pitch(Path(tmp), args.iterations)
    print(f"CPU: {cpu.cpu_model()}; flags: {' '.join(cpu.notable_flags())}; {THREADS} threads")
    print("| model | variant | size | cosine to original | top-1 agreement | p50 batch 1 | note |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        size = f"{r['size_mb']:.2f} MB" if r.get("size_mb") else ""
        cos = f"{r['cosine']:.6f}" if r.get("cosine") is not None else ""
        top1 = f"{r['top1']:.4f}" if r.get("top1") is not None else ""
        p50 = f"{r['p50_ms']:.2f} ms" if r.get("p50_ms") else ""
        print(f"| {r['model']} | {r['variant']} | {size} | {cos} | {top1} | {p50} | {r.get('note', '')} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
