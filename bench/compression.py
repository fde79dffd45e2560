"""Compression recipes side by side in one run: FP32 (ONNX Runtime), INT8 only, structured pruning + INT8,
distilled student + INT8 (and, for the digits CNN, QAT). Ratios are against ONNX Runtime FP32.

Each recipe is an example spec from jobs/examples, built through the engine (`runner.open_workspace` +
`pipeline.apply`, the same code `kompress run` uses, training included), so the figures are what a user gets
from that spec. Timing: calls alternate between the variants round-robin (machine noise lands on all of
them alike), at batch 1 and at batch 32; medians are reported.

Run: python bench/compression.py [--model minilm|digits] [--rounds 60] [--out bench/results/compression-<model>.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from minilm_cpu import time_round_robin  # noqa: E402  (shared timing loop)

EXAMPLES = ROOT / "jobs" / "src" / "kompress" / "jobs" / "examples"
RECIPES = {
    "minilm": [("int8", "minilm-int8.yaml"), ("ffn-pruned+int8", "minilm-prune-int8.yaml"),
               ("distilled-3-layers+int8", "minilm-distill.yaml")],
    "digits": [("int8-static", "digits-int8.yaml"), ("channels-pruned+int8", "digits-prune.yaml"),
               ("qat-int8", "digits-qat.yaml")],
}


def build(spec_file: Path, work: Path) -> tuple[Any, Path]:
    """The example's workspace (source model, evaluation rows) and the ONNX model its techniques produce."""
    from kompress.jobs import runner
    from kompress.jobs.io.checkpoints import Checkpoints
    from kompress.jobs.progress import Progress
    from kompress.jobs.spec.document import load_spec_file
    from kompress.jobs.techniques import pipeline

    loaded = load_spec_file(spec_file)
    progress = Progress(20)
    ws = runner.open_workspace(loaded, work, Checkpoints(None), progress).ws
    result = pipeline.apply(ws, loaded.spec.steps(), spec_file.stem, evaluate_steps=False, step_lines=False)
    return ws, result.model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(RECIPES), default="minilm")
    parser.add_argument("--rounds", type=int, default=60, help="timed calls per variant at batch 1")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out_path = args.out or ROOT / "bench" / "results" / f"compression-{args.model}.json"

    import onnxruntime as ort

    from kompress.jobs.io import model_files, onnx_utils
    from kompress.jobs.measure import evaluate
    from kompress.jobs.runtimes import onnxruntime as ort_sessions
    from kompress.jobs.tasks import registry as tasks

    options = ort_sessions.session_options(args.threads)  # the evaluation's own timing setup
    with tempfile.TemporaryDirectory() as tmp:
        models: dict[str, Path] = {}
        ws = None
        for label, example in RECIPES[args.model]:
            print(f"building {label} from {example} ...", file=sys.stderr, flush=True)
            ws, models[label] = build(EXAMPLES / example, Path(tmp) / label)
            models.setdefault("fp32", ws.source.onnx_path)
        assert ws is not None
        order = ["fp32"] + [label for label, _ in RECIPES[args.model]]
        sessions = {k: ort.InferenceSession(str(models[k]), options, providers=["CPUExecutionProvider"])
                    for k in order}
        data = ws.evaluation
        quality = {}
        for name in order:
            out = evaluate.run_all(sessions[name], data.inputs, None)
            _, q = tasks.get(ws.spec.model.task).quality(ws.baseline.outputs, out, data)
            quality[name] = {"cosine": q.fidelity.cosine_similarity_mean if q.fidelity else 1.0,
                             "accuracy": q.accuracy}
        sizes = {k: model_files.size_bytes(models[k]) for k in order}
        params = {k: onnx_utils.parameter_count(models[k]) for k in order}
        runners = {k: (lambda s: (lambda feeds: s.run(None, feeds)[0]))(sessions[k]) for k in order}
        results: dict[str, Any] = {}
        for batch, rounds in ((1, args.rounds), (32, max(5, args.rounds // 6))):
            print(f"timing batch {batch}, {rounds} round-robin rounds ...", file=sys.stderr, flush=True)
            feeds = {k: v[:batch] for k, v in data.inputs.items()}
            times = time_round_robin(runners, feeds, rounds)
            medians = {k: float(np.median(v)) for k, v in times.items()}
            results[f"batch{batch}"] = {"rounds": rounds, "medianSeconds": medians,
                                        "speedupVsOrtFp32": {k: medians["fp32"] / m for k, m in medians.items()}}
    report = {"model": args.model, "machine": {"platform": platform.platform(), "threads": args.threads},
              "sizesBytes": sizes, "parameters": params, "quality": quality, "results": results}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    print(f"\n{args.model}: ONNX Runtime CPU, {args.threads} threads (medians; ratios vs FP32 in the same run)")
    header = f"{'variant':26s} {'size MB':>8s} {'params':>10s} {'cosine':>7s} {'accuracy':>8s}"
    for b in results:
        header += f" {b + ' ms':>12s} {'vs fp32':>8s}"
    print(header)
    for name in order:
        acc = quality[name]["accuracy"]
        line = (f"{name:26s} {sizes[name] / 1e6:8.2f} {params[name]:10d} {quality[name]['cosine']:7.4f} "
                f"{'' if acc is None else format(acc, '.4f'):>8s}")
        for r in results.values():
            line += f" {r['medianSeconds'][name] * 1e3:12.3f} {r['speedupVsOrtFp32'][name]:7.2f}x"
        print(line)
    print(f"\nwritten to {out_path}")


if __name__ == "__main__":
    main()
