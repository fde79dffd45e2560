"""The model zoo through the engine: `kompress run` with the built-in search on third-party models (rapidocr's
PP-OCR detector, recognizer and direction classifier, and silero-vad, from PyPI wheels) and on the project's
own two (MiniLM, the digits CNN), side by side in one table.

Each model gets a spec with `search` (built-in candidates, objective latency), one quality gate
(`maxAccuracyDrop: 0.01` where the data has labels, else `minCosineSimilarity: 0.99`), `target.threads: 2` and
promotion to a temporary local registry, and runs in its own `kompress run -q` process (the same
interpreter's `python -m kompress.jobs.cli run`). The figures come from each run's report.json; a run that
exits nonzero is a row, never a crash. MiniLM and digits use the engine's examples (minilm-int8.yaml,
digits-int8.yaml) with `techniques` replaced by the search and their speed/size gates dropped, so every model
is held to the same rule: the fastest candidate within the quality budget.

The specs are built here and nowhere else: `zoo_spec(model, data, registry, tier)` with each model's `bench`
sizes for this table, or its smaller `ci` sizes for the CI tier tests/test_zoo.py (pytest -m zoo).

The zoo's data is built by scripts/make_zoo_data.py when missing, into $KOMPRESS_CACHE/zoo-data (default
~/.cache/kompress/zoo-data; wheels cached in zoo/ next to it; about half a minute once downloaded).

Run: python bench/zoo.py [--models ppocr-cls,ppocr-rec,ppocr-det,silero-vad,minilm,digits] [--data DIR]
                         [--out bench/results/zoo.json] [--timeout 3600] [--keep DIR]
                         [--runtime onnxruntime|openvino|auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "jobs" / "src" / "kompress" / "jobs" / "examples"
MAKE_DATA = ROOT / "scripts" / "make_zoo_data.py"
sys.path.insert(0, str(MAKE_DATA.parent))

from make_zoo_data import default_data  # noqa: E402  (one place says where the zoo lives)


@dataclass(frozen=True)
class Sizes:
    """How much one run measures: rows, timed iterations, trials. Part of the spec, so the report says it."""

    calibration: int
    evaluation: int
    target: dict[str, Any] = field(default_factory=dict)  # merged into spec.target
    trial_iterations: int | None = None  # search.trialIterations (engine default 30)
    max_trials: int | None = None  # search.maxTrials (engine default 8)


@dataclass(frozen=True)
class ZooModel:
    """How one zoo model is run: its data file, task, labels, and measurement sizes that fit its cost, for the
    benchmark (`bench`) and for the CI tier tests/test_zoo.py (`ci`: smaller, still a real search)."""

    name: str
    bench: Sizes
    ci: Sizes
    task: str = "generic"
    labels: bool = False
    constant_inputs: bool = False  # inputs that are not per-row (spec.data.inputs, from <name>.constants.json)


# CI: 2 cores, the whole tier in a few minutes; 60 timed iterations for the final comparison, 30 per trial
_CI_TIMING = {"warmupIterations": 5, "iterations": 60}
ZOO = {
    "ppocr-cls": ZooModel("ppocr-cls", task="classification", labels=True,
                          bench=Sizes(64, 256, {"throughputBatchSize": 32}),
                          ci=Sizes(32, 128, {"throughputBatchSize": 8, **_CI_TIMING}, 30, 4)),
    "ppocr-rec": ZooModel("ppocr-rec", bench=Sizes(64, 192, {"throughputBatchSize": 8}),
                          ci=Sizes(32, 64, {"throughputBatchSize": 4, **_CI_TIMING}, 20, 4)),
    # ~0.3 s a 736x736 page on 2 cores: fewer timed runs, small throughput batches
    "ppocr-det": ZooModel("ppocr-det",
                          bench=Sizes(16, 48, {"throughputBatchSize": 2, "warmupIterations": 3, "iterations": 20},
                                      trial_iterations=8),
                          ci=Sizes(8, 16, {"throughputBatchSize": 1, "warmupIterations": 2, "iterations": 12},
                                   6, 3)),
    "silero-vad": ZooModel("silero-vad", constant_inputs=True,
                           bench=Sizes(64, 512, {"throughputBatchSize": 32}),
                           ci=Sizes(32, 128, {"throughputBatchSize": 16, **_CI_TIMING}, 30, 4)),
}
EXAMPLE_SPECS = {"minilm": "minilm-int8.yaml", "digits": "digits-int8.yaml"}
DEFAULT_MODELS = ["ppocr-cls", "ppocr-rec", "ppocr-det", "silero-vad", "minilm", "digits"]
THREADS = 2
COSINE_GATE = {"minCosineSimilarity": 0.99}
ACCURACY_GATE = {"maxAccuracyDrop": 0.01}


def cpu_name() -> str:
    """The CPU the figures were measured on, with the flags that change which kernels are fast (latency ratios
    differ by microarchitecture: VNNI, AVX512-BF16, AMX), whatever its model name says."""
    from kompress.jobs.cpu import cpu_model, notable_flags

    flags = " ".join(notable_flags()) or "no VNNI/BF16/AMX"
    return f"{cpu_model() or platform.processor() or platform.machine()} ({flags})"


def data_files(data: Path, models: list[str]) -> list[Path]:
    """The files a run of these zoo models reads: the ONNX model, the .npz and any constants sidecar."""
    files = [p for m in models if m in ZOO for p in (data / "models" / f"{m}.onnx", data / f"{m}.npz")]
    return files + [data / f"{m}.constants.json" for m in models if m in ZOO and ZOO[m].constant_inputs]


def ensure_data(data: Path, models: list[str]) -> float:
    """Build the zoo (models + .npz) with scripts/make_zoo_data.py unless every file these models need exists;
    the seconds the build took (0 when reused). Built in a sibling folder and renamed into place, so a build
    that is killed never leaves a half-written .npz that the next run would take for a complete one."""
    if all(p.exists() for p in data_files(data, models)):
        return 0.0
    print(f"building the zoo's data in {data} (scripts/make_zoo_data.py) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    data.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{data.name}-", dir=data.parent) as tmp:
        built = Path(tmp) / "zoo-data"
        subprocess.run([sys.executable, str(MAKE_DATA), "--out", str(built)], check=True,
                       stdout=subprocess.DEVNULL)
        if data.exists():
            shutil.rmtree(data)
        built.rename(data)
    return time.perf_counter() - start


def unsupported(model: ZooModel) -> str | None:
    """Why this engine cannot run the model yet (None when it can): silero-vad's `state` and `sr` inputs are the
    same for every row, which a spec says with `data.inputs`; engines without that field cannot feed it."""
    from kompress.jobs.spec.sections import DataSpec

    if model.constant_inputs and "inputs" not in DataSpec.model_fields:
        return ("needs spec.data.inputs (constant inputs with a batch axis), which this engine's DataSpec does not "
                "have: its state input is [2, batch, 128] and sr an int64 scalar, the same for every row")
    return None


def constant_inputs(model: ZooModel, data: Path) -> dict[str, Any]:
    """`spec.data.inputs` for a model whose .npz holds only the per-row input: the inputs that are the same for
    every row, from the <name>.constants.json that scripts/make_zoo_data.py writes next to the .npz. For
    silero-vad: `{sr: {constant: {value: 16000, dtype: int64}}, state: {constant: {zeros: [2, 1, 128],
    dtype: float32}, batchAxis: 1}}` (the state is given for batch 1 and repeated along its axis 1)."""
    sidecar = json.loads((data / f"{model.name}.constants.json").read_text())
    batch_axes = sidecar.pop("batchAxis", {})
    inputs: dict[str, Any] = {}
    for name, value in sidecar.items():
        if isinstance(value, dict):
            constant = {"zeros": value["zeros"], "dtype": value.get("dtype", "float32")}
        else:
            constant = {"value": value, "dtype": "int64" if isinstance(value, int) else "float32"}
        inputs[name] = {"constant": constant, **({"batchAxis": batch_axes[name]} if name in batch_axes else {})}
    return inputs


def zoo_spec(model: ZooModel, data: Path, registry: Path, tier: str = "bench") -> dict[str, Any]:
    """A search spec for a zoo model (built-in candidates, objective latency, one quality gate, promotion to
    `registry`) at the `bench` or `ci` sizes, written out in full so the file on disk is what ran."""
    sizes: Sizes = getattr(model, tier)
    search: dict[str, Any] = {"objective": "latency"}
    if sizes.trial_iterations:
        search["trialIterations"] = sizes.trial_iterations
    if sizes.max_trials:
        search["maxTrials"] = sizes.max_trials
    data_spec: dict[str, Any] = {"uri": str(data / f"{model.name}.npz"), "calibrationSamples": sizes.calibration,
                                 "evaluationSamples": sizes.evaluation}
    if model.constant_inputs:
        data_spec["inputs"] = constant_inputs(model, data)
    return {
        "apiVersion": "kompress.dev/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": f"zoo-{model.name}"},
        "spec": {
            "model": {"uri": str(data / "models" / f"{model.name}.onnx"), "format": "onnx", "task": model.task},
            "data": data_spec,
            "search": search,
            "target": {"device": "cpu", "threads": THREADS, "batchSize": 1, **sizes.target},
            "gates": dict(ACCURACY_GATE if model.labels else COSINE_GATE),
            "promotion": {"registry": str(registry), "modelName": model.name, "policy": "auto"},
        },
    }


def example_spec(name: str, registry: Path) -> dict[str, Any]:
    """The engine's example for MiniLM or digits with the search instead of its techniques, the same quality
    gate as the zoo models, 2 threads and the temporary registry."""
    doc = yaml.safe_load((EXAMPLES / EXAMPLE_SPECS[name]).read_text())
    spec = doc["spec"]
    spec.pop("techniques", None)
    spec["search"] = {"objective": "latency"}
    spec["target"] = {**spec.get("target", {}), "threads": THREADS}
    labelled = spec.get("model", {}).get("task") == "classification"
    spec["gates"] = dict(ACCURACY_GATE if labelled else COSINE_GATE)
    spec["promotion"] = {"registry": str(registry), "modelName": name, "policy": "auto"}
    doc["metadata"] = {"name": f"zoo-{name}"}
    return doc


def run_kompress(spec_file: Path, out_dir: Path, timeout: float) -> dict[str, Any]:
    """`kompress run -q` in its own process: exit code, wall time, the report (when one was written) and the
    end of stderr (where a crash before the report leaves its traceback)."""
    cmd = [sys.executable, "-m", "kompress.jobs.cli", "run", str(spec_file), "-o", str(out_dir), "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as err:
        code, stderr = None, (err.stderr.decode() if isinstance(err.stderr, bytes) else err.stderr or "")
    wall = time.perf_counter() - start
    report_file = out_dir / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else None
    return {"exitCode": code, "wallSeconds": round(wall, 1), "report": report,
            "stderrTail": stderr[-3000:] if stderr else ""}


def dig(doc: Any, *keys: str) -> Any:
    """A nested report value, or None where any level is absent (failed runs have partial reports)."""
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def quality_cell(rep: dict[str, Any] | None) -> str:
    """Accuracy before -> after where the data has labels, else the mean cosine to the original's outputs."""
    metric = dig(rep, "comparison", "qualityMetric")
    before, after = dig(rep, "baseline", "quality", "accuracy"), dig(rep, "optimized", "quality", "accuracy")
    cosine = dig(rep, "optimized", "quality", "fidelity", "cosineSimilarityMean")
    if metric == "accuracy" and before is not None and after is not None:
        return f"acc {before:.4f}->{after:.4f}"
    return f"cos {cosine:.4f}" if cosine is not None else ""


def summarize(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """One table row from a run: what the search chose and what it bought, and how the run ended."""
    rep = result["report"]
    trials = dig(rep, "search", "trials") or []
    chosen = next((t for t in trials if t.get("chosen")), None)
    code = result["exitCode"]
    message = dig(rep, "message") or (result["stderrTail"].strip().splitlines() or ["no report.json"])[-1]
    return {
        "model": name,
        "baselineBytes": dig(rep, "baseline", "sizeBytes"),
        "baselineP50": dig(rep, "baseline", "latencySeconds", "p50"),
        "choice": chosen["name"] if chosen else None,
        "speedup": dig(rep, "comparison", "speedup"),
        "sizeRatio": dig(rep, "comparison", "sizeReduction"),
        "accuracyDrop": dig(rep, "comparison", "accuracyDrop"),
        "quality": quality_cell(rep),
        "outcome": dig(rep, "outcome") or ("timeout" if code is None else "no report"),
        "exitCode": code,
        "wallSeconds": result["wallSeconds"],
        "message": message,
        "trials": [{k: t.get(k) for k in ("name", "status", "gain", "chosen", "message")} for t in trials],
    }


def fmt(value: Any, pattern: str) -> str:
    """A table cell; '-' where the run did not get that far."""
    return "-" if value is None else pattern.format(value)


def table(rows: list[dict[str, Any]], cpu: str) -> str:
    """The side-by-side table (markdown, so it can go straight into the README)."""
    head = ["model", "size", "p50 (ms)", "search chose", "speedup", "size ratio", "quality", "outcome (exit)",
            "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        size = fmt(r.get("baselineBytes") and r["baselineBytes"] / 1e6, "{:.2f} MB")
        p50 = fmt(r.get("baselineP50") and r["baselineP50"] * 1e3, "{:.3f}")
        cells = [r["model"], size, p50, r.get("choice") or "-", fmt(r.get("speedup"), "{:.2f}x"),
                 fmt(r.get("sizeRatio"), "{:.2f}x"), r.get("quality") or "-",
                 f"{r['outcome']} ({fmt(r.get('exitCode'), '{}')})", fmt(r.get("wallSeconds"), "{:.0f}")]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['model']}: {r['message']}" for r in rows if r["outcome"] != "succeeded" and r.get("message")]
    trials = [f"- {r['model']} trials: " + "; ".join(trial_text(t) for t in r["trials"]) for r in rows
              if r.get("trials")]
    return "\n".join([*lines, "", f"CPU: {cpu}; {THREADS} threads", *trials, *notes])


def trial_text(trial: dict[str, Any]) -> str:
    """One search trial in a few words: name, status, measured gain (the trial's own short measurement)."""
    gain = "" if trial.get("gain") is None else f" {trial['gain']:.2f}x"
    return f"{trial['name']} {trial['status']}{gain}{' (chosen)' if trial.get('chosen') else ''}"


def run_model(name: str, data: Path, work: Path, registry: Path, timeout: float,
              runtime: str = "onnxruntime") -> dict[str, Any]:
    """Write the model's spec (at `runtime`: onnxruntime, openvino or auto), run it, and return its row (a
    skipped model is a row too)."""
    zoo = ZOO.get(name)
    skip = unsupported(zoo) if zoo else None
    if skip:
        print(f"{name}: skipped, {skip}", file=sys.stderr, flush=True)
        return {"model": name, "outcome": "skipped", "exitCode": None, "wallSeconds": None, "message": skip}
    doc = zoo_spec(zoo, data, registry) if zoo else example_spec(name, registry)
    if runtime == "unset":  # what a new user's `search: {}` gets: every installed runtime is searched
        doc["spec"]["target"].pop("runtime", None)
    else:
        doc["spec"]["target"]["runtime"] = runtime
    spec_file = work / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"{name}: kompress run {spec_file} ...", file=sys.stderr, flush=True)
    row = summarize(name, run_kompress(spec_file, work / name, timeout))
    row["spec"] = doc["spec"]
    print(f"{name}: {row['outcome']} (exit {row['exitCode']}) in {row['wallSeconds']} s, chose {row['choice']}",
          file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated, from {', '.join(DEFAULT_MODELS)}")
    parser.add_argument("--data", type=Path, default=default_data(),
                        help="the zoo's models and .npz (built there when missing)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "zoo.json")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per kompress run")
    parser.add_argument("--keep", type=Path, help="keep specs, run outputs and the registry here")
    parser.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "openvino", "auto", "unset"],
                        help="target.runtime of every spec (auto, or unset as a new user leaves it: the search "
                             "also tries OpenVINO's recipes)")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in DEFAULT_MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(DEFAULT_MODELS)}")
    ensure_data(args.data, [m for m in models if not (m in ZOO and unsupported(ZOO[m]))])
    with tempfile.TemporaryDirectory(prefix="kompress-zoo-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = [run_model(m, args.data, work, work / "registry", args.timeout, args.runtime) for m in models]
    cpu = cpu_name()
    print(table(rows, cpu))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu, "threads": THREADS, "platform": platform.platform(),
                                    "data": str(args.data), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
