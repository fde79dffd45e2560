"""The ModelOptimization spec: one pydantic model shared by the CLI, the Job and the operator.

The CRD's openAPIV3Schema is generated from these classes, so every field carries a
description (its attribute docstring).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, create_model, model_validator
from pydantic.alias_generators import to_snake

from kompress.jobs.errors import InvalidInputError, SpecError
from kompress.jobs.runtimes import genai_registry as generative
from kompress.jobs.runtimes import registry as runtimes
from kompress.jobs.runtimes.registry import Serving
from kompress.jobs.spec.base import API_VERSION, KIND, NAME_PATTERN, SpecModel
from kompress.jobs.spec.names import PrecisionName, RuntimeName
from kompress.jobs.spec.sections import (
    DataSpec,
    ExportSpec,
    GatesSpec,
    ModelSpec,
    PromotionSpec,
    ResourcesSpec,
    SecretRef,
    TargetSpec,
)
from kompress.jobs.tasks import registry as tasks
from kompress.jobs.techniques import catalog


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
        __validators__={"exactly_one": model_validator(mode="before")(exactly_one)},  # type: ignore[dict-item]
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
    runtime: RuntimeName | None = None
    """The runtime this candidate is measured and served with (default: target.runtime; with target.runtime
    auto, the reference runtime, onnxruntime)."""
    precision: PrecisionName | None = None
    """The runtime's inference precision for this candidate, e.g. OpenVINO's (default: target.precision)."""

    @model_validator(mode="after")
    def torch_steps_first(self) -> Candidate:
        if not self.techniques and self.runtime is None and self.precision is None:
            raise ValueError("a candidate applies techniques, or names the runtime (and precision) that serves "
                             "the original model")
        if (self.precision is not None and self.runtime is not None and self.runtime in runtimes.names()
                and not runtimes.get(self.runtime).precisions):
            raise ValueError(f"precision is a runtime's inference precision; a {self.runtime} candidate runs the "
                             "graph's own types")
        check_stage_order([step_name_and_config(s) for s in self.techniques], "techniques")
        return self

    def steps(self) -> list[tuple[str, SpecModel]]:
        return [step_name_and_config(s) for s in self.techniques]

    def label(self) -> str:
        if self.name:
            return self.name
        named = self.runtime is not None and not runtimes.get(self.runtime).reference
        served = ([self.runtime or ""] if named or not self.techniques else []) + (
            [self.precision] if self.precision else [])
        return "+".join([*(n for n, _ in self.steps()), *(p for p in served if p)])

    def serving(self, target: TargetSpec) -> Serving:
        """The runtime and precision this candidate is measured and served with."""
        if self.runtime is None and self.precision is None:
            return target.serving()
        runtime = runtimes.get(self.runtime) if self.runtime else runtimes.resolve(target.runtime)
        return Serving(runtime.name, (self.precision or target.precision) if runtime.precisions else None)


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


class OptimizationSpec(SpecModel):
    model: ModelSpec
    """The model to optimize."""
    data: DataSpec
    """Calibration and evaluation data."""
    techniques: Annotated[list[TechniqueStep], Field(max_length=32)] | None = None  # type: ignore[valid-type]
    """Techniques applied in order (give either techniques or search). An empty list converts a keras,
    tensorflow or sklearn model to ONNX and nothing more (promoted when the conversion holds the quality gates)."""
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
        check_conversion(self)
        return self

    @property
    def conversion_only(self) -> bool:
        """techniques: [] on a framework model: the converted ONNX graph is the result."""
        return self.techniques is not None and not self.techniques

    def steps(self) -> list[tuple[str, SpecModel]]:
        """The fixed pipeline's steps (empty for a search)."""
        return [step_name_and_config(s) for s in self.techniques or []]

    def search_runtimes(self) -> list[str]:
        """The runtimes a search chooses among: target.runtime when it names one; for auto, or a search with
        target.runtime unset, every registered runtime that runs on the target's device (and writes
        spec.export's format, when one is asked). A fixed pipeline: the runtime that serves it."""
        target = self.target
        if self.search is None or target.runtime not in (None, runtimes.AUTO):
            return [runtimes.resolve(target.runtime).name]
        return [r.name for r in runtimes.all_runtimes() if target.device in r.devices
                and (self.export is None or runtimes.writes_export(r, self.export.format))]

    @property
    def searches_runtimes(self) -> bool:
        """A search that chooses the runtime (auto, or target.runtime unset with more than one runtime able to
        serve the target)."""
        return self.target.runtime == runtimes.AUTO or len(self.search_runtimes()) > 1

    @property
    def pinned_runtime(self) -> str | None:
        """The runtime target.runtime names (None when it is unset or auto)."""
        return None if self.target.runtime in (None, runtimes.AUTO) else self.target.runtime


CONVERTED_FORMATS = ("keras", "tensorflow", "sklearn")
"""model.format values converted to ONNX on load (io.frameworks)."""


def check_conversion(spec: OptimizationSpec) -> None:
    """techniques: [] is conversion alone (a framework model); a tflite export starts from a Keras or TensorFlow
    model (checked again once an auto-detected format is known)."""
    fmt = spec.model.format
    if spec.conversion_only and fmt is not None and fmt not in CONVERTED_FORMATS:  # auto-detected: at run time
        raise ValueError("techniques: [] converts a model to ONNX and nothing more, which applies to model.format "
                         f"{', '.join(CONVERTED_FORMATS)}, not {fmt} (give at least one technique)")
    if spec.export is not None and spec.export.format == "tflite" and fmt not in (None, "keras", "tensorflow"):
        raise ValueError(f"export tflite is written by the TFLite converter from a keras or tensorflow model, not "
                         f"{fmt}")


def check_gates(spec: OptimizationSpec) -> None:
    """A quality gate belongs to the tasks that measure its metric (maxKLDivergence to text-generation,
    minCosineSimilarity to the output-comparing tasks)."""
    task = tasks.get(spec.model.task)
    set_gates = {k for k, v in spec.gates.model_dump(by_alias=True).items() if v is not None and v is not False}
    quality = {g for t in tasks.all_tasks() for g in t.gates}
    for gate in sorted((set_gates & quality) - task.gates):
        owners = sorted(t.name for t in tasks.all_tasks() if gate in t.gates)
        raise ValueError(f"gates.{gate} applies to task {' or '.join(owners)}; model.task is {task.name} (its "
                         f"quality gates: {', '.join(sorted(task.gates))})")


def check_generation(spec: OptimizationSpec) -> None:
    """A text-generation spec: a Hugging Face folder or GGUF file, served on the CPU by a generative runtime,
    with weightOnly steps only."""
    target = spec.target
    if spec.model.format not in (None, "huggingface", "gguf"):
        raise ValueError(f"model.format {spec.model.format} cannot hold a causal language model (huggingface or "
                         "gguf)")
    if target.device != "cpu":
        raise ValueError("text-generation runs on a cpu target in this version")
    serving = generative.names()
    if target.runtime not in (None, runtimes.AUTO) and target.runtime not in serving:
        raise ValueError(f"target.runtime {target.runtime} does not serve text-generation; the generative "
                         f"runtimes: {', '.join(serving)} (or leave it unset)")
    if spec.export is not None:
        raise ValueError("export is for graph models; a text-generation model is served as its runtime's folder")
    if target.runtime == runtimes.AUTO and spec.search is None:
        raise ValueError("target.runtime auto chooses the runtime in a search; a fixed pipeline names its runtime "
                         f"({' or '.join(serving)})")
    pinned = target.runtime if target.runtime in serving else None
    if target.precision is not None and pinned and target.precision not in generative.get(pinned).precisions:
        raise ValueError(f"target.precision {target.precision}: {pinned} computes in "
                         f"{', '.join(generative.get(pinned).precisions) or 'the graph own types'}")
    candidates = (spec.search.candidates or []) if spec.search else []
    pipelines = ([("techniques", spec.steps())] if spec.search is None else
                 [(f"search.candidates[{i}].techniques", c.steps()) for i, c in enumerate(candidates)])
    for i, c in enumerate(candidates):
        if c.runtime is not None and c.runtime not in serving:
            raise ValueError(f"search.candidates[{i}].runtime {c.runtime} does not serve text-generation (the "
                             f"generative runtimes: {', '.join(serving)})")
        if pinned and c.runtime not in (None, pinned):
            raise ValueError(f"search.candidates[{i}].runtime {c.runtime} differs from target.runtime {pinned}")
    for where, steps in pipelines:
        for j, (name, config) in enumerate(steps):
            if catalog.get(name).stage_of(config) != "generation":
                raise ValueError(f"{where}[{j}] {name} does not apply to a causal language model (text-generation "
                                 "takes weightOnly)")


def _generative_checked(spec: OptimizationSpec) -> bool:
    """True for a text-generation spec (checked here); a graph model's spec may not name what is generative."""
    if tasks.get(spec.model.task).generative:
        check_generation(spec)
        return True
    if spec.target.runtime in generative.names():
        raise ValueError(f"target.runtime {spec.target.runtime} serves text-generation models; model.task is "
                         f"{spec.model.task}")
    if spec.model.format == "gguf":
        raise ValueError("model.format gguf holds a causal language model: set model.task text-generation")
    return False


def check_runtimes(spec: OptimizationSpec) -> None:
    """Every step runs on the runtime that will serve it (a step that writes a graph dialect the runtime does
    not read, such as graphOptimize's fused contrib ops on OpenVINO, is refused), and the runtime suits the
    device, the precision and the export. Asks the runtime registry; names no runtime."""
    check_gates(spec)
    if _generative_checked(spec):
        return
    target = spec.target
    runtime = runtimes.resolve(target.runtime)
    searched, searches = spec.search_runtimes(), spec.searches_runtimes
    if target.runtime == runtimes.AUTO:
        on_device = [r.name for r in runtimes.all_runtimes() if target.device in r.devices]
        if len(on_device) < 2:
            raise ValueError(f"target.runtime auto searches across runtimes, but only {', '.join(on_device)} runs "
                             f"on a {target.device} target")
        if spec.search is None:
            raise ValueError("target.runtime auto chooses the runtime in a search; a fixed pipeline names its "
                             f"runtime ({' or '.join(runtimes.names())})")
    elif target.device not in runtime.devices:
        serve = [r.name for r in runtimes.all_runtimes() if target.device in r.devices]
        raise ValueError(f"target.runtime {runtime.name} does not run on a {target.device} target (a "
                         f"{target.device} target runs {' or '.join(serve)})")
    if target.precision is not None and not searches and not runtime.precisions:
        raise ValueError(f"target.precision is a runtime's inference precision; {runtime.name} runs the graph's "
                         "own types (use the fp16 technique, or a runtime with precisions: "
                         + ", ".join(r.name for r in runtimes.all_runtimes() if r.precisions) + ")")
    candidates = (spec.search.candidates or []) if spec.search else []
    for i, c in enumerate(candidates):
        served_by = runtimes.get(c.serving(target).runtime)
        if c.precision is not None and not served_by.precisions:
            raise ValueError(f"search.candidates[{i}].precision is a runtime's inference precision, but the "
                             f"candidate runs on {served_by.name}, which runs the graph's own types (set its "
                             "runtime)")
    pipelines = ([("techniques", spec.steps(), target.serving())]
                 if spec.search is None else
                 [(f"search.candidates[{i}].techniques", c.steps(), c.serving(target))
                  for i, c in enumerate(candidates)])
    for where, steps, serving in pipelines:
        if not searches and serving.runtime != runtime.name:
            raise ValueError(f"{where.removesuffix('.techniques')}.runtime {serving.runtime} differs from "
                             f"target.runtime {runtime.name} (set target.runtime auto, or leave it unset, to search "
                             "across runtimes)")
        if searches and serving.runtime not in searched:
            raise ValueError(f"{where.removesuffix('.techniques')}.runtime {serving.runtime} cannot serve this "
                             f"target (the runtimes searched: {', '.join(searched)})")
        for i, (name, config) in enumerate(steps):
            if catalog.get(name).stage_of(config) == "generation":
                raise ValueError(f"{where}[{i}] {name} applies to a causal language model (model.task "
                                 "text-generation)")
            dialect = catalog.get(name).writes_of(config)
            if dialect not in runtimes.get(serving.runtime).reads:
                readers = sorted(r.name for r in runtimes.all_runtimes() if dialect in r.reads)
                raise ValueError(f"{where}[{i}] {name} writes a graph only {' or '.join(readers)} runs, "
                                 f"but this pipeline is served by {serving.runtime}")
    if spec.export is not None and not runtimes.writes_export(runtime, spec.export.format) and not searches:
        writers = sorted(r.name for r in runtimes.all_runtimes() if spec.export.format in r.exports)
        raise ValueError(f"export format {spec.export.format} is written by {' or '.join(writers)}; "
                         f"target.runtime is {target.runtime or runtime.name}")


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
