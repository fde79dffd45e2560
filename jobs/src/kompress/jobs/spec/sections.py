"""The spec's sections that the rest of the engine reads (model, data, target, gates, promotion, resources):
a leaf below io, runtimes' users and tasks' users. Runtime, task, precision and export names are checked
against the registered runtimes and tasks, so a new runtime or task touches its own module only."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from kompress.jobs.cpu import available_threads
from kompress.jobs.runtimes import registry as runtimes
from kompress.jobs.runtimes.base import SessionTarget
from kompress.jobs.runtimes.registry import Serving
from kompress.jobs.spec.base import SpecModel
from kompress.jobs.spec.names import ExportFormat, PrecisionName, RuntimeChoice, TaskName


class ModelSpec(SpecModel):
    uri: Annotated[str, Field(min_length=1)]
    """Where the model is: a local path, package://<python-package>/<path>, or s3://bucket/key (a file or a prefix)."""
    format: Literal["onnx", "huggingface", "torch-export", "gguf", "keras", "tensorflow", "sklearn"] | None = None
    """onnx (a .onnx file), huggingface (a model directory with safetensors weights), torch-export (a .pt2
    archive), gguf (a llama.cpp .gguf file, text-generation only: dequantized to float on load, and the
    report records the source precision), keras (a .keras or legacy .h5 file), tensorflow (a SavedModel
    folder) or sklearn (a .skops file; a pickle only with trustPickle). Keras, TensorFlow and scikit-learn
    models are converted to ONNX on load (tf2onnx, skl2onnx), and the conversion is checked against the
    original framework's outputs. Detected from the URI when omitted."""
    trust_pickle: bool = False
    """Load a format that can run code on load: a scikit-learn pickle/joblib file, every type in a .skops
    file, a Keras Lambda layer's serialized code. Only for files from someone you trust."""
    trusted_types: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=64)] = []
    """Types a .skops file may build beyond those skops trusts by default (e.g.
    sklearn.tree._tree.Tree for tree models); the error for an untrusted file lists them."""
    task: TaskName = "generic"
    """What the model is for, one of the registered tasks: embedding (outputs are compared by cosine
    similarity; Hugging Face models are exported with mean pooling), classification (outputs are logits,
    compared by top-1), generic (raw outputs compared by cosine similarity), text-generation (a causal language
model: a Hugging Face folder or a GGUF file, judged by perplexity, KL divergence and token agreement, timed
by time to first token and decode tokens/s, served by a generative runtime)."""
    output: str | None = None
    """Name of the model output that quality is measured on (default: the first output)."""


InputDtype = Literal["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]


class InputConstant(SpecModel):
    """A model input that is the same for every sample: zeros of a shape, or one number (a scalar, or filling
    `shape`)."""

    # the same rule for the API server (the CRD generator copies x-kubernetes-validations from the schema)
    model_config = SpecModel.model_config | {"json_schema_extra": {"x-kubernetes-validations": [{
        "rule": "has(self.zeros) != has(self.value)",
        "message": "set exactly one of constant.zeros or constant.value"}]}}

    zeros: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=16)] | None = None
    """Zeros of this shape, e.g. [2, 1, 128] (an empty list: a scalar zero)."""
    value: float | None = None
    """One number: the constant is this scalar, or an array of `shape` filled with it."""
    shape: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=16)] | None = None
    """With `value`: the constant's shape (default: a scalar)."""
    dtype: InputDtype | None = None
    """Element type (default: the model input's type)."""

    @model_validator(mode="after")
    def zeros_or_value(self) -> InputConstant:
        if (self.zeros is None) == (self.value is None):
            raise ValueError("set exactly one of zeros (an array of zeros of that shape) or value (a number)")
        if self.zeros is not None and self.shape is not None:
            raise ValueError("shape goes with value; zeros is already a shape")
        return self

    def dims(self) -> tuple[int, ...]:
        return tuple(self.zeros if self.zeros is not None else self.shape or ())


class InputEntry(SpecModel):
    """How one model input is fed: where its batch axis is, and/or a constant that is not in the .npz."""

    model_config = SpecModel.model_config | {"json_schema_extra": {"x-kubernetes-validations": [{
        "rule": "has(self.batchAxis) || has(self.constant)", "message": "give batchAxis, constant or both"}]}}

    batch_axis: Annotated[int, Field(ge=0, le=15)] | None = None
    """The model's batch axis of this input (default 0). Arrays in the .npz are stored samples-first; a batch
    of rows is moved to this axis. A constant with a batch axis is given for batch 1 and repeated along it to
    the batch size; without one it is fed as is."""
    constant: InputConstant | None = None
    """The input is this constant, fed with every call (not read from the .npz)."""

    @model_validator(mode="after")
    def says_something(self) -> InputEntry:
        if self.batch_axis is None and self.constant is None:
            raise ValueError("give batchAxis, constant or both")
        const = self.constant
        if const is not None and self.batch_axis is not None:
            dims = const.dims()
            if self.batch_axis >= len(dims):
                raise ValueError(f"batchAxis {self.batch_axis} is beyond the constant's rank {len(dims)} "
                                 f"(shape {list(dims)}){'; a scalar has no batch axis' if not dims else ''}")
            if dims[self.batch_axis] != 1:
                raise ValueError(f"a constant with a batchAxis is given for batch 1: its axis {self.batch_axis} "
                                 f"is {dims[self.batch_axis]} (shape {list(dims)})")
        return self


class TextSpec(SpecModel):
    """How text-generation reads its text: calibration sequences and evaluation windows, in tokens."""

    sequence_length: Annotated[int, Field(ge=16, le=32768)] = 512
    """Tokens per evaluation window (perplexity and KL are measured over non-overlapping windows)."""
    evaluation_windows: Annotated[int, Field(ge=1, le=100_000)] = 16
    """Evaluation windows used at most (capped at what the evaluation text holds; at least 2 are needed)."""
    calibration_sequences: Annotated[int, Field(ge=1, le=100_000)] = 32
    """Calibration sequences for data-aware algorithms (AWQ, scale estimation, mixed precision) and the
    sensitivity measurement; the calibration text must hold them."""
    calibration_length: Annotated[int, Field(ge=8, le=32768)] = 128
    """Tokens per calibration sequence."""


MAX_SLICES = 16


class SliceSpec(SpecModel):
    """A further evaluation set beside data.uri: text of another language, short queries, edge cases, one
    class... Quality is measured on it like on the main set (same baseline, same figures and intervals)."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")]
    """The slice's name (lowercase letters, digits and dashes, at most 40): reports, status and the Prometheus
    `slice` label carry it."""
    uri: Annotated[str, Field(min_length=1)]
    """A .npz like data.uri (the same inputs; labels optional; a `texts` array of strings is shown beside
    the worst cases). text-generation: UTF-8 text (a .txt file or a folder of them), all of it evaluated."""
    evaluation_samples: Annotated[int, Field(ge=1, le=1_000_000)] = 512
    """Samples evaluated (the first ones; capped at what the file holds). text-generation: windows of
    data.text.sequenceLength tokens, at most data.text.evaluationWindows."""


class DataSpec(SpecModel):
    uri: Annotated[str, Field(min_length=1)]
    """A .npz file with one array per model input (first axis = samples) and optional `labels`. For
    text-generation: UTF-8 text (a .txt file, or a folder of them): documents are files or sections headed
    `### <title>`; a heading `### calibration: <title>` or `### evaluation: <title>` assigns its document,
    the others alternate (evaluation first), a single document is split in halves. The two never overlap.
    kompress ships English prose for this: package://kompress.jobs/datasets/prose-en.txt (Austen, State of the
    Union addresses; public domain)."""
    text: TextSpec = TextSpec()
    """text-generation only: how the text is cut into calibration sequences and evaluation windows."""
    inputs: dict[str, InputEntry] = {}
    """Model inputs that are not batch-first or not in the .npz, by input name: `{batchAxis: 1}` for an input
    whose batch axis is not the first, `{constant: {zeros: [2, 1, 128]}, batchAxis: 1}` or
    `{constant: {value: 16000, dtype: int64}}` for an input that is the same for every sample. Inputs not
    named here are read from the .npz, batch-first. Outputs are always taken as batch-first."""
    calibration_samples: Annotated[int, Field(ge=1, le=100_000)] = 256
    """Samples used to calibrate static quantization."""
    evaluation_samples: Annotated[int, Field(ge=1, le=1_000_000)] = 512
    """Samples used to measure quality (capped at what the file holds)."""
    train_uri: str | None = None
    """Training or transfer data for techniques that train (prune recovery, distill, qat): a .npz like `uri`,
    labels optional. Default: the calibration rows of `uri`, which never overlap the evaluation rows."""
    train_samples: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    """Training samples used at most."""
    slices: Annotated[list[SliceSpec], Field(max_length=MAX_SLICES)] = []
    """Further evaluation sets (at most 16), each measured against the baseline like the main set: quality
    gates judge the worst of them by default (gates.scope), so a model that passes on the main set but breaks
    on another kind of input is not promoted."""
    allow_calibration_overlap: bool = False
    """When data.uri is too small for calibrationSamples rows beside evaluationSamples, calibrate on
    evaluation rows anyway (the result is then scored on rows it was calibrated on; the report says so).
    Default: calibration gets only the rows left over, and a technique that calibrates refuses to run on
    none."""

    @field_validator("slices")
    @classmethod
    def distinct_names(cls, slices: list[SliceSpec]) -> list[SliceSpec]:
        names = [s.name for s in slices]
        if "main" in names:
            raise ValueError("slice name 'main' is the main evaluation set's (data.uri); pick another")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"slice names must differ: {', '.join(twice)} appears more than once")
        return slices


class EnergySpec(SpecModel):
    method: Literal["auto", "rapl", "nvml", "estimate"] = "auto"
    """auto: NVML on GPU, RAPL where /sys/class/powercap is readable, else an estimate from CPU time."""
    cpu_watts_per_core: Annotated[float, Field(gt=0, le=1000)] = 10.0
    """Power drawn by one busy core, used by the estimate method."""


class GenerationSpec(SpecModel):
    """How a text-generation model is timed: greedy generation at batch 1 from prompts of the evaluation text,
    interleaved with the baseline in rounds."""

    prompt_tokens: Annotated[int, Field(ge=1, le=32768)] = 128
    """Prompt length (time to first token is measured at this length)."""
    new_tokens: Annotated[int, Field(ge=2, le=4096)] = 64
    """Tokens generated per run (decode tokens/s is measured over all but the first)."""
    rounds: Annotated[int, Field(ge=1, le=1000)] = 5
    """Timed generations per variant, each with a different prompt, for the result."""
    trial_rounds: Annotated[int, Field(ge=1, le=1000)] = 3
    """Timed generations per variant in a search trial (at most `rounds`)."""


class TargetSpec(SpecModel):
    device: Literal["cpu", "gpu"] = "cpu"
    """Where the model will be served and measured."""
    runtime: RuntimeChoice | None = None
    """Inference runtime the model is measured, gated and served with, one of the registered runtimes:
    onnxruntime (CPU or CUDA), openvino (CPU; served as an OpenVINO IR), or auto (a search only: each
    candidate names its runtime, the best that passes every gate wins; the baseline is the original on the
    reference runtime, ONNX Runtime). Unset: a search tries every installed runtime that runs on the target's
    device (as auto), a fixed pipeline runs on onnxruntime. Named: pinned to that runtime."""
    precision: PrecisionName | None = None
    """The runtime's inference precision, for runtimes that take one (OpenVINO's INFERENCE_PRECISION_HINT;
    default f32): f32 computes what the graph says; bf16 is OpenVINO's default on CPUs with AMX or
    AVX512-BF16 and changes the outputs, so it is measured, gated and served as named. ONNX Runtime runs the
    graph's own types (use the fp16 technique)."""
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    """Intra-op threads for measurement (default: all cores available to the process)."""
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 1
    """Batch size for the latency measurement."""
    throughput_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    """Batch size for the throughput measurement."""
    warmup_iterations: Annotated[int, Field(ge=0, le=10_000)] = 10
    """Runs discarded before timing."""
    iterations: Annotated[int, Field(ge=5, le=100_000)] = 100
    """Timed runs per variant (interleaved in rounds between baseline and optimized)."""
    energy: EnergySpec = EnergySpec()
    """How energy is measured."""
    generation: GenerationSpec = GenerationSpec()
    """text-generation only: how generation is timed."""

    def serving(self) -> Serving:
        """How the target serves a model unless a search candidate says otherwise (unset or auto: the
        reference runtime every runtime is compared with)."""
        runtime = runtimes.resolve(self.runtime)
        return Serving(runtime.name, self.precision if runtime.precisions else None)

    def session(self, serving: Serving) -> SessionTarget:
        """Where a session for `serving` runs: this target's device and threads, the serving's precision."""
        return SessionTarget(self.device, self.threads or available_threads(), serving.precision)


GateScope = Literal["main", "every-slice", "worst-slice"]


class GatesSpec(SpecModel):
    no_regression: bool = True
    """The result must beat the original by more than the measurement's own noise (the spread of the
    interleaved rounds): a search on its objective (latency, size or energy), a fixed pipeline on at least one
    of them. A model that is not better than the original is never promoted; false turns this guard off."""
    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] | None = None
    """Largest allowed drop of the quality metric: accuracy with labels; for a classifier without labels
    1 - top-1 agreement with the original; else 1 - mean cosine similarity."""
    min_cosine_similarity: Annotated[float, Field(ge=-1, le=1)] | None = None
    """Smallest allowed mean cosine similarity between optimized and baseline outputs."""
    min_speedup: Annotated[float, Field(gt=0)] | None = None
    """Smallest allowed baseline/optimized ratio of median latency."""
    min_size_reduction: Annotated[float, Field(gt=0)] | None = None
    """Smallest allowed baseline/optimized ratio of model file size."""
    max_latency_p95_seconds: Annotated[float, Field(gt=0)] | None = None
    """Largest allowed 95th-percentile latency of the optimized model."""
    max_energy_per_inference_joules: Annotated[float, Field(gt=0)] | None = None
    """Largest allowed energy per inference of the optimized model."""
    max_peak_memory_bytes: Annotated[int, Field(gt=0)] | None = None
    """Largest allowed peak memory to load and run the optimized model: GPU memory on a GPU target, the
    host's resident set on a CPU one (text-generation: while generating)."""
    max_perplexity_increase: Annotated[float, Field(ge=0)] | None = None
    """text-generation: largest allowed relative perplexity increase on the evaluation text (0.05 = 5%)."""
    max_kl_divergence: Annotated[float, Field(ge=0)] | None = Field(default=None, alias="maxKLDivergence")
    """text-generation: largest allowed mean KL divergence of the next-token distributions from the float
    model's, on the same tokens."""
    min_token_agreement: Annotated[float, Field(ge=0, le=1)] | None = None
    """text-generation: smallest allowed share of positions where the top-1 next token equals the float
    model's."""
    min_decode_speedup: Annotated[float, Field(gt=0)] | None = None
    """text-generation: smallest allowed ratio of decode tokens/s to the float model's, same runtime."""
    max_time_to_first_token_seconds: Annotated[float, Field(gt=0)] | None = None
    """text-generation: largest allowed median time to the first token at target.generation.promptTokens."""
    min_top1_agreement: Annotated[float, Field(ge=0, le=1)] | None = Field(default=None, alias="minTop1Agreement")
    """Smallest allowed share of samples whose top-1 output (the arg-max) is the baseline's."""
    max_class_accuracy_drop: Annotated[float, Field(ge=0, le=1)] | None = None
    """classification: largest allowed drop within any one class (accuracy with labels, else 1 - top-1
    agreement within the baseline's predicted class; classes with at least 10 samples)."""
    min_neighbor_agreement: Annotated[float, Field(ge=0, le=1)] | None = None
    """embedding: smallest allowed share of samples whose nearest other sample (cosine) is the baseline's:
    retrieval as a user sees it."""
    min_rank_correlation: Annotated[float, Field(ge=-1, le=1)] | None = None
    """embedding: smallest allowed mean Spearman correlation between each sample's similarities to the others
    and the baseline's."""
    scope: GateScope | None = None
    """Which evaluation sets the quality gates judge: main (data.uri only; slices are reported), every-slice
    (each set is a gate of its own), worst-slice (the worst set, named). Default: worst-slice when data.slices
    exist, else main. Speed, size, memory and energy gates are not per slice."""
    confidence: Annotated[float, Field(ge=0.5, le=0.999)] | None = None
    """Judge quality gates on the bound of the figure's paired bootstrap interval at this level (the lower
    bound of a minimum, the upper bound of a maximum) instead of on the point estimate: a pass then means the
    evaluation data shows it, not that it was lucky. Intervals are always reported (at 0.95 by default)."""

    @property
    def interval_level(self) -> float:
        return self.confidence or 0.95


class PromotionSpec(SpecModel):
    registry: Annotated[str, Field(min_length=1)]
    """Model repository root (local path or s3://bucket/prefix); versions go to <registry>/<modelName>/<n>/."""
    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
    """Name of the model in the repository (Triton model name)."""
    policy: Literal["auto", "manual"] = "auto"
    """auto: promote when every gate passes; manual: promote only once `approved` is true."""
    approved: bool = False
    """Approval for policy: manual (declarative, so it can live in Git). Changing it does not rerun the Job."""

    def awaiting_approval(self, approved_now: bool = False) -> bool:
        """True while policy: manual still waits for an approval (`approved`, or `--approve` on a local run):
        the one rule the engine and the operator both apply."""
        return self.policy == "manual" and not (self.approved or approved_now)


class Toleration(SpecModel):
    key: str | None = None
    """Taint key."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal."""
    value: str | None = None
    """Taint value."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect."""


class ResourcesSpec(SpecModel):
    cpu: str = "2"
    """CPU request and limit of the Job (Kubernetes quantity)."""
    memory: str = "4Gi"
    """Memory request and limit of the Job (Kubernetes quantity)."""
    gpu: Annotated[int, Field(ge=0, le=64)] = 0
    """nvidia.com/gpu limit of the Job."""
    node_selector: dict[str, str] = {}
    """Node selector of the Job's pod."""
    tolerations: list[Toleration] = []
    """Tolerations of the Job's pod."""
    runtime_class_name: str | None = None
    """RuntimeClass of the Job's pod (e.g. nvidia)."""
    service_account_name: str | None = None
    """Service account of the Job's pod."""
    image: str | None = None
    """Engine image override."""
    timeout_seconds: Annotated[int, Field(ge=10, le=7 * 86400)] = 86400
    """Longest the whole run may take, retries included (the Job's activeDeadlineSeconds); then it fails with
    reason DeadlineExceeded."""

    @field_validator("cpu", "memory")
    @classmethod
    def quantity(cls, value: str) -> str:
        if not re.fullmatch(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$", value):
            raise ValueError(f"expected a Kubernetes quantity such as 500m, 2 or 4Gi, got {value!r}")
        return value


class SecretRef(SpecModel):
    name: Annotated[str, Field(min_length=1)]
    """Secret in the namespace with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (optionally AWS_ENDPOINT_URL)."""


class ExportSpec(SpecModel):
    format: ExportFormat
    """An export format of the serving runtime. ort (ONNX Runtime): the ONNX Runtime format model
    (`model.ort`, for ONNX Runtime Mobile and minimal builds) with the reduced-operator config such a build
    needs (`required_operators.config`), and ONNX Runtime's mobile usability check in the report. Written and
    promoted beside the served model."""
    precision: Literal["fp32", "fp16", "int8"] | None = None
    """tflite only: fp32, fp16 (float16 weights) or int8 (full-integer: weights and activations, calibrated on
    the calibration rows; inputs and outputs stay float32). Default int8."""

    @model_validator(mode="after")
    def precision_for_tflite(self) -> ExportSpec:
        if self.precision is not None and self.format != "tflite":
            raise ValueError(f"precision applies to the tflite export, not {self.format}")
        return self

    @property
    def tflite_precision(self) -> str:
        return self.precision or "int8"
