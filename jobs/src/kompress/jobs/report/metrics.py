"""Prometheus series of one optimization's results, shared by the operator's /metrics mirror and the Job's
Pushgateway push, so both paths expose the same names and labels.

Naming follows Prometheus conventions (base units, _ratio, _seconds, _bytes, _joules); labels are only
namespace, optimization, variant and small enums — no URIs, pods or uids."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic.alias_generators import to_camel

from kompress.jobs.report.model import SET_FIGURES, MetricsBlock, OptimizationReport, ResultBlock

VARIANTS = ("baseline", "optimized")
QUANTILES = {"0.5": "latencyP50Seconds", "0.95": "latencyP95Seconds", "0.99": "latencyP99Seconds"}


@dataclass(frozen=True)
class Series:
    name: str
    help: str
    labels: dict[str, str]
    value: float


FAMILIES = {
    "kompress_model_latency_seconds": "Inference latency quantiles of the model variant at the target batch size.",
    "kompress_model_size_bytes": "Model file size.",
    "kompress_model_peak_memory_bytes": "Peak resident memory to load and run the model.",
    "kompress_model_throughput_inferences_per_second": "Inferences per second at the throughput batch size.",
    "kompress_model_inference_energy_joules": "Energy per inference (method label: rapl, nvml, estimate-cpu-time).",
    "kompress_model_accuracy_ratio": "Quality of the variant: accuracy (labels) or cosine similarity to baseline.",
    "kompress_optimization_speedup_ratio": "Baseline/optimized ratio of median latency.",
    "kompress_optimization_size_reduction_ratio": "Baseline/optimized ratio of model size.",
    "kompress_optimization_accuracy_drop_ratio": "Drop of the quality metric from baseline to optimized.",
    "kompress_optimization_energy_joules": "Energy of the whole optimization run.",
    "kompress_optimization_run_duration_seconds": "Wall time of the whole optimization run.",
    "kompress_optimization_gates_passed": "1 when every quality gate passed, else 0.",
    # text-generation
    "kompress_model_perplexity": "Perplexity of a language model on the evaluation text.",
    "kompress_model_kl_divergence": "Mean KL divergence of the next-token distributions from the float model's.",
    "kompress_model_token_agreement_ratio": "Share of positions whose top-1 next token is the float model's.",
    "kompress_model_time_to_first_token_seconds": "Median time to the first token at the stated prompt length.",
    "kompress_model_decode_tokens_per_second": "Median decode speed at batch 1.",
    "kompress_model_token_energy_joules": "Energy per generated token (method label).",
    "kompress_optimization_perplexity_increase_ratio": "Relative perplexity increase over the float model.",
    # evaluation slices
    "kompress_slice_quality_ratio": ("Quality figure of the optimized model on one evaluation set (slice label: main "
                                     "or a data.slices name), with its bootstrap interval (estimate: point, low, "
                                     "high)."),
}


def series(namespace: str, optimization: str, baseline: MetricsBlock | None, optimized: ResultBlock | None,
           gates_passed: bool | None) -> Iterator[Series]:
    """Series for the flat baseline/result blocks (what the resource's status carries too)."""
    base = {"namespace": namespace, "optimization": optimization}
    blocks = {"baseline": baseline.to_json() if baseline else {}, "result": optimized.to_json() if optimized else {}}
    result = blocks["result"]
    method = str(result.get("energyMethod", "unknown"))
    for variant in VARIANTS:
        block = blocks.get("baseline" if variant == "baseline" else "result") or {}
        labels = base | {"variant": variant}

        def one(name: str, key: str, extra: dict[str, str] | None = None,
                block: dict[str, Any] = block, labels: dict[str, str] = labels) -> Iterator[Series]:
            if block.get(key) is not None:
                yield Series(name, FAMILIES[name], labels | (extra or {}), float(block[key]))

        for quantile, key in QUANTILES.items():
            yield from one("kompress_model_latency_seconds", key, {"quantile": quantile})
        yield from one("kompress_model_size_bytes", "sizeBytes")
        yield from one("kompress_model_peak_memory_bytes", "peakMemoryBytes")
        yield from one("kompress_model_throughput_inferences_per_second", "throughputPerSecond")
        yield from one("kompress_model_inference_energy_joules", "energyPerInferenceJoules", {"method": method})
        yield from one("kompress_model_accuracy_ratio", "accuracy", {"metric": "accuracy"})
        yield from one("kompress_model_accuracy_ratio", "cosineSimilarity", {"metric": "cosine_similarity"})
        yield from one("kompress_model_perplexity", "perplexity")
        yield from one("kompress_model_kl_divergence", "klDivergence")
        yield from one("kompress_model_token_agreement_ratio", "tokenAgreement")
        yield from one("kompress_model_time_to_first_token_seconds", "timeToFirstTokenSeconds")
        yield from one("kompress_model_decode_tokens_per_second", "decodeTokensPerSecond")
        yield from one("kompress_model_token_energy_joules", "energyPerTokenJoules", {"method": method})
    for name, key in (("kompress_optimization_speedup_ratio", "speedup"),
                      ("kompress_optimization_size_reduction_ratio", "sizeReduction"),
                      ("kompress_optimization_accuracy_drop_ratio", "accuracyDrop"),
                      ("kompress_optimization_perplexity_increase_ratio", "perplexityIncrease"),
                      ("kompress_optimization_run_duration_seconds", "durationSeconds")):
        if result.get(key) is not None:
            yield Series(name, FAMILIES[name], dict(base), float(result[key]))
    yield from _slice_series(base, optimized)
    if result.get("runEnergyJoules") is not None:
        yield Series("kompress_optimization_energy_joules", FAMILIES["kompress_optimization_energy_joules"],
                     base | {"method": method}, float(result["runEnergyJoules"]))
    if gates_passed is not None:
        yield Series("kompress_optimization_gates_passed", FAMILIES["kompress_optimization_gates_passed"],
                     dict(base), 1.0 if gates_passed else 0.0)


def _slice_series(base: dict[str, str], optimized: ResultBlock | None) -> Iterator[Series]:
    """Each evaluation set's quality figures (point and interval bounds), when the run had slices (the main set
    alone is already in kompress_model_accuracy_ratio and kompress_optimization_accuracy_drop_ratio)."""
    if optimized is None or not optimized.slices:
        return
    name = "kompress_slice_quality_ratio"
    for s in optimized.evaluation_sets():
        for field in SET_FIGURES:
            value = getattr(s, field)
            if value is None:
                continue
            labels = base | {"slice": s.name, "metric": field}
            yield Series(name, FAMILIES[name], labels | {"estimate": "point"}, float(value))
            if to_camel(field) in s.intervals:
                low, high = s.intervals[to_camel(field)]
                yield Series(name, FAMILIES[name], labels | {"estimate": "low"}, float(low))
                yield Series(name, FAMILIES[name], labels | {"estimate": "high"}, float(high))


def to_families(items: list[Series]) -> list[Any]:
    """prometheus_client metric families (gauges) for a list of series."""
    from prometheus_client.core import GaugeMetricFamily

    families: dict[tuple[str, tuple[str, ...]], Any] = {}
    for s in items:
        keys = tuple(s.labels)
        fam = families.get((s.name, keys))
        if fam is None:
            fam = families[(s.name, keys)] = GaugeMetricFamily(s.name, s.help, labels=list(keys))
        fam.add_metric([s.labels[k] for k in keys], s.value)
    return list(families.values())


def push(gateway: str, namespace: str, optimization: str, report: OptimizationReport) -> None:
    """Replace this optimization's group on a Pushgateway (PUT), so a re-run leaves no stale series.

    The grouping key has no instance label: one group per namespace/optimization."""
    from prometheus_client import CollectorRegistry, push_to_gateway

    registry = CollectorRegistry()
    baseline, result = report.blocks() or (None, None)
    items = list(series(namespace, optimization, baseline, result, report.gates.passed if report.gates else None))

    class _Collector:
        def collect(self) -> list[Any]:
            return to_families(items)

    registry.register(_Collector())  # type: ignore[arg-type]
    push_to_gateway(gateway, job="kompress", registry=registry,
                    grouping_key={"namespace": namespace, "optimization": optimization}, timeout=10)
