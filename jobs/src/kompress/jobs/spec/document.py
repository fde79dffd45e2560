"""The ModelOptimization spec: one pydantic model shared by the CLI, the Job and the operator.

The CRD's openAPIV3Schema is generated from these classes, so every field carries a
description (its attribute docstring).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, create_model, field_validator, model_validator
from pydantic.alias_generators import to_snake

from kompress.jobs.errors import InvalidInputError, SpecError
from kompress.jobs.runtimes.base import Serving
from kompress.jobs.spec.base import SpecModel
from kompress.jobs.techniques import catalog

# The resource's identity, defined once: the CRD, the operator and local spec files all use these.
GROUP = "kompress.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelOptimization"
PLURAL = "modeloptimizations"
SHORT_NAME = "mopt"
NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ModelSpec(SpecModel):
    uri: Annotated[str, Field(min_length=1)]
    """Where the model is: a local path, package://<python-package>/<path>, or s3://bucket/key (a file or a prefix)."""
    format: Literal["onnx", "huggingface", "torch-export"] | None = None
    """onnx (a .onnx file), huggingface (a model directory with safetensors weights) or torch-export (a .pt2
    archive). Detected from the URI when omitted."""
    task: Literal["embedding", "classification", "generic"] = "generic"
    """embedding: outputs are compared by cosine similarity (Hugging Face models are exported with mean pooling);
    classification: outputs are logits, compared by top-1; generic: raw outputs compared by cosine similarity."""
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


class DataSpec(SpecModel):
    uri: Annotated[str, Field(min_length=1)]
    """A .npz file with one array per model input (first axis = samples) and optional `labels`."""
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


def _technique_step_model() -> type[SpecModel]:
    """One `techniques[]` item: exactly one key, a technique name from the catalog, with its config."""
    fields: dict[str, Any] = {}
    for tech in catalog.all_techniques():
        fields[to_snake(tech.name)] = (
            tech.config | None,
            Field(default=None, alias=tech.name, description=tech.summary),
        )

    def exactly_one(cls: type, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("each technique is a mapping with one key, e.g. {quantize: {method: dynamic}}")
        known = catalog.names()
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ValueError(f"unknown technique {unknown[0]!r}; known techniques: {', '.join(known)}")
        if len(data) != 1:
            raise ValueError(f"each technique item has exactly one key, got {len(data)}: {', '.join(data) or 'none'}")
        # `- fp16:` with no body means the defaults
        return {k: ({} if v is None else v) for k, v in data.items()}

    return create_model(
        "TechniqueStep",
        __base__=SpecModel,
        __validators__={"exactly_one": model_validator(mode="before")(exactly_one)},
        **fields,
    )


TechniqueStep = _technique_step_model()


def step_name_and_config(step: SpecModel) -> tuple[str, SpecModel]:
    for tech in catalog.all_techniques():
        config = getattr(step, to_snake(tech.name))
        if config is not None:
            return tech.name, config
    raise AssertionError("validated TechniqueStep without a technique")


class Candidate(SpecModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_. +-]{0,62}$")] | None = None
    """Label in the trial table (default: the technique names joined by '+')."""
    techniques: Annotated[list[TechniqueStep], Field(max_length=32)] = []  # type: ignore[valid-type]
    """The pipeline this candidate applies, as in spec.techniques (empty: the original model, served by
    `runtime` at `precision`)."""
    runtime: Literal["onnxruntime", "openvino"] | None = None
    """The runtime this candidate is measured and served with (default: target.runtime; with target.runtime
    auto, onnxruntime)."""
    precision: Literal["f32", "bf16", "f16"] | None = None
    """OpenVINO's inference precision for this candidate (default: target.precision)."""

    @model_validator(mode="after")
    def torch_steps_first(self) -> Candidate:
        if not self.techniques and self.runtime is None and self.precision is None:
            raise ValueError("a candidate applies techniques, or names the runtime (and precision) that serves "
                             "the original model")
        if self.precision is not None and self.runtime == "onnxruntime":
            raise ValueError("precision is OpenVINO's inference precision; an onnxruntime candidate runs the "
                             "graph's own types")
        check_stage_order([step_name_and_config(s) for s in self.techniques], "techniques")
        return self

    def steps(self) -> list[tuple[str, SpecModel]]:
        return [step_name_and_config(s) for s in self.techniques]

    def label(self) -> str:
        if self.name:
            return self.name
        served = ([self.runtime or ""] if self.runtime == "openvino" or not self.techniques else []) + (
            [self.precision] if self.precision else [])
        return "+".join([*(n for n, _ in self.steps()), *(p for p in served if p)])

    def serving(self, target: TargetSpec) -> Serving:
        """The runtime and precision this candidate is measured and served with."""
        if self.runtime is None and self.precision is None:
            return target.serving()
        runtime = self.runtime or (target.runtime if target.runtime != "auto" else "onnxruntime")
        return Serving(runtime, self.precision or target.precision) if runtime == "openvino" else Serving()


class SearchSpec(SpecModel):
    candidates: Annotated[list[Candidate], Field(min_length=1, max_length=64)] | None = None
    """Recipes to try. Default: a built-in list for the model's format and task (INT8 variants; for Hugging
    Face transformers also layer distillation followed by INT8; for ONNX models QAT)."""
    objective: Literal["latency", "size", "energy"] = "latency"
    """What the chosen model minimises among the candidates that pass every gate."""
    max_trials: Annotated[int, Field(ge=1, le=64)] = 8
    """Candidates evaluated at most."""
    timeout_seconds: Annotated[int, Field(ge=60, le=7 * 86400)] = 3600
    """No trial starts after this many seconds of search (a running trial finishes)."""
    trial_iterations: Annotated[int, Field(ge=5, le=10_000)] = 30
    """Timed runs per variant in a trial (interleaved with the baseline); the chosen model is then measured
    in full (target.iterations)."""
    early_stop: bool = True
    """Stop once a passing trial's measured gain is at least the expected gain of every candidate left."""


class EnergySpec(SpecModel):
    method: Literal["auto", "rapl", "nvml", "estimate"] = "auto"
    """auto: NVML on GPU, RAPL where /sys/class/powercap is readable, else an estimate from CPU time."""
    cpu_watts_per_core: Annotated[float, Field(gt=0, le=1000)] = 10.0
    """Power drawn by one busy core, used by the estimate method."""


class TargetSpec(SpecModel):
    device: Literal["cpu", "gpu"] = "cpu"
    """Where the model will be served and measured."""
    runtime: Literal["onnxruntime", "openvino", "auto"] = "onnxruntime"
    """Inference runtime the model is measured, gated and served with: onnxruntime (CPU or CUDA), openvino
    (CPU; served as an OpenVINO IR), or auto (a search only: each candidate names its runtime, the best that
    passes every gate wins; the baseline is the original on ONNX Runtime)."""
    precision: Literal["f32", "bf16", "f16"] = "f32"
    """OpenVINO's inference precision (INFERENCE_PRECISION_HINT): f32 computes what the graph says; bf16 is
    OpenVINO's default on CPUs with AMX or AVX512-BF16 and changes the outputs, so it is measured, gated and
    served as named. ONNX Runtime runs the graph's own types (use the fp16 technique)."""
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

    def serving(self) -> Serving:
        """How the target serves a model unless a search candidate says otherwise (`auto`: ONNX Runtime, the
        reference every runtime is compared with)."""
        return Serving("openvino", self.precision) if self.runtime == "openvino" else Serving()


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
    host's resident set on a CPU one."""


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
    format: Literal["ort"]
    """ort: the ONNX Runtime format model (`model.ort`, for ONNX Runtime Mobile and minimal builds) with the
    reduced-operator config such a build needs (`required_operators.config`), and ONNX Runtime's mobile
    usability check in the report. Written and promoted beside model.onnx."""


class OptimizationSpec(SpecModel):
    model: ModelSpec
    """The model to optimize."""
    data: DataSpec
    """Calibration and evaluation data."""
    techniques: Annotated[list[TechniqueStep], Field(min_length=1, max_length=32)] | None = None  # type: ignore[valid-type]
    """Techniques applied in order (give either techniques or search)."""
    search: SearchSpec | None = None
    """Search over candidate recipes; the fastest (or smallest, or least energy) one that passes the gates wins."""
    target: TargetSpec = TargetSpec()
    """Where and how the model is measured."""
    gates: GatesSpec = GatesSpec()
    """Quality gates; all that are set must pass before promotion."""
    promotion: PromotionSpec | None = None
    """Where a model that passes the gates is promoted."""
    resources: ResourcesSpec = ResourcesSpec()
    """Kubernetes Job resources (ignored by a local run)."""
    storage_secret_ref: SecretRef | None = None
    """Secret with S3 credentials for the Job (ignored by a local run, which uses the standard AWS chain)."""
    export: ExportSpec | None = None
    """Extra artifacts written beside the served model (e.g. the ORT format for mobile and edge builds)."""

    @model_validator(mode="after")
    def techniques_or_search(self) -> OptimizationSpec:
        if (self.techniques is None) == (self.search is None):
            raise ValueError("give exactly one of techniques (a fixed pipeline) or search (candidate recipes)")
        check_stage_order(self.steps(), "techniques")
        check_runtimes(self)
        return self

    def steps(self) -> list[tuple[str, SpecModel]]:
        """The fixed pipeline's steps (empty for a search)."""
        return [step_name_and_config(s) for s in self.techniques or []]


def check_runtimes(spec: OptimizationSpec) -> None:
    """Every step runs on the runtime that will serve it (graphOptimize's fused contrib ops are ONNX
    Runtime's; OpenVINO cannot read them), and the runtime suits the device and the export."""
    target = spec.target
    if target.runtime != "onnxruntime" and target.device == "gpu":
        raise ValueError(f"target.runtime {target.runtime} measures on the CPU; a GPU target runs onnxruntime "
                         "(CUDA)")
    if target.precision != "f32" and target.runtime == "onnxruntime":
        raise ValueError("target.precision is OpenVINO's inference precision; onnxruntime runs the graph's own "
                         "types (use the fp16 technique, or target.runtime openvino)")
    if target.runtime == "auto" and spec.search is None:
        raise ValueError("target.runtime auto chooses the runtime in a search; a fixed pipeline names its "
                         "runtime (onnxruntime or openvino)")
    candidates = (spec.search.candidates or []) if spec.search else []
    for i, c in enumerate(candidates):
        if c.precision is not None and c.serving(target).runtime != "openvino":
            raise ValueError(f"search.candidates[{i}].precision is OpenVINO's inference precision, but the "
                             "candidate runs on onnxruntime (set its runtime: openvino)")
    pipelines = ([("techniques", spec.steps(), target.serving())]
                 if spec.search is None else
                 [(f"search.candidates[{i}].techniques", c.steps(), c.serving(target))
                  for i, c in enumerate(candidates)])
    for where, steps, serving in pipelines:
        if target.runtime != "auto" and serving.runtime != target.runtime:
            raise ValueError(f"{where.removesuffix('.techniques')}.runtime {serving.runtime} differs from "
                             f"target.runtime {target.runtime} (set target.runtime auto to search across runtimes)")
        for i, (name, config) in enumerate(steps):
            runs_on = catalog.get(name).runtimes_of(config)
            if serving.runtime not in runs_on:
                raise ValueError(f"{where}[{i}] {name} writes a graph only {' or '.join(sorted(runs_on))} runs, "
                                 f"but this pipeline is served by {serving.runtime}")
    if spec.export is not None and target.runtime != "onnxruntime":
        raise ValueError(f"export format {spec.export.format} is ONNX Runtime's; target.runtime is "
                         f"{target.runtime}")


def check_stage_order(steps: list[tuple[str, SpecModel]], where: str) -> None:
    """Steps that train in PyTorch must come before the ONNX-only steps (a quantized ONNX graph cannot go
    back to PyTorch)."""
    first_onnx = closing = None
    for i, (name, config) in enumerate(steps):
        tech = catalog.get(name)
        stage = tech.stage_of(config)
        if stage == "onnx" and first_onnx is None:
            first_onnx = (i, name)
        elif stage == "torch" and first_onnx is not None:
            raise ValueError(f"{where}[{i}] {name} trains in PyTorch, so it must come before the ONNX-only step "
                             f"{where}[{first_onnx[0]}] {first_onnx[1]}")
        elif stage == "torch" and closing is not None:
            raise ValueError(f"{where}[{i}] {name} cannot follow {where}[{closing[0]}] {closing[1]}, which must be "
                             "the last PyTorch step")
        if stage == "torch" and tech.last_torch_step:
            closing = (i, name)


class LoadedSpec(SpecModel):
    name: str
    """Run name (metadata.name, or the file's stem)."""
    spec: OptimizationSpec
    """The validated spec."""


def _loc_to_path(loc: tuple[Any, ...], prefix: str) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith("function-"):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


def _problems(err: ValidationError, prefix: str) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] not in ("missing", "extra_forbidden") and "input" in e and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append((_loc_to_path(tuple(e["loc"]), prefix), msg))
    return out


def parse_document(doc: Any, default_name: str = "optimization") -> LoadedSpec:
    """Validate a ModelOptimization document (full resource or bare spec); raise SpecError listing every problem."""
    if not isinstance(doc, dict):
        raise SpecError([("", f"expected a mapping at the top level, got {type(doc).__name__}")])
    prefix = ""
    name = default_name
    problems: list[tuple[str, str]] = []
    if "kind" in doc or "apiVersion" in doc or "spec" in doc:
        # kind and apiVersion are optional in a local file; when present they must be right.
        if "kind" in doc and doc["kind"] != KIND:
            problems.append(("kind", f"expected {KIND!r}, got {doc['kind']!r}"))
        if "apiVersion" in doc and doc["apiVersion"] != API_VERSION:
            problems.append(("apiVersion", f"expected {API_VERSION!r}, got {doc['apiVersion']!r}"))
        meta = doc.get("metadata") or {}
        name = str(meta.get("name") or default_name)
        body = doc.get("spec")
        prefix = "spec"
        if not isinstance(body, dict):
            problems.append(("spec", "missing or not a mapping"))
            raise SpecError(problems)
    else:
        body = doc
    if not NAME_PATTERN.match(name):
        problems.append(("metadata.name", f"expected a DNS label (lowercase letters, digits, '-'), got {name!r}"))
    try:
        spec = OptimizationSpec.model_validate(body)
    except ValidationError as err:
        problems.extend(_problems(err, prefix))
        raise SpecError(problems) from None
    if problems:
        raise SpecError(problems)
    return LoadedSpec(name=name, spec=spec)


def load_spec_text(text: str, source: str, default_name: str = "optimization") -> LoadedSpec:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InvalidInputError(f"spec {source} is not valid YAML: {str(err).splitlines()[0]}") from None
    return parse_document(doc, default_name=default_name)


def load_spec_file(path: str | Path) -> LoadedSpec:
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"spec file {str(p)!r} does not exist")
    stem = re.sub(r"[^a-z0-9-]+", "-", p.stem.lower()).strip("-") or "optimization"
    return load_spec_text(p.read_text(encoding="utf-8"), f"file {str(p)!r}", default_name=stem[:63])
