"""Quality gates: each gate that is set is checked against a measured value and reported pass/fail."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kompress.jobs.spec import GatesSpec


@dataclass(frozen=True)
class GateResult:
    gate: str
    threshold: float
    measured: float | None
    passed: bool
    message: str


def comparison(baseline: dict[str, Any], optimized: dict[str, Any]) -> dict[str, Any]:
    """Derived figures: speedup, size reduction, accuracy drop (the quality metric's), energy saved."""
    quality_metric = "accuracy" if "accuracy" in optimized["quality"] else "cosineSimilarityMean"
    if quality_metric == "accuracy":
        drop = baseline["quality"]["accuracy"] - optimized["quality"]["accuracy"]
    else:
        drop = 1.0 - optimized["quality"]["fidelity"]["cosineSimilarityMean"]
    e_base = baseline["energy"]["joulesPerInference"]
    e_opt = optimized["energy"]["joulesPerInference"]
    return {
        "speedup": baseline["latencySeconds"]["p50"] / optimized["latencySeconds"]["p50"],
        "throughputRatio": optimized["throughputInferencesPerSecond"] / baseline["throughputInferencesPerSecond"],
        "sizeReduction": baseline["sizeBytes"] / optimized["sizeBytes"],
        "accuracyDrop": drop,
        "qualityMetric": quality_metric,
        "energySavedRatio": (1.0 - e_opt / e_base) if e_base > 0 else None,
        "memoryRatio": (optimized["peakMemoryBytes"] / baseline["peakMemoryBytes"]
                        if baseline.get("peakMemoryBytes") else None),
    }


# gate -> (field of the flat result block that it checks, higher_is_better)
GATE_FIELDS: dict[str, tuple[str, bool]] = {
    "maxAccuracyDrop": ("accuracyDrop", False),
    "minCosineSimilarity": ("cosineSimilarity", True),
    "minSpeedup": ("speedup", True),
    "minSizeReduction": ("sizeReduction", True),
    "maxLatencyP95Seconds": ("latencyP95Seconds", False),
    "maxEnergyPerInferenceJoules": ("energyPerInferenceJoules", False),
    "maxPeakMemoryBytes": ("peakMemoryBytes", False),
}


def evaluate(gates: GatesSpec, result: dict[str, Any]) -> dict[str, Any]:
    """Check every gate that is set against the flat result block (see report.status_blocks); the engine
    and the operator (re-checking after a gates edit) share this one function."""
    thresholds = gates.model_dump(by_alias=True)
    results = []
    for gate, (field, higher) in GATE_FIELDS.items():
        threshold = thresholds.get(gate)
        if threshold is None:
            continue
        measured = result.get(field)
        passed = measured is not None and (measured >= threshold if higher else measured <= threshold)
        word = ">=" if higher else "<="
        message = f"{gate}: measured {_fmt(measured)} {'meets' if passed else 'misses'} {word} {_fmt(threshold)}"
        results.append(GateResult(gate, float(threshold), measured, passed, message))
    failures = [r.message for r in results if not r.passed]
    return {"passed": not failures, "results": [asdict(r) for r in results], "failures": failures}


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}"
