"""Accuracy-aware search: try candidate recipes, keep the best one that passes every gate.

- Candidates run in order of *expected* gain for the objective (most aggressive first), so a passing
  aggressive recipe is found early; with early stop the search ends once a passing trial's measured gain is
  at least the expected gain of every candidate left (none of them is expected to beat it).
- Every trial is measured like the final model, only shorter: quality on the evaluation rows, latency
  interleaved with the baseline, size, energy (and peak memory when a gate needs it); then the gates.
- Trials are recorded (with their models) in the checkpoint folder as they finish, so a search interrupted
  by a Job restart resumes from its completed trials instead of redoing them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs import evaluate, gates, onnx_utils, pipeline, report
from kompress.jobs.checkpoints import fingerprint
from kompress.jobs.energy import Meter
from kompress.jobs.errors import KompressError, RuntimeFailure
from kompress.jobs.spec import Candidate, GatesSpec, SearchSpec
from kompress.jobs.specbase import SpecModel

_BERT_LIKE = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet", "camembert"}


def _candidate(name: str, steps: list[dict[str, Any]]) -> Candidate | None:
    """A built-in candidate, or None when a technique it names is not available in this build."""
    try:
        return Candidate.model_validate({"name": name, "techniques": steps})
    except ValueError:
        return None


def default_candidates(fmt: str, metadata: dict[str, str], device: str) -> list[Candidate]:
    """Built-in recipes for the model at hand: INT8 variants for every model; for Hugging Face transformers
    also FFN pruning and layer distillation followed by fused INT8; for ONNX CNN/MLP models channel pruning
    and QAT."""
    dynamic = {"quantize": {"method": "dynamic", "perChannel": True}}
    static = {"quantize": {"method": "static", "perChannel": True}}
    transformer = metadata.get("hf.model_type", "") in _BERT_LIKE
    fuse = [{"graphOptimize": {"geluApproximation": True}}] if transformer else []
    specs: list[tuple[str, list[dict[str, Any]]]] = [
        ("int8-dynamic", [*fuse, dynamic]),
        ("int8-dynamic-per-tensor", [*fuse, {"quantize": {"method": "dynamic", "perChannel": False}}]),
        ("int8-static", [static]),
    ]
    if device == "gpu":
        specs.append(("fp16", [*fuse, {"fp16": {}}]))
    if fmt == "huggingface" and transformer:
        layers = int(metadata.get("hf.num_hidden_layers", 0) or 0)
        specs += [("ffn-pruned-25%+int8", [{"prune": {"method": "structured", "target": "ffn", "sparsity": 0.25}},
                                           *fuse, dynamic]),
                  ("ffn-pruned-50%+int8", [{"prune": {"method": "structured", "target": "ffn", "sparsity": 0.5}},
                                           *fuse, dynamic])]
        if layers >= 4:
            specs.append((f"distilled-{layers // 2}-layers+int8",
                          [{"distill": {"student": {"layers": layers // 2}}}, *fuse, dynamic]))
    elif fmt in ("onnx", "torch-export"):
        specs += [("channels-pruned-50%+int8-static",
                   [{"prune": {"method": "structured", "target": "channels", "sparsity": 0.5}}, static]),
                  ("qat-int8", [{"qat": {}}])]
    return [c for c in (_candidate(n, s) for n, s in specs) if c is not None]


# Rough prior gains per technique and objective, used only to order the trials (measurements decide).
def _step_gain(name: str, config: SpecModel, objective: str, metadata: dict[str, str], device: str) -> float:
    c = config.model_dump()
    if name == "quantize":
        if c.get("method") == "weightOnly":
            return 6.0 if objective == "size" else 1.2
        return 4.0 if objective == "size" else (2.0 if c.get("per_channel", True) else 2.1)
    if name == "qat":
        return 4.0 if objective == "size" else 2.0
    if name == "fp16":
        return 2.0 if objective == "size" or device == "gpu" else 0.8
    if name == "graphOptimize":
        return 1.0 if objective == "size" else 1.1
    if name == "prune":
        sparsity = float(c.get("sparsity", 0.0))
        if c.get("method") != "structured":
            return 1.0
        # FFN neurons/channels carry most but not all of the compute
        return 1.0 / max(0.05, 1.0 - 0.7 * sparsity)
    if name == "distill":
        layers = int(metadata.get("hf.num_hidden_layers", 0) or 0)
        kept = (c.get("student") or {}).get("layers")
        return layers / kept if layers and kept else 1.5
    return 1.0


def expected_gain(candidate: Candidate, objective: str, metadata: dict[str, str], device: str) -> float:
    return float(np.prod([_step_gain(n, c, objective, metadata, device) for n, c in candidate.steps()]))


@dataclass
class SearchOutcome:
    trials: list[dict[str, Any]]
    chosen: int | None
    """Index of the chosen trial (None: no trial produced a model)."""
    model: Path | None
    steps: list[dict[str, Any]]
    stopped: str


def _objective_gain(objective: str, cmp: dict[str, Any], base: dict[str, Any], trial: dict[str, Any]) -> float:
    if objective == "size":
        return float(cmp["sizeReduction"])
    if objective == "energy":
        e = trial["energy"]["joulesPerInference"]
        return float(base["energy"]["joulesPerInference"] / e) if e > 0 else float(cmp["speedup"])
    return float(cmp["speedup"])


def _measure(ws: pipeline.Workspace, model: Path, search: SearchSpec, gates_spec: GatesSpec,
             meter: Meter) -> dict[str, Any]:
    spec = ws.spec
    target = spec.target.model_copy(update={"iterations": search.trial_iterations,
                                            "warmup_iterations": min(spec.target.warmup_iterations, 5)})
    session = evaluate.open_session(model, spec.target)
    out = evaluate.run_all(session, ws.evaluation.inputs, spec.model.output)
    base_q, trial_q = evaluate.quality(ws.base_out, out, ws.evaluation, spec.model.task)
    speed = evaluate.measure_speed({"baseline": ws.base_session, "trial": session}, ws.evaluation, target, meter)
    base = {"sizeBytes": onnx_utils.size_bytes(ws.source.onnx_path), **speed["baseline"], "quality": base_q}
    trial = {"sizeBytes": onnx_utils.size_bytes(model), **speed["trial"], "quality": trial_q}
    if gates_spec.max_peak_memory_bytes is not None:
        trial["peakMemoryBytes"] = evaluate.peak_memory(model, ws.evaluation, spec.target)[0]
    cmp = gates.comparison(base, trial)
    block = report.status_blocks({"baseline": base, "optimized": trial, "comparison": cmp})["result"]
    verdict = gates.evaluate(gates_spec, block)
    return {"metrics": block, "gain": _objective_gain(search.objective, cmp, base, trial),
            "passed": verdict["passed"], "failures": verdict["failures"]}


def run(ws: pipeline.Workspace, search: SearchSpec, candidates: list[Candidate], gates_spec: GatesSpec,
        meter: Meter) -> SearchOutcome:
    spec = ws.spec
    meta, device = ws.source.metadata, spec.target.device
    ranked = sorted(((expected_gain(c, search.objective, meta, device), i, c) for i, c in enumerate(candidates)),
                    key=lambda t: (-t[0], t[1]))
    # What a trial computes depends on these; budgets (maxTrials, timeout, early stop) do not, so raising a
    # budget and re-running reuses the finished trials.
    store = ws.checkpoints.scope("search-" + fingerprint(ws.lineage, search.trial_iterations,
                                                         gates_spec.model_dump(mode="json"),
                                                         spec.target.model_dump(mode="json"),
                                                         [c.model_dump(mode="json") for c in candidates]))
    ws.keep_torch_source = True  # trials that train start from the same source model: load it once
    done: dict[str, dict[str, Any]] = {t["key"]: t for t in (store.read_json("trials.json") or [])}
    if done:
        ws.progress.info(f"search: resuming, {len(done)} trial(s) already completed are not run again")
    trials: list[dict[str, Any]] = []
    started = time.perf_counter() - sum(t.get("durationSeconds", 0.0) for t in done.values())
    stopped = "all candidates tried"
    for rank, (expected, _, cand) in enumerate(ranked):
        best = max((t["gain"] for t in trials if t["status"] == "passed"), default=None)
        if len(trials) >= search.max_trials:
            stopped = f"maxTrials ({search.max_trials}) reached"
            break
        if time.perf_counter() - started > search.timeout_seconds:
            stopped = f"timeoutSeconds ({search.timeout_seconds}) reached"
            break
        if search.early_stop and best is not None and best >= expected:
            stopped = (f"early stop: a passing trial measured {best:.2f}x, no candidate left is expected to "
                       f"beat it (next expected {expected:.2f}x)")
            break
        key = fingerprint(cand.model_dump(mode="json"))
        if key in done:
            trials.append(done[key])
            continue
        ws.progress.step(f"trial {len(trials) + 1}: {cand.label()} (expected {expected:.2f}x {search.objective})")
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"key": key, "index": rank, "name": cand.label(), "expectedGain": expected,
                                 "techniques": [s.model_dump(mode="json", by_alias=True, exclude_none=True,
                                                             exclude_defaults=True) for s in cand.techniques]}
        try:
            result = pipeline.apply(ws, cand.steps(), f"trial-{key}", evaluate_steps=False, step_lines=False)
            measured = _measure(ws, result.model, search, gates_spec, meter)
        except KompressError as err:
            entry |= {"status": "error", "message": str(err), "gain": None, "passed": False}
            ws.progress.info(f"trial {cand.label()}: error: {err}")
        else:
            for f in onnx_utils.files_of(result.model):
                store.put_file(f"trial-{key}/{f.name.replace(result.model.name, 'model.onnx')}", f)
            entry |= measured | {"status": "passed" if measured["passed"] else "rejected", "steps": result.steps}
            ws.progress.info(f"trial {cand.label()}: {search.objective} gain {measured['gain']:.2f}x, "
                             f"{'passes' if measured['passed'] else 'fails: ' + '; '.join(measured['failures'])}")
        entry["durationSeconds"] = round(time.perf_counter() - t0, 2)
        trials.append(entry)
        done[key] = entry
        store.write_json("trials.json", list(done.values()))
    return _choose(ws, store, trials, stopped)


def _choose(ws: pipeline.Workspace, store: Any, trials: list[dict[str, Any]], stopped: str) -> SearchOutcome:
    """The passing trial with the best measured gain; if none passes, the one closest to passing (fewest
    failed gates, then best quality), so the report shows what the best attempt missed."""
    measured = [(i, t) for i, t in enumerate(trials) if t["status"] in ("passed", "rejected")]
    if not measured:
        return SearchOutcome(trials, None, None, [], stopped)
    passing = [(i, t) for i, t in measured if t["status"] == "passed"]
    if passing:
        index, chosen = max(passing, key=lambda it: it[1]["gain"])
    else:
        index, chosen = min(measured, key=lambda it: (len(it[1]["failures"]),
                                                      -(it[1]["metrics"].get("accuracy")
                                                        or it[1]["metrics"].get("cosineSimilarity") or 0.0)))
    for t in trials:
        t["chosen"] = t is chosen
    model = ws.work / "search" / "chosen" / "model.onnx"
    if not store.get_file(f"trial-{chosen['key']}/model.onnx", model):
        raise RuntimeFailure(f"the chosen trial's model ({chosen['name']}) is missing from the checkpoints")
    store.get_file(f"trial-{chosen['key']}/model.onnx.data", model.with_name("model.onnx.data"))
    return SearchOutcome(trials, index, model, chosen.get("steps", []), stopped)


def plot(trials: list[dict[str, Any]], path: Path) -> Path | None:
    """Quality vs latency of every measured trial, the Pareto front drawn, the chosen one marked."""
    points = [t for t in trials if t.get("metrics")]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_acc = all("accuracy" in t["metrics"] for t in points)
    metric = "accuracy" if use_acc else "cosineSimilarity"
    xs = [t["metrics"]["latencyP50Seconds"] * 1e3 for t in points]
    ys = [t["metrics"][metric] for t in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t, x, y in zip(points, xs, ys, strict=True):
        color = "#2ca02c" if t["status"] == "passed" else "#d62728"
        ax.scatter([x], [y], s=120 if t.get("chosen") else 40, color=color,
                   edgecolors="black" if t.get("chosen") else "none", zorder=3)
        ax.annotate(t["name"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front, best_y = [], -np.inf
    for x, y in sorted(zip(xs, ys, strict=True)):
        if y > best_y:
            front.append((x, y))
            best_y = y
    ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="#888", zorder=1, label="Pareto front")
    ax.set_xlabel("latency p50 (ms)")
    ax.set_ylabel(metric)
    ax.set_title("search trials (green: passes the gates; large: chosen)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

