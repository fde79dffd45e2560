"""The technique catalog: one entry per technique with what the spec, the CRD and the search need to know
about it (name, config, summary, stage, expected gain, built-in search candidates) and where its
implementation is (a module and a function, imported only when the technique is applied).

Light on purpose: this module and `configs.py` import no ONNX, ONNX Runtime or PyTorch, and no implementation
module, so reading a spec or generating the CRD loads none of them. Adding a technique takes its config class
(`configs.py`), an implementation module with one function `(model, config, ctx) -> StepResult`, and one entry
in `_CATALOG` below (plus its place in `_CANDIDATE_ORDER`).

A technique works in one of two stages, which may depend on its config: "onnx" techniques take and return an
ONNX file; "torch" techniques (the ones that train) take and return a `TorchModel`. The pipeline converts
between the two, so torch steps come first in a pipeline (the spec checks the order).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kompress.jobs.runtimes.base import ORT_CONTRIB, STANDARD_ONNX
from kompress.jobs.spec.base import SpecModel
from kompress.jobs.techniques.configs import (
    DistillConfig,
    Fp16Config,
    GraphOptimizeConfig,
    PruneConfig,
    QATConfig,
    QuantizeConfig,
    WeightOnlyConfig,
)
from kompress.jobs.techniques.traits import (
    CONV_INTEGER_GAIN,
    CONV_OPS,
    INT8_KERNEL_GAIN,
    MATMUL_OPS,
    MIN_SHARE,
    PER_TENSOR_EDGE,
    QUANTIZABLE_HEAVY,
    ModelTraits,
    amdahl,
)

if TYPE_CHECKING:
    from kompress.jobs.techniques.base import StepResult
    from kompress.jobs.techniques.context import GenerationContext, StepContext

Stage = Literal["onnx", "torch", "generation"]
"""onnx and torch steps run in the pipeline; generation steps (text-generation) are applied by a generative
runtime to its exported model folder."""
GENERATIVE = "generative"
"""The dialect a generation step writes: a generative runtime's own folder, read by that runtime only."""
Step = dict[str, dict[str, Any]]
"""One `techniques[]` item as the spec writes it: {technique name: config fields}."""
Recipe = tuple[str, list[Step]]
"""A built-in search candidate: its name and its steps."""
ApplyFn = Callable[[Any, Any, Any], "StepResult"]
"""(model, config, context) -> result: a StepContext for onnx/torch steps, a GenerationContext for generation
steps."""
GainFn = Callable[[Any, str, "ModelTraits"], float]
"""(config, objective, the model's traits) -> expected gain factor of one step."""


def _no_candidates(model: ModelTraits) -> list[Recipe]:
    return []


@dataclass(frozen=True)
class Technique:
    name: str
    """The key of a `techniques[]` item."""
    config: type[SpecModel]
    summary: str
    """One line; the CRD's description of the technique's key."""
    module: str
    """The implementation's module, imported on first use."""
    function: str
    """The implementation's apply function in `module`: (model, config, ctx) -> StepResult."""
    expected_gain: GainFn
    """Rough prior gain of one step for a search objective, used only to order the trials (measurements
    decide)."""
    candidates: Callable[[ModelTraits], list[Recipe]] = _no_candidates
    """The built-in search candidates this technique contributes for a model."""
    stage: Stage | Callable[[Any], Stage] = "onnx"
    last_torch_step: bool = False
    """True when no torch step may follow (e.g. QAT leaves a fake-quantized module that must be exported)."""
    writes: str | Callable[[Any], str] = STANDARD_ONNX
    """The graph dialect this step writes: a runtime serves the result only if it reads that dialect
    (OpenVINO reads standard ONNX, QDQ and dynamic INT8, but not ONNX Runtime's contrib ops)."""

    def stage_of(self, config: Any) -> Stage:
        return self.stage(config) if callable(self.stage) else self.stage

    def writes_of(self, config: Any) -> str:
        return self.writes(config) if callable(self.writes) else self.writes

    def load(self) -> ApplyFn:
        """The implementation (imports its module, and with it the heavy libraries it needs)."""
        fn: ApplyFn = getattr(importlib.import_module(self.module), self.function)
        return fn

    def apply(self, model: Any, config: SpecModel, ctx: StepContext | GenerationContext) -> StepResult:
        if not isinstance(config, self.config):
            raise TypeError(f"technique {self.name} takes a {self.config.__name__}, got {type(config).__name__}")
        return self.load()(model, config, ctx)


# ---- shared pieces of the built-in candidates ----

_INT8_DYNAMIC: Step = {"quantize": {"method": "dynamic", "perChannel": True}}
_INT8_STATIC: Step = {"quantize": {"method": "static", "perChannel": True}}


def _fuse(model: ModelTraits) -> list[Step]:
    """graphOptimize's transformer fusions, which every ONNX tail of a transformer candidate starts with (fused
    Attention becomes QAttention when quantized: that is where CPU speed is won)."""
    return [{"graphOptimize": {"geluApproximation": True}}] if model.transformer else []


# ---- distill ----

def _distill_gain(config: DistillConfig, objective: str, model: ModelTraits) -> float:
    layers = model.hidden_layers
    kept = config.student.layers
    return layers / kept if layers and kept else 1.5


_SHARED_LAYERS = frozenset({"albert"})
"""Model types whose depth reuses one shared layer (there is no layer list to keep fewer of)."""


def _distill_candidates(model: ModelTraits) -> list[Recipe]:
    """Hugging Face transformers: half of their layers, then fused INT8."""
    layers = model.hidden_layers
    if (model.format != "huggingface" or not model.transformer or layers < 4
            or model.metadata.get("hf.model_type") in _SHARED_LAYERS):
        return []
    return [(f"distilled-{layers // 2}-layers+int8",
             [{"distill": {"student": {"layers": layers // 2}}}, *_fuse(model), _INT8_DYNAMIC])]


# ---- fp16 ----

def _fp16_gain(config: Fp16Config, objective: str, model: ModelTraits) -> float:
    return 2.0 if objective == "size" or model.device == "gpu" else 0.8


def _fp16_candidates(model: ModelTraits) -> list[Recipe]:
    """GPU targets only (FP16 is slower than FP32 on most CPUs)."""
    return [("fp16", [*_fuse(model), {"fp16": {}}])] if model.device == "gpu" else []


# ---- graphOptimize ----

def _graph_optimize_gain(config: GraphOptimizeConfig, objective: str, model: ModelTraits) -> float:
    return 1.0 if objective == "size" else 1.1


# ---- prune ----

def _prune_stage(config: PruneConfig) -> Stage:
    """Structured pruning and fine-tuned magnitude pruning train in PyTorch; plain magnitude pruning edits
    the ONNX graph."""
    return "torch" if config.method == "structured" or config.finetune is not None else "onnx"


def _prune_gain(config: PruneConfig, objective: str, model: ModelTraits) -> float:
    if config.method != "structured":
        return 1.0
    # FFN neurons/channels carry most but not all of the compute
    return 1.0 / max(0.05, 1.0 - 0.7 * config.sparsity)


# No built-in candidates: the recipes the search once listed ("ffn-pruned-25%+int8", "ffn-pruned-50%+int8",
# "channels-pruned-50%+int8-static") never ran, because '%' fails Candidate's name pattern and the candidate was
# dropped without a word. Adding them (under valid names) adds pruning trials with recovery training to every
# default search: a behaviour change, left for a deliberate decision.


# ---- qat ----

def _qat_gain(config: QATConfig, objective: str, model: ModelTraits) -> float:
    """Like static INT8 (QAT exports QDQ that runs on the same int8 kernels), from the profile when there is one."""
    if objective == "size":
        return 4.0
    if not model.op_share:
        return 2.0
    return amdahl([(model.share(CONV_OPS | MATMUL_OPS), INT8_KERNEL_GAIN)])


def _qat_candidates(model: ModelTraits) -> list[Recipe]:
    """CNN/MLP models given as ONNX or torch.export (Hugging Face transformers cannot be FX-traced), when
    the profile leaves int8 kernels something to do."""
    if model.format not in ("onnx", "torch-export"):
        return []
    if model.op_share and model.share(CONV_OPS | MATMUL_OPS) < MIN_SHARE:
        return []
    return [("qat-int8", [{"qat": {}}])]


# ---- quantize ----

def _quantize_gain(config: QuantizeConfig, objective: str, model: ModelTraits) -> float:
    if config.method == "weightOnly":
        return 6.0 if objective == "size" else 1.2
    if objective == "size":
        return 4.0
    if not model.op_share:  # not profiled: the old priors
        return 2.0 if config.per_channel else 2.1
    ops = set(config.op_types) if config.op_types else None
    matmul = model.share(frozenset(o for o in MATMUL_OPS if ops is None or o in ops))
    conv = model.share(frozenset(o for o in CONV_OPS if ops is None or o in ops))
    conv_gain = INT8_KERNEL_GAIN if config.method == "static" else CONV_INTEGER_GAIN
    per_tensor = 1.0 if config.per_channel else PER_TENSOR_EDGE
    return amdahl([(matmul, INT8_KERNEL_GAIN * per_tensor), (conv, conv_gain * per_tensor)])


def _quantize_writes(config: QuantizeConfig) -> str:
    """INT4 weight-only writes MatMulNBits, an ONNX Runtime contrib op; INT8 (QDQ, QOperator, dynamic) is
    standard ONNX that OpenVINO reads too."""
    return ORT_CONTRIB if config.method == "weightOnly" else STANDARD_ONNX


def _quantize_candidates(model: ModelTraits) -> list[Recipe]:
    """INT8 variants chosen from the baseline's profile when there is one: dynamic INT8 only on the GEMMs
    (never Conv, whose ConvInteger form is slower on CPUs) and only when they hold a real share of the time;
    for conv-heavy models static INT8 of the convolutions and GEMMs alone (QOperator) beside static INT8 of
    every op (QDQ). Without a profile: the three generic variants."""
    fuse = _fuse(model)
    if not model.op_share or model.device != "cpu":
        return [("int8-dynamic", [*fuse, _INT8_DYNAMIC]),
                ("int8-dynamic-per-tensor", [*fuse, {"quantize": {"method": "dynamic", "perChannel": False}}]),
                ("int8-static", [_INT8_STATIC])]
    conv, matmul = model.share(CONV_OPS), model.share(MATMUL_OPS)
    gemm_only = {"opTypes": ["MatMul", "Gemm", "Attention"]} if conv > 0 else {}
    out: list[Recipe] = []
    if matmul >= MIN_SHARE:
        out += [("int8-dynamic", [*fuse, {"quantize": {"method": "dynamic", "perChannel": True, **gemm_only}}]),
                ("int8-dynamic-per-tensor",
                 [*fuse, {"quantize": {"method": "dynamic", "perChannel": False, **gemm_only}}])]
    if conv >= MIN_SHARE:
        # only the convolutions and GEMMs, in QOperator form: ONNX Runtime fuses a float Conv with the
        # Add/Mul/activation after it, while quantizing those gives each its own QLinearAdd/QLinearMul kernel
        # (measured on the PP-OCR models, bench/op_profile.py: the quantized elementwise ops cost more than the
        # int8 convs saved; the all-ops QOperator variant was the slowest of the three on every one of them)
        heavy = sorted({op.removeprefix("Fused") for op in model.op_share
                        if op in CONV_OPS | MATMUL_OPS} & QUANTIZABLE_HEAVY)
        out.append(("int8-static-conv", [{"quantize": {"method": "static", "perChannel": True, "format": "qoperator",
                                                       "opTypes": heavy}}]))
    if conv + matmul >= MIN_SHARE:
        out.append(("int8-static", [_INT8_STATIC]))
    return out


def _weight_only_gain(config: WeightOnlyConfig, objective: str, model: ModelTraits) -> float:
    """Decode is bound by reading the weights: about 32/bits less to read, minus the dequantization's cost."""
    return {4: 3.0, 8: 2.0}[config.bits] * (0.9 if config.keep_sensitive or config.ratio < 1 else 1.0)


_PACKAGE = "kompress.jobs.techniques"
_CATALOG: dict[str, Technique] = {t.name: t for t in (
    Technique("distill", DistillConfig,
              "Knowledge distillation into a smaller student (fewer layers of the teacher, or your own model).",
              f"{_PACKAGE}.distill", "distill", _distill_gain, _distill_candidates, stage="torch"),
    Technique("fp16", Fp16Config, "Convert weights and compute to float16.",
              f"{_PACKAGE}.fp16", "fp16", _fp16_gain, _fp16_candidates),
    Technique("graphOptimize", GraphOptimizeConfig, "ONNX Runtime graph optimization and transformer fusion.",
              f"{_PACKAGE}.graph_optimize", "graph_optimize", _graph_optimize_gain, writes=ORT_CONTRIB),
    Technique("prune", PruneConfig, "Magnitude (unstructured) or structured pruning (channels, FFN neurons, "
              "attention heads), with optional recovery fine-tuning.",
              f"{_PACKAGE}.prune", "prune", _prune_gain, stage=_prune_stage),
    Technique("qat", QATConfig, "Quantization-aware training to an INT8 QDQ model (FX-traceable CNN/MLP models).",
              f"{_PACKAGE}.qat", "qat", _qat_gain, _qat_candidates, stage="torch", last_torch_step=True),
    Technique("quantize", QuantizeConfig, "INT8/INT4 quantization with ONNX Runtime's quantizer or NNCF.",
              f"{_PACKAGE}.quantize", "quantize", _quantize_gain, _quantize_candidates,
              writes=_quantize_writes),
    Technique("weightOnly", WeightOnlyConfig, "Weight-only INT4/INT8 quantization of a causal language model "
              "(text-generation), by the generative runtime that serves it.",
              f"{_PACKAGE}.weight_only", "weight_only", _weight_only_gain, stage="generation", writes=GENERATIVE),
)}

_CANDIDATE_ORDER = ("quantize", "fp16", "prune", "distill", "qat", "graphOptimize", "weightOnly")
"""The order built-in candidates are listed in (the search runs them by expected gain; this breaks ties)."""
assert sorted(_CANDIDATE_ORDER) == sorted(_CATALOG), "every technique has a place in _CANDIDATE_ORDER"


def get(name: str) -> Technique:
    return _CATALOG[name]


def names() -> list[str]:
    return list(_CATALOG)


def all_techniques() -> list[Technique]:
    return list(_CATALOG.values())


def recipes(model: ModelTraits) -> list[Recipe]:
    """The built-in search candidates for a model, as each technique contributes them (steps as the spec
    writes them; `kompress.jobs.search.candidates` validates them into `Candidate`s)."""
    return copy.deepcopy([r for name in _CANDIDATE_ORDER for r in _CATALOG[name].candidates(model)])
