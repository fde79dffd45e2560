"""Quality gates: each gate that is set is checked against a measured value and reported pass/fail."""

from __future__ import annotations

from pydantic.alias_generators import to_camel

from kompress.jobs.report.model import (
    MAIN_SET,
    SET_FIGURES,
    Comparison,
    GateResult,
    GateVerdict,
    ResultBlock,
    SliceQuality,
    VariantMetrics,
)
from kompress.jobs.spec.sections import GatesSpec
from kompress.jobs.tasks.base import Task


def comparison(baseline: VariantMetrics, optimized: VariantMetrics, task: Task) -> Comparison:
    """Derived figures: speedup, size and energy reduction, and the drop of the task's quality metric
    (accuracy with labels; a classifier without labels: top-1 agreement; else cosine)."""
    metric, drop = task.quality_drop(baseline, optimized)
    b_lat, o_lat = baseline.latency_seconds, optimized.latency_seconds
    b_energy, o_energy = baseline.energy, optimized.energy
    energies = (b_energy.joules_per_inference, o_energy.joules_per_inference) if b_energy and o_energy else None
    return Comparison(
        speedup=b_lat.p50 / o_lat.p50 if b_lat and o_lat else 1.0,
        throughput_ratio=(optimized.throughput_inferences_per_second / baseline.throughput_inferences_per_second
                          if optimized.throughput_inferences_per_second and baseline.throughput_inferences_per_second
                          else None),
        size_reduction=baseline.size_bytes / optimized.size_bytes,
        accuracy_drop=drop, quality_metric=metric,
        energy_reduction=energies[0] / energies[1] if energies and energies[1] > 0 else None,
        energy_saved_ratio=1.0 - energies[1] / energies[0] if energies and energies[0] > 0 else None,
        memory_ratio=(optimized.peak_memory_bytes / baseline.peak_memory_bytes
                      if baseline.peak_memory_bytes and optimized.peak_memory_bytes else None),
        perplexity_increase=(optimized.language.perplexity / baseline.language.perplexity - 1.0
                             if optimized.language and baseline.language else None),
    )


# gate -> (field of the flat result block that it checks, higher_is_better)
GATE_FIELDS: dict[str, tuple[str, bool]] = {
    "maxAccuracyDrop": ("accuracy_drop", False),
    "minCosineSimilarity": ("cosine_similarity", True),
    "minSpeedup": ("speedup", True),
    "minSizeReduction": ("size_reduction", True),
    "maxLatencyP95Seconds": ("latency_p95_seconds", False),
    "maxEnergyPerInferenceJoules": ("energy_per_inference_joules", False),
    "maxPeakMemoryBytes": ("peak_memory_bytes", False),
    "maxPerplexityIncrease": ("perplexity_increase", False),
    "maxKLDivergence": ("kl_divergence", False),
    "minTokenAgreement": ("token_agreement", True),
    "minDecodeSpeedup": ("speedup", True),
    "maxTimeToFirstTokenSeconds": ("time_to_first_token_seconds", False),
    "minTop1Agreement": ("top1_agreement", True),
    "maxClassAccuracyDrop": ("class_accuracy_drop", False),
    "minNeighborAgreement": ("neighbor_agreement", True),
    "minRankCorrelation": ("rank_correlation", True),
}
SET_GATES = frozenset(g for g, (field, _) in GATE_FIELDS.items() if field in SET_FIGURES)
"""Quality gates: measured on every evaluation set (the main one and each slice), with intervals; gates.scope
and gates.confidence apply to them. The others (speed, size, memory, energy) are the model's, not a set's."""
MAX_NOTES = 8


def evaluate(gates: GatesSpec, result: ResultBlock, objective: str | None = None) -> GateVerdict:
    """Check every gate that is set against the flat result block; the engine (final result and each search
    trial) and the operator (re-checking after a gates edit) share this one function. `objective`: the
    search's (latency, size, energy), or None for a fixed pipeline (any of the three must improve). Quality
    gates judge the evaluation sets gates.scope names, on the point or (gates.confidence) the interval's
    bound."""
    thresholds = gates.model_dump(by_alias=True)
    results = [no_regression(result, objective)] if gates.no_regression else []
    notes: list[str] = []
    for gate, (field, higher) in GATE_FIELDS.items():
        threshold = thresholds.get(gate)
        if threshold is None:
            continue
        if gate in SET_GATES:
            results += _judge_sets(gate, field, higher, float(threshold), gates, result, notes)
            continue
        measured = getattr(result, field)
        passed = measured is not None and (measured >= threshold if higher else measured <= threshold)
        word = ">=" if higher else "<="
        message = f"{gate}: measured {_fmt(measured)} {'meets' if passed else 'misses'} {word} {_fmt(threshold)}"
        results.append(GateResult(gate=gate, threshold=float(threshold),
                                  measured=None if measured is None else float(measured), passed=passed,
                                  message=message))
    return GateVerdict(passed=all(r.passed for r in results), results=results,
                       failures=[r.message for r in results if not r.passed], notes=notes[:MAX_NOTES])


def _judge_sets(gate: str, field: str, higher: bool, threshold: float, gates: GatesSpec, result: ResultBlock,
                notes: list[str]) -> list[GateResult]:
    """One quality gate over the sets its scope names: one result per set (every-slice), or for the worst set
    (worst-slice), or for the main set (main)."""
    scope = gates.scope or ("worst-slice" if result.slices else "main")
    sets = result.evaluation_sets()[: 1 if scope == "main" else None]
    level = result.interval_level or 0.95
    judged: list[tuple[float | None, SliceQuality, list[float] | None]] = []
    for s in sets:
        point, interval = getattr(s, field), s.intervals.get(to_camel(field))
        value = point
        if gates.confidence is not None and interval is not None and point is not None:
            value = interval[0] if higher else interval[1]
        if interval is not None and point is not None and interval[0] < threshold < interval[1]:
            where = f" on slice {s.name!r}" if s.name != MAIN_SET else ""
            notes.append(f"{gate}{where}: the {level:.0%} interval [{_fmt(interval[0])}, {_fmt(interval[1])}] "
                         f"straddles {_fmt(threshold)}; more evaluation data is needed to decide"
                         + (f" ({s.samples} samples)" if s.samples else ""))
        judged.append((value, s, interval))
    if scope == "worst-slice" and len(judged) > 1:
        known = [j for j in judged if j[0] is not None]
        worst = (min if higher else max)(known, key=lambda j: j[0]) if known else judged[0]  # type: ignore[arg-type,return-value]
        judged = [worst]
    out = []
    for value, s, interval in judged:
        passed = value is not None and (value >= threshold if higher else value <= threshold)
        word = ">=" if higher else "<="
        how = ""
        if gates.confidence is not None and interval is not None:
            how = (f" ({'lower' if higher else 'upper'} bound of the {level:.0%} interval; point "
                   f"{_fmt(getattr(s, field))})")
        where = f" on slice {s.name!r}" if result.slices else ""
        message = (f"{gate}: measured {_fmt(value)}{how}{where} {'meets' if passed else 'misses'} {word} "
                   f"{_fmt(threshold)}")
        out.append(GateResult(gate=gate, threshold=threshold, measured=value, passed=passed, message=message,
                              slice=s.name if result.slices else None, interval=interval))
    return out


def _gains(result: ResultBlock) -> dict[str, tuple[float | None, float]]:
    """objective -> (measured baseline/result ratio, the noise it must beat): latency and energy are timed
    (their noise is the spread of the rounds), size is exact."""
    noise = result.speedup_spread or 0.0
    return {"latency": (result.speedup, noise), "size": (result.size_reduction, 0.0),
            "energy": (result.energy_reduction, noise)}


def no_regression(result: ResultBlock, objective: str | None) -> GateResult:
    """The result beats the original beyond noise on the objective (a fixed pipeline: on any of them)."""
    gains = _gains(result)
    names = [objective] if objective else list(gains)
    improved = [n for n in names if (gain := gains[n][0]) is not None and gain > 1.0 + gains[n][1]]
    best = max(names, key=lambda n: (gains[n][0] or 0.0) - gains[n][1])
    measured, noise = gains[best]
    shown = ", ".join(f"{n} x{_fmt(gains[n][0])}" + (f" (noise ±{gains[n][1]:.2g})" if gains[n][1] else "")
                      for n in names)
    message = (f"noRegression: {'beats' if improved else 'does not beat'} the original on "
               f"{'its objective' if objective else 'any of latency, size, energy'}: {shown}")
    return GateResult(gate="noRegression", threshold=1.0 + noise, measured=measured, passed=bool(improved),
                      message=message)


def regressions(result: ResultBlock) -> list[str]:
    """Where the result is worse than the original beyond noise: said loudly in the console, the report and
    the status even when the gates pass."""
    worse = {n: (g, noise) for n, (g, noise) in _gains(result).items() if g is not None and g < 1.0 - noise}
    what = {"latency": "slower", "size": "larger", "energy": "hungrier (more energy per inference)"}
    out = [f"{what[n]} than the original: x{g:.2f} {n}" + (f" (noise ±{noise:.2g})" if noise else "")
           for n, (g, noise) in worse.items()]
    if len(worse) == 3:
        out.insert(0, "worse than the original on every axis (latency, size, energy)")
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}"


CONVERSION_MIN_COSINE = 0.999
"""A converted graph must hold this cosine to the original framework's outputs when the spec sets no quality
gate the task measures (a converter that changes results is a bug, not a trade-off)."""


def judge_copy(gates: GatesSpec, quality: SliceQuality, floor: dict[str, float] | None = None) -> list[GateResult]:
    """Every quality gate that is set, on a copy's figures against the original (points, one evaluation set);
    `floor`: gates that hold whatever the spec sets (the spec's own threshold wins where it sets the same one)."""
    thresholds = {g: v for g, v in gates.model_dump(by_alias=True).items() if g in SET_GATES and v is not None}
    measured = {g: v for g, v in thresholds.items() if getattr(quality, GATE_FIELDS[g][0]) is not None}
    out = []
    for gate, threshold in ({**(floor or {}), **measured}).items():
        field, higher = GATE_FIELDS[gate]
        value = getattr(quality, field)
        passed = value is not None and (value >= threshold if higher else value <= threshold)
        out.append(GateResult(gate=gate, threshold=float(threshold), measured=value, passed=passed, slice=quality.name,
                              message=f"{gate}: measured {_fmt(value)} {'meets' if passed else 'misses'} "
                                      f"{'>=' if higher else '<='} {_fmt(threshold)}"))
    return out
