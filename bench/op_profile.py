"""Where INT8 gains or loses time, per operator type: a zoo model's FP32 original beside the engine's own static
INT8 variants (QDQ and QOperator, per-channel weights), from ONNX Runtime's profiler, in one run.

A search that promotes nothing on a convolutional model (bench/zoo.py) says *that* INT8 was not faster; this
says *why*: each op type's mean kernel time per call in each variant, so the table shows whether the int8
convolutions themselves are slower, or the quantize/dequantize nodes and layout changes around them eat the
gain (Amdahl's share of the ops INT8 replaces bounds what it can win).

The INT8 models are made by `kompress run` with one technique (quantize, static, perChannel, format qdq or
qoperator, all quantizable op types or only Conv) on the zoo's calibration rows, as a search trial makes
them; the profile feeds the last evaluation row at batch 1 with target.threads threads.

Run: python bench/op_profile.py [--models ppocr-det,ppocr-cls] [--threads 2] [--runs 20]
                                [--out bench/results/op_profile.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import ZOO, cpu_name, ensure_data, zoo_spec

from kompress.jobs.runtimes.registry import Serving
from kompress.jobs.spec.sections import TargetSpec

# the engine's static INT8 candidates: every quantizable op (ONNX Runtime's default), or only the convolutions
VARIANTS: dict[str, dict[str, Any]] = {
    "int8-static-qdq": {"format": "qdq"},
    "int8-static-qoperator": {"format": "qoperator"},
    "int8-static-qdq-conv": {"format": "qdq", "opTypes": ["Conv"]},
    "int8-static-qoperator-conv": {"format": "qoperator", "opTypes": ["Conv"]},
}
SHOWN = 12  # op types per table (the rest are summed into "other")


def quantized(name: str, data: Path, work: Path, label: str, threads: int) -> Path:
    """The engine's static INT8 model of zoo model `name` (the saved output of a one-technique run)."""
    doc = zoo_spec(ZOO[name], data, work / "registry", "bench")
    spec = doc["spec"]
    spec.pop("search")
    spec.pop("promotion")
    spec["techniques"] = [{"quantize": {"method": "static", "perChannel": True, **VARIANTS[label]}}]
    spec["gates"] = {"noRegression": False}
    spec["target"] = {**spec["target"], "threads": threads, "iterations": 5, "warmupIterations": 1}
    spec["data"]["evaluationSamples"] = min(spec["data"]["evaluationSamples"], 8)
    spec_file = work / f"{name}-{label}.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    out = work / f"{name}-{label}"
    proc = subprocess.run([sys.executable, "-m", "kompress.jobs.cli", "run", str(spec_file), "-o", str(out), "-q"],
                          capture_output=True, text=True, check=False)
    models = sorted(out.rglob("*.onnx"), key=lambda p: p.stat().st_mtime)
    if proc.returncode != 0 or not models:
        raise SystemExit(f"{name} {label}: kompress run exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return models[-1]


def feeds_for(name: str, data: Path) -> dict[str, np.ndarray]:
    rows = np.load(data / f"{name}.npz")
    return {k: v[-1:] for k, v in rows.items() if k != "labels"}  # the last row: an evaluation row


def table(name: str, times: dict[str, dict[str, float]]) -> str:
    variants = list(times)
    ops = sorted({op for t in times.values() for op in t}, key=lambda op: -max(t.get(op, 0.0) for t in times.values()))
    shown, rest = ops[:SHOWN], ops[SHOWN:]
    lines = [f"### {name} (mean kernel time per call, ms; share of the variant's total)",
             "| op type | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]

    def cell(variant: str, value: float) -> str:
        whole = sum(times[variant].values()) or 1.0
        return f"{value / 1000:.2f} ({100 * value / whole:.0f}%)" if value else "-"

    for op in shown:
        lines.append(f"| {op} | " + " | ".join(cell(v, times[v].get(op, 0.0)) for v in variants) + " |")
    if rest:
        lines.append("| other | " + " | ".join(cell(v, sum(times[v].get(op, 0.0) for op in rest))
                                               for v in variants) + " |")
    lines.append("| **total** | " + " | ".join(f"{sum(times[v].values()) / 1000:.2f}" for v in variants) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ppocr-det,ppocr-cls")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "op_profile.json")
    args = parser.parse_args()
    from make_zoo_data import default_data

    data = args.data or default_data()
    models = args.models.split(",")
    ensure_data(data, models)
    target = TargetSpec(threads=args.threads)
    results: dict[str, Any] = {"cpu": cpu_name(), "threads": args.threads, "runs": args.runs, "models": {}}
    print(f"CPU: {results['cpu']}, {args.threads} threads, batch 1, {args.runs} profiled calls per variant\n")
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            variants = {"fp32": data / "models" / f"{name}.onnx"}
            for label in VARIANTS:
                variants[label] = quantized(name, data, Path(tmp), label, args.threads)
            feeds = feeds_for(name, data)
            ort = Serving.reference()
            times = {label: ort.engine.profile_ops(path, feeds, target.session(ort), args.runs)
                     for label, path in variants.items()}
            results["models"][name] = times
            print(table(name, times) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
