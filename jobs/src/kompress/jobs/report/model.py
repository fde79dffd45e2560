"""The run report as typed models: the contract between the engine (which writes report.json and the Job's
termination summary) and everything that reads them (gates, registry, metrics, the operator).

Light on purpose (pydantic only): the operator parses the Job's summary through `RunSummary`, so a drift
between what the engine writes and what the operator reads fails validation instead of silently reading
None. `SCHEMA_VERSION` changes whenever a field changes meaning or goes away; report.json carries it, and
the published JSON schema (`kompress schema report`) is generated from these classes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

SCHEMA_VERSION: Literal[1] = 1
Interval = Annotated[list[float], Field(description="A confidence interval: [low, high].")]
Outcome = Literal["succeeded", "rejected", "failed"]


class ReportPart(BaseModel):
    """camelCase in JSON, snake_case in Python; unknown fields are an error (the contract is checked)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              validate_assignment=True, use_attribute_docstrings=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ------------------------------------------------------------------------------------------- one variant


class Latency(ReportPart):
    p50: float
    p95: float
    p99: float
    mean: float
    samples: int
    """Timed calls behind the percentiles."""
    batch_size: int
    method: str | None = None
    """How the calls were timed (blocks of consecutive calls, rounds, alternation)."""


class Energy(ReportPart):
    joules_per_inference: float
    method: str
    """rapl, nvml or estimate-cpu-time."""
    inferences: int
    measured_over: str
    """How the counter was read (around single calls, or blocks of calls)."""


class Fidelity(ReportPart):
    """Outputs of a variant compared with the baseline's on the evaluation rows."""

    cosine_similarity_mean: float
    cosine_similarity_min: float
    max_abs_error: float
    top1_agreement: float | None = None
    """Share of rows whose arg-max output is the baseline's (classifiers, or whenever labels exist)."""
    neighbor_agreement: float | None = None
    """embedding: share of samples whose nearest other sample (cosine) is the baseline's (retrieval)."""
    rank_correlation: float | None = None
    """embedding: mean Spearman correlation of each sample's similarities to the others with the baseline's."""
    class_accuracy_drop: float | None = None
    """classification: the largest drop within one class (accuracy with labels, else 1 - top-1 agreement
    within the baseline's predicted class), over classes with enough samples."""
    worst_class: str | None = None
    """The class with that drop."""


class SliceQuality(ReportPart):
    """A variant's quality on one evaluation set (the main set or a data.slices entry), against the baseline on
    the same samples, with paired bootstrap intervals: what the slice-aware gates judge."""

    name: str
    """The slice's name (`main`: data.uri's evaluation rows)."""
    samples: int
    """Evaluation samples the figures are measured on."""
    quality_metric: str | None = None
    """What accuracyDrop is the drop of on this set (the task's metric)."""
    accuracy_drop: float | None = None
    """Drop of the quality metric on this set."""
    accuracy: float | None = None
    """Accuracy of the optimized model (labelled sets)."""
    baseline_accuracy: float | None = None
    """Accuracy of the baseline on the same samples (labelled sets)."""
    cosine_similarity: float | None = None
    """Mean cosine similarity of the outputs to the baseline's."""
    top1_agreement: float | None = None
    """Share of samples whose top-1 output is the baseline's."""
    neighbor_agreement: float | None = None
    """embedding: share of samples whose nearest neighbour is the baseline's."""
    rank_correlation: float | None = None
    """embedding: mean Spearman correlation of the similarity rankings with the baseline's."""
    class_accuracy_drop: float | None = None
    """classification: the largest drop within one class."""
    worst_class: str | None = None
    """The class with that drop."""
    perplexity_increase: float | None = None
    """text-generation: relative perplexity increase over the float model."""
    kl_divergence: float | None = None
    """text-generation: mean KL divergence from the float model's next-token distributions."""
    token_agreement: float | None = None
    """text-generation: share of positions whose top-1 next token is the float model's."""
    intervals: dict[str, Interval] = {}
    """Paired bootstrap interval [low, high] of each figure, by its field name (camelCase)."""


class SetFigure(NamedTuple):
    """A quality figure measured on every evaluation set: how reports name it, which way is better, and the
    gate that judges it."""

    label: str
    higher: bool
    gate: str | None


SET_FIGURES: dict[str, SetFigure] = {
    "accuracy_drop": SetFigure("quality drop", False, "maxAccuracyDrop"),
    "cosine_similarity": SetFigure("cosine similarity", True, "minCosineSimilarity"),
    "top1_agreement": SetFigure("top-1 agreement", True, "minTop1Agreement"),
    "neighbor_agreement": SetFigure("nearest-neighbour agreement", True, "minNeighborAgreement"),
    "rank_correlation": SetFigure("similarity rank correlation", True, "minRankCorrelation"),
    "class_accuracy_drop": SetFigure("worst class drop", False, "maxClassAccuracyDrop"),
    "accuracy": SetFigure("accuracy", True, None),
    "perplexity_increase": SetFigure("perplexity increase", False, "maxPerplexityIncrease"),
    "kl_divergence": SetFigure("KL divergence", False, "maxKLDivergence"),
    "token_agreement": SetFigure("token agreement", True, "minTokenAgreement"),
}
"""The figures measured per evaluation set (SliceQuality's fields), in the order reports show them."""


class WorstCase(ReportPart):
    """One of the samples whose output changed most: what a person reads to see what broke."""

    slice: str
    row: int
    """The sample's row in its set's file (data.uri, or the slice's uri)."""
    change: float
    """1 - cosine similarity of the sample's outputs (+1 when its top-1 answer changed)."""
    baseline: str
    """The baseline's answer or figure for the sample."""
    optimized: str
    text: str | None = None
    """The sample's text (the data's `texts` array, or its input_ids decoded by the model's tokenizer)."""


class Quality(ReportPart):
    accuracy: float | None = None
    """Accuracy on the labelled evaluation rows (when the data has labels)."""
    fidelity: Fidelity | None = None
    """Agreement with the baseline (absent for the baseline itself)."""
    intervals: dict[str, Interval] = {}
    """The main set's paired bootstrap intervals [low, high], by flat field name (camelCase)."""
    interval_level: float | None = None
    """Their confidence level (gates.confidence, default 0.95)."""
    slices: list[SliceQuality] = []
    """Quality on each of data.slices (the optimized variant)."""
    worst_cases: list[WorstCase] = []
    """The samples whose outputs changed most, over every set."""


class LanguageQuality(ReportPart):
    """A causal language model's quality on the evaluation text: its own perplexity, and for a variant its
    agreement with the float model on the same token ids."""

    perplexity: float
    """exp(mean negative log-likelihood of each next token) over non-overlapping evaluation windows."""
    evaluation_tokens: int
    """Tokens predicted (windows x (data.text.sequenceLength - 1))."""
    kl_divergence_mean: float | None = None
    """Mean KL divergence of the next-token distribution from the float model's (nats)."""
    kl_divergence_p99: float | None = None
    """99th percentile of the per-token KL divergence."""
    token_agreement: float | None = None
    """Share of positions whose top-1 next token is the float model's."""
    continuation_agreement: float | None = None
    """Greedy continuations of the timing prompts: mean share of new tokens generated before the first one
    that differs from the float model's."""


class GenerationSpeed(ReportPart):
    """Greedy generation at batch 1, as served (median over rounds, interleaved with the baseline)."""

    time_to_first_token_seconds: float
    """From handing over the prompt to the first new token."""
    decode_tokens_per_second: float
    """New tokens after the first, per second."""
    prompt_tokens: int
    new_tokens: int
    rounds: int
    energy_per_token_joules: float | None = None
    """Energy per generated token while decoding."""


class Placement(ReportPart):
    nodes_by_provider: dict[str, int]
    cpu_ops: dict[str, int]
    """Op types placed on the CPU provider, with their node counts."""


class VariantMetrics(ReportPart):
    """What was measured of one model (the baseline, a pipeline step, a search trial or the result)."""

    size_bytes: int
    sha256: str | None = None
    parameters: int | None = None
    quality: Quality = Quality()
    latency_seconds: Latency | None = None
    throughput_inferences_per_second: float | None = None
    throughput_batch_size: int | None = None
    energy: Energy | None = None
    peak_memory_bytes: int | None = None
    peak_memory_of: Literal["host", "gpu"] | None = None
    placement: Placement | None = None
    runtime: str | None = None
    """The runtime that ran it (a registered runtime's name)."""
    precision: str | None = None
    """The inference precision the runtime actually compiled it with (f32, bf16, f16), for runtimes that take
    one."""
    language: LanguageQuality | None = None
    """text-generation: perplexity and agreement with the float model."""
    generation: GenerationSpeed | None = None
    """text-generation: time to first token and decode speed (latencySeconds holds the per-token decode
    times)."""


class Comparison(ReportPart):
    """The result relative to the baseline, measured side by side in one run."""

    speedup: float
    """Baseline/result ratio of median latency."""
    size_reduction: float
    accuracy_drop: float
    """Drop of `quality_metric`: accuracy with labels; for a classifier without labels 1 - top-1 agreement;
    else 1 - mean cosine similarity."""
    quality_metric: str
    """The metric the drop is measured on (the task's: accuracy, top1Agreement, cosineSimilarityMean, ...)."""
    speedup_spread: float | None = None
    """The measurement's own noise on `speedup`: half the interquartile range of the per-round
    baseline/result latency ratios (a result must beat the baseline by more than this)."""
    energy_reduction: float | None = None
    """Baseline/result ratio of energy per inference."""
    throughput_ratio: float | None = None
    energy_saved_ratio: float | None = None
    memory_ratio: float | None = None
    perplexity_increase: float | None = None
    """text-generation: relative perplexity increase over the float model (0.05 = 5%)."""


# ------------------------------------------------------------------------------------------------- gates


class GateResult(ReportPart):
    gate: str
    threshold: float
    measured: float | None
    """The figure judged: the point estimate, or its interval's bound under gates.confidence."""
    passed: bool
    message: str
    slice: str | None = None
    """The evaluation set the figure is from (main, or a slice's name) for quality gates."""
    interval: list[float] | None = None
    """The figure's confidence interval [low, high], where one was measured."""


class GateVerdict(ReportPart):
    passed: bool
    results: list[GateResult] = []
    failures: list[str] = []
    notes: list[str] = []
    """Gates whose decision the evaluation data cannot carry: the figure's interval straddles the threshold
    (more evaluation samples are needed to know which side it is on)."""


# ----------------------------------------------------------------------------- flat blocks (status, gates)


class MetricsBlock(ReportPart):
    """One variant in the flat form the resource's status, the gates and Prometheus read."""

    latency_p50_seconds: float | None = None
    """Median latency at target.batchSize."""
    latency_p95_seconds: float | None = None
    """95th-percentile latency."""
    latency_p99_seconds: float | None = None
    """99th-percentile latency."""
    throughput_per_second: float | None = None
    """Inferences per second at target.throughputBatchSize."""
    size_bytes: int | None = None
    """Size of the model file(s)."""
    peak_memory_bytes: int | None = None
    """Peak memory to load and run the model."""
    energy_per_inference_joules: float | None = None
    """Energy per inference (see result.energyMethod)."""
    accuracy: float | None = None
    """Accuracy on the labelled evaluation set."""
    cosine_similarity: float | None = None
    """Mean cosine similarity of the outputs to the baseline's (1 for the baseline itself)."""
    top1_agreement: float | None = None
    """Share of samples whose top-1 output is the baseline's."""
    neighbor_agreement: float | None = None
    """embedding: share of samples whose nearest neighbour is the baseline's."""
    rank_correlation: float | None = None
    """embedding: mean Spearman correlation of the similarity rankings with the baseline's."""
    class_accuracy_drop: float | None = None
    """classification: the largest drop within one class."""
    runtime: str | None = None
    """The runtime that ran it (and, for the result, serves it)."""
    precision: str | None = None
    """The runtime's inference precision, for runtimes that take one."""
    perplexity: float | None = None
    """text-generation: perplexity on the evaluation text."""
    kl_divergence: float | None = None
    """text-generation: mean KL divergence of the next-token distributions from the float model's."""
    token_agreement: float | None = None
    """text-generation: share of positions whose top-1 next token is the float model's."""
    decode_tokens_per_second: float | None = None
    """text-generation: median decode speed at batch 1."""
    time_to_first_token_seconds: float | None = None
    """text-generation: median time to the first token at target.generation.promptTokens."""
    energy_per_token_joules: float | None = None
    """text-generation: energy per generated token."""


class ResultBlock(MetricsBlock):
    """The optimized variant's block plus the comparison and the run's own cost."""

    speedup: float | None = None
    """Baseline/optimized ratio of median latency."""
    speedup_spread: float | None = None
    """The measurement's noise on speedup: half the interquartile range of the per-round latency ratios."""
    size_reduction: float | None = None
    """Baseline/optimized ratio of model file size."""
    energy_reduction: float | None = None
    """Baseline/optimized ratio of energy per inference."""
    accuracy_drop: float | None = None
    """Drop of the quality metric (see qualityMetric)."""
    perplexity_increase: float | None = None
    """text-generation: relative perplexity increase over the float model."""
    quality_metric: str | None = None
    """What accuracyDrop is the drop of, the task's metric: accuracy (labels), top1Agreement (a classifier
    without labels), cosineSimilarityMean, ..."""
    intervals: dict[str, Interval] = {}
    """Paired bootstrap intervals [low, high] of the main set's quality figures, by field name."""
    interval_level: float | None = None
    """Confidence level of every interval."""
    slices: list[SliceQuality] = []
    """Quality on each of data.slices, with intervals (the slice-aware gates judge these and the main set)."""
    worst_slice: str | None = None
    """The set (main or a slice) where the quality metric is worst."""
    energy_method: str | None = None
    """How energy was measured: rapl, nvml or estimate."""
    run_energy_joules: float | None = None
    """Energy of the whole optimization run (same method)."""
    duration_seconds: float | None = None
    """Wall time of the whole optimization run."""

    def evaluation_sets(self) -> list[SliceQuality]:
        """The main evaluation set (from this block's own fields) and every slice, in one shape."""
        fields = {k: getattr(self, k) for k in SliceQuality.model_fields if k in ResultBlock.model_fields}
        return [SliceQuality(**{**fields, "name": MAIN_SET, "samples": 0, "intervals": self.intervals}), *self.slices]


def metrics_block(m: VariantMetrics) -> dict[str, Any]:
    """The flat fields of one variant (as a dict of python names, for MetricsBlock/ResultBlock)."""
    fidelity = m.quality.fidelity
    return {
        "latency_p50_seconds": m.latency_seconds.p50 if m.latency_seconds else None,
        "latency_p95_seconds": m.latency_seconds.p95 if m.latency_seconds else None,
        "latency_p99_seconds": m.latency_seconds.p99 if m.latency_seconds else None,
        "throughput_per_second": m.throughput_inferences_per_second, "size_bytes": m.size_bytes,
        "peak_memory_bytes": m.peak_memory_bytes,
        "energy_per_inference_joules": m.energy.joules_per_inference if m.energy else None,
        "accuracy": m.quality.accuracy,
        "cosine_similarity": fidelity.cosine_similarity_mean if fidelity else 1.0,
        "top1_agreement": fidelity.top1_agreement if fidelity else None,
        "neighbor_agreement": fidelity.neighbor_agreement if fidelity else None,
        "rank_correlation": fidelity.rank_correlation if fidelity else None,
        "class_accuracy_drop": fidelity.class_accuracy_drop if fidelity else None,
        "runtime": m.runtime, "precision": m.precision,
        **_language_block(m),
    }


def _language_block(m: VariantMetrics) -> dict[str, Any]:
    lang, gen = m.language, m.generation
    if lang is None and gen is None:
        return {}
    return {"perplexity": lang.perplexity if lang else None,
            "kl_divergence": lang.kl_divergence_mean if lang else None,
            "token_agreement": lang.token_agreement if lang else None,
            "decode_tokens_per_second": gen.decode_tokens_per_second if gen else None,
            "time_to_first_token_seconds": gen.time_to_first_token_seconds if gen else None,
            "energy_per_token_joules": gen.energy_per_token_joules if gen else None,
            "cosine_similarity": None}


def result_block(m: VariantMetrics, cmp: Comparison, *, run_energy_joules: float | None = None,
                 duration_seconds: float | None = None) -> ResultBlock:
    q = m.quality
    block = ResultBlock(**metrics_block(m), speedup=cmp.speedup, speedup_spread=cmp.speedup_spread,
                        size_reduction=cmp.size_reduction, energy_reduction=cmp.energy_reduction,
                        accuracy_drop=cmp.accuracy_drop, quality_metric=cmp.quality_metric,
                        perplexity_increase=cmp.perplexity_increase, intervals=q.intervals,
                        interval_level=q.interval_level, slices=q.slices,
                        energy_method=m.energy.method if m.energy else None,
                        run_energy_joules=run_energy_joules, duration_seconds=duration_seconds)
    if q.slices:  # the set where the task's quality metric dropped most
        block.worst_slice = max(block.evaluation_sets(), key=lambda s: s.accuracy_drop or -1.0).name
    return block


MAIN_SET = "main"
"""The name the main evaluation set (data.uri's evaluation rows) goes by among the slices."""


# --------------------------------------------------------------------------------- steps, trials, search


class StepReport(ReportPart):
    """One technique step of a pipeline: what it cost, and (when evaluated) what it bought."""

    technique: str
    stage: Literal["onnx", "torch", "generation"]
    config: dict[str, Any]
    duration_seconds: float
    size_bytes: int | None = None
    parameters: int | None = None
    quality: Quality | None = None
    latency_p50_seconds: float | None = None
    """Quick median latency of the step's model (interleaved with the baseline's)."""
    speedup_vs_baseline: float | None = None
    details: dict[str, Any] = {}


class Trial(ReportPart):
    key: str
    """Fingerprint of the candidate (what a resumed search matches finished trials by)."""
    index: int
    """Rank of the candidate by expected gain."""
    name: str
    expected_gain: float
    techniques: list[dict[str, Any]]
    status: Literal["passed", "rejected", "error"]
    passed: bool
    gain: float | None = None
    """Measured gain on the search objective (baseline/trial)."""
    message: str | None = None
    metrics: ResultBlock | None = None
    failures: list[str] = []
    steps: list[StepReport] = []
    duration_seconds: float = 0.0
    chosen: bool = False
    fallback_of: str | None = None
    """The trial this one repairs (accuracy-aware fallback: the most sensitive nodes kept in float)."""
    kept_in_float: dict[str, str] = {}
    """Nodes the fallback left in float, and why (the activation each touches and its INT8 SQNR)."""
    runtime: str = "onnxruntime"
    """The runtime the trial was measured with (and the chosen one is served with; a record without one is
    from before runtimes were named: the reference runtime)."""
    precision: str | None = None
    """The runtime's inference precision for the trial (runtimes that take one)."""


class SearchReport(ReportPart):
    objective: Literal["latency", "size", "energy"]
    candidates: int
    stopped: str
    """Why the search stopped."""
    chosen: int | None = None
    """Index into `trials` of the chosen trial."""
    trials: list[Trial] = []
    profile: dict[str, float] = {}
    """Share of the baseline's time per op type (ONNX Runtime's profiler): what the candidates and their
    expected gains were derived from."""


# ----------------------------------------------------------------------------------------- provenance


class TensorSpec(ReportPart):
    """An input or output of a model: what a serving config (Triton's config.pbtxt) is written from."""

    name: str
    dtype: str
    """ONNX type string, e.g. tensor(float)."""
    shape: list[int | str | None]
    """Dimensions; a string or None is a dynamic axis."""


class ModelFacts(ReportPart):
    uri: str
    format: str
    sha256: str
    inputs: list[str]
    metadata: dict[str, str] = {}


class TextFacts(ReportPart):
    """text-generation: which documents calibrated and which evaluated (never the same), in tokens."""

    calibration_documents: list[str]
    evaluation_documents: list[str]
    calibration_tokens: int
    evaluation_tokens: int
    sequence_length: int
    tokenizer_adds_special_tokens: bool = False
    """Whether BOS/EOS were added to the windows (no: the text's own tokens only)."""


class SliceFacts(ReportPart):
    """One of data.slices: where it came from and how many of its rows were evaluated."""

    name: str
    uri: str
    sha256: str
    samples: int
    evaluation_samples: int
    labels: bool = False


class DataFacts(ReportPart):
    uri: str
    sha256: str
    samples: int
    evaluation_samples: int
    calibration_samples: int
    calibration_overlaps_evaluation: bool
    labels: bool
    train_uri: str | None = None
    train_sha256: str | None = None
    train_samples: int | None = None
    text: TextFacts | None = None
    """text-generation: the calibration/evaluation split of the text."""
    slices: list[SliceFacts] = []
    """data.slices: further evaluation sets, measured beside the main one."""


class Environment(ReportPart):
    platform: str
    machine: str
    seed: int
    libraries: dict[str, str]
    cpu: str | None = None
    """The CPU's model name (timings are only comparable on the same CPU)."""
    cpu_flags: list[str] = []
    """The CPU's flags that decide which kernels are fast (VNNI, AMX, AVX512-BF16...): ratios between
    runtimes and precisions differ with them, whatever the model name says."""
    gpu: str | None = None
    """The GPU's model name and driver, where one is visible (nvidia-smi)."""
    threads: int | None = None
    """Cores the run may use: affinity capped by the cgroup's CPU quota (a pod's CPU limit)."""
    uid: int | None = None
    """The user the engine ran as (65532 in the image)."""
    root_read_only: bool | None = None
    """The root filesystem was mounted read-only (as the Job's securityContext asks)."""


class RunEnergy(ReportPart):
    joules: float
    method: str


class ServingSignature(ReportPart):
    """The optimized model's tensors, recorded by the Job so promotion never has to open the model."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    runtime: str = "onnxruntime"
    """The runtime the model is served with, as it was measured (a report without one is from before runtimes
    were named: the reference runtime)."""
    precision: str | None = None
    """The runtime's inference precision it was measured with (the serving config sets the same)."""
    format: str = "onnx"
    """The served format (the runtime's layout: onnx, openvino-ir)."""


class PromotionResult(ReportPart):
    promoted: bool
    policy: Literal["auto", "manual"] | None = None
    reason: str | None = None
    uri: str | None = None
    version: int | None = None
    created: bool | None = None


class Artifacts(ReportPart):
    model: str | None = None
    model_files: list[str] = []
    """Every file of the optimized model (the graph, then its external data), as written: promotion copies
    exactly these, server-side when they are in S3, and never opens them."""
    exports: list[str] = []
    """Extra artifacts (spec.export), promoted beside the model."""
    report_json: str | None = None
    report_html: str | None = None
    plot: str | None = None
    search_plot: str | None = None
    slice_plot: str | None = None
    """Quality by evaluation set with intervals (runs with data.slices)."""


class CopyCheck(ReportPart):
    """A copy of the model in another form (the ONNX graph converted from a framework, a TFLite export) judged
    against the original framework's outputs on the main evaluation rows, by the spec's quality gates."""

    samples: int
    quality: SliceQuality
    """Its figures against the original (cosine, top-1 agreement, accuracy with labels, ...)."""
    max_abs_difference: float
    gates: list[GateResult] = []
    passed: bool = True


class ConversionReport(ReportPart):
    """How a Keras, TensorFlow or scikit-learn model became the ONNX graph everything else works on."""

    framework: str
    """model.format: keras, tensorflow or sklearn."""
    route: str
    """The converter and how it ran."""
    versions: dict[str, str] = {}
    check: CopyCheck
    """The converted graph, on the baseline's runtime, against the original framework."""


class ExportReport(ReportPart):
    """What spec.export wrote, and whether it checked out."""

    format: str
    """The export format (spec.export.format)."""
    files: list[str]
    matches_onnx: bool | None = None
    """The exported model gives the same outputs as the ONNX model on the latency batch."""
    max_abs_difference: float | None = None
    mobile_usability: list[str] = []
    """ONNX Runtime's mobile usability check (its summary lines)."""
    route: str | None = None
    """tflite: the converter that wrote it, from which form of the model."""
    precision: str | None = None
    size_bytes: int | None = None
    latency_p50_seconds: float | None = None
    """tflite: median time of one batch of target.batchSize in the LiteRT interpreter."""
    runtime: str | None = None
    """What ran it for the check (tflite: the LiteRT interpreter and its version)."""
    check: CopyCheck | None = None
    """tflite: its quality against the original framework's outputs, judged by the quality gates."""


class OptimizationReport(ReportPart):
    """report.json: everything one run did and measured."""

    schema_version: Literal[1] = SCHEMA_VERSION
    api_version: str
    kind: Literal["OptimizationReport"] = "OptimizationReport"
    name: str
    outcome: Outcome = "failed"
    message: str = ""
    error_kind: str | None = None
    started_at: str
    finished_at: str | None = None
    duration_seconds: float | None = None
    spec: dict[str, Any]
    environment: Environment
    model: ModelFacts | None = None
    conversion: ConversionReport | None = None
    data: DataFacts | None = None
    steps: list[StepReport] = []
    search: SearchReport | None = None
    baseline: VariantMetrics | None = None
    optimized: VariantMetrics | None = None
    comparison: Comparison | None = None
    gates: GateVerdict | None = None
    warnings: list[str] = []
    """Where the result is worse than the original (slower, larger, hungrier), said loudly."""
    signature: ServingSignature | None = None
    promotion: PromotionResult | None = None
    run_energy: RunEnergy | None = None
    export: ExportReport | None = None
    artifacts: Artifacts | None = None

    def blocks(self) -> tuple[MetricsBlock, ResultBlock] | None:
        """The flat baseline/result blocks (status, gates, metrics), once both variants were measured."""
        if self.baseline is None or self.optimized is None or self.comparison is None:
            return None
        return (MetricsBlock(**metrics_block(self.baseline)),
                result_block(self.optimized, self.comparison, duration_seconds=self.duration_seconds,
                             run_energy_joules=self.run_energy.joules if self.run_energy else None))


class RunSummary(ReportPart):
    """The Job's termination message (at most 4 KiB): what the operator needs to write status, apply the
    gates and promote, without reading the full report."""

    schema_version: Literal[1] = SCHEMA_VERSION
    outcome: Outcome | None = None
    message: str | None = None
    error_kind: str | None = None
    baseline: MetricsBlock | None = None
    result: ResultBlock | None = None
    gates_passed: bool | None = None
    failures: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    promoted_to: str | None = None
    report_uri: str | None = None
    model_uri: str | None = None


def json_schema() -> dict[str, Any]:
    """The published schema of report.json (and of the summary, under $defs)."""
    schema = OptimizationReport.model_json_schema(by_alias=True, mode="serialization")
    schema["$defs"]["RunSummary"] = {k: v for k, v in RunSummary.model_json_schema(
        by_alias=True, mode="serialization").items() if k != "$defs"}
    schema["$id"] = f"https://kompress.dev/schemas/report-v{SCHEMA_VERSION}.json"
    return schema


def json_schema_text() -> str:
    import json

    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
