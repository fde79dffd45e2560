"""The configuration of every technique: what a `techniques[]` item (or a search candidate's step) holds.

Light on purpose (pydantic and the shared training settings only): the spec, the CRD generator and the search
read these without loading any implementation. Field docstrings are the CRD's descriptions."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from kompress.jobs.spec.base import SpecModel
from kompress.jobs.spec.names import QuantizerName

__all__ = ["DistillConfig", "DistillTraining", "Fp16Config", "GraphOptimizeConfig", "PruneConfig", "QATConfig",
           "QuantizeConfig", "StudentSpec", "TrainingConfig", "WeightOnlyConfig"]


# ---- shared by the techniques that train ----

class TrainingConfig(SpecModel):
    """Shared training settings of techniques that train (recovery fine-tuning, distillation, QAT)."""

    epochs: Annotated[int, Field(ge=0, le=1000)] = 2
    """Passes over the training data (0 skips training)."""
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 32
    """Samples per optimizer step."""
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 5e-5
    """Peak learning rate (AdamW, linear warm-up over the first 5% of steps, then linear decay)."""
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    """AdamW weight decay."""
    max_samples: Annotated[int, Field(ge=1)] | None = None
    """Use at most this many training samples (default: all)."""


# ---- distill ----

class StudentSpec(SpecModel):
    """The student to train: exactly one of `layers` (derived from the teacher) or `uri` (user-supplied)."""

    # the same rule for the API server (the CRD generator copies x-kubernetes-validations from the schema)
    model_config = SpecModel.model_config | {"json_schema_extra": {"x-kubernetes-validations": [{
        "rule": "has(self.layers) != has(self.uri)",
        "message": "set exactly one of student.layers or student.uri"}]}}

    layers: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Derive the student from a Hugging Face transformer teacher: keep this many of its encoder layers, evenly
    spaced from the first to the last (DistilBERT's choice: 12 -> 6 keeps 0,2,4,7,9,11; 6 -> 3 keeps 0,2,5),
    with the teacher's weights as the starting point. Must be fewer than the teacher's layers."""
    uri: Annotated[str, Field(min_length=1)] | None = None
    """A user-supplied student architecture (its weights are the starting point): a Hugging Face model folder
    (safetensors) or an .onnx file, as a local path, package:// or s3:// URI. It must take the teacher's inputs
    and produce an output of the teacher's shape."""
    format: Literal["onnx", "huggingface"] | None = None
    """Format of `uri` (detected from it when omitted)."""

    @model_validator(mode="after")
    def exactly_one_source(self) -> StudentSpec:
        given = [name for name in ("layers", "uri") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of student.layers (a copy of the teacher with fewer layers) or "
                             f"student.uri (your own student model); got {', '.join(given) or 'neither'}")
        if self.format is not None and self.uri is None:
            raise ValueError("student.format applies to student.uri only")
        return self


class DistillTraining(TrainingConfig):
    """Training settings, with defaults that suit distilling a small transformer on a CPU."""

    epochs: Annotated[int, Field(ge=0, le=1000)] = 3
    """Passes over the transfer data (0 keeps the untrained student)."""
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 2e-4
    """Peak learning rate (AdamW, linear warm-up over the first 5% of steps, then linear decay). Higher than
    fine-tuning's usual 5e-5: the student has to move further from where it starts."""


class DistillConfig(SpecModel):
    student: StudentSpec
    """The student model (derived from the teacher, or user-supplied)."""
    temperature: Annotated[float, Field(gt=0, le=100)] = 4.0
    """Softmax temperature of the soft targets (classification); higher spreads the teacher's probabilities."""
    label_weight: Annotated[float, Field(ge=0, le=1)] = 0.5
    """Weight of the cross-entropy on labels against the soft targets, when the data has labels
    (classification only)."""
    hidden_states: bool = False
    """Also match the hidden states of mapped teacher/student layers (normalized mean squared error; Hugging
    Face transformer students of the teacher's hidden size only). Off by default: distilling MiniLM to 3 layers
    for one epoch, it changed the student's cosine to the teacher by 0.001."""
    training: DistillTraining = DistillTraining()
    """Training settings."""


# ---- fp16 ----

class Fp16Config(SpecModel):
    keep_io_types: bool = True
    """Keep float32 inputs and outputs so callers need no change."""
    op_block_list: list[str] = []
    """Operator types kept in float32 (added to ONNX Runtime's default block list)."""


# ---- graphOptimize ----

class GraphOptimizeConfig(SpecModel):
    model_type: Literal["auto", "bert", "generic"] = "auto"
    """bert: transformer fusions; generic: ONNX Runtime's offline graph optimizations; auto: bert when the
    model came from a BERT-like Hugging Face architecture, else generic."""
    num_heads: Annotated[int, Field(ge=0)] = 0
    """Attention heads (0: read from the model's Hugging Face config)."""
    hidden_size: Annotated[int, Field(ge=0)] = 0
    """Hidden size (0: read from the model's Hugging Face config)."""
    level: Literal["basic", "extended"] = "extended"
    """Generic optimization level (layout-specific 'all' optimizations are left to the serving runtime)."""
    gelu_approximation: bool = False
    """bert: compute GELU with its tanh approximation (FastGelu), a faster kernel; each activation moves by at
    most about 5e-4 (MiniLM embeddings: cosine 0.99999 to exact GELU)."""
    skip_layer_norm: Literal["auto", "fused", "split"] = "auto"
    """bert: keep the fused SkipLayerNormalization op, or split it into Sum + LayerNormalization. auto: on a
    CPU target, time both forms on this machine at the model's hidden size and keep the faster (the fused CPU
    kernel of onnxruntime 1.32 timed 1.7-5x slower here); fused on GPU."""


# ---- prune ----

class PruneConfig(SpecModel):
    method: Literal["magnitude", "structured"] = "magnitude"
    """magnitude: zero the weights with the smallest absolute values (unstructured; speeds up only sparse
    runtimes); structured: remove whole channels, FFN neurons or attention heads (smaller, faster model)."""
    sparsity: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    """Fraction removed, in [0, 1): of the weights (magnitude) or of the channels/neurons/heads of every
    pruned layer (structured)."""
    scope: Literal["global", "layer"] = "layer"
    """magnitude only. layer: the same sparsity in every weight tensor; global: one threshold across all."""
    min_elements: Annotated[int, Field(ge=1)] = 1024
    """magnitude only. Tensors smaller than this (biases, norms) are left dense."""
    target: Literal["auto", "channels", "ffn", "heads"] = "auto"
    """structured only. channels: conv channels / hidden units of conv and MLP models (the output layer is
    kept); ffn: feed-forward neurons of transformer layers; heads: attention heads; auto: ffn for Hugging Face
    transformers, channels otherwise."""
    round_to: Annotated[int, Field(ge=1, le=1024)] = 8
    """structured only. Kept channels and FFN neurons are a multiple of this, so matrix kernels stay
    efficient (heads are always whole)."""
    importance: Literal["activation", "magnitude"] = "activation"
    """structured only. activation: rank structures by the output energy they contribute, measured on up to
    256 training rows; magnitude: by weight norms (no data needed)."""
    finetune: TrainingConfig | None = None
    """Recovery fine-tuning, distilled from the unpruned model (with labels when the training data has
    them). Defaults: 3 epochs, batch 32, learning rate 1e-3 for ONNX-sourced conv/MLP models; 1 epoch, batch
    16, 5e-5 for Hugging Face transformers; fields set here override them. structured: omitted means the
    default, `{epochs: 0}` disables it. magnitude: set it (even `{}`) to prune and fine-tune in PyTorch;
    omitted, pruning works on the ONNX graph with no training."""

    @model_validator(mode="after")
    def _fields_fit_method(self) -> PruneConfig:
        # a field of the other method would be silently ignored: say so instead
        if self.method == "magnitude":
            wrong = [a for a, v, d in (("target", self.target, "auto"), ("roundTo", self.round_to, 8),
                                       ("importance", self.importance, "activation")) if v != d]
        else:
            wrong = [a for a, v, d in (("scope", self.scope, "layer"), ("minElements", self.min_elements, 1024))
                     if v != d]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} do{'es' if len(wrong) == 1 else ''} not apply to "
                             f"method {self.method}")
        return self


# ---- qat ----

class QATConfig(TrainingConfig):
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 1e-4
    """Peak learning rate (AdamW, linear warm-up over the first 5% of steps, then linear decay); QAT starts
    from a trained model, so it stays small."""
    freeze_observers_after: Annotated[float, Field(ge=0, le=1)] = 0.5
    """Fraction of the optimizer steps after which activation ranges and batch-norm statistics stop updating,
    so that the last steps fit the weights to fixed quantization grids (1 never freezes them)."""
    calibration_samples: Annotated[int, Field(ge=1, le=100_000)] = 256
    """Calibration rows run through the model before training to initialise the quantization ranges."""
    temperature: Annotated[float, Field(gt=0, le=100)] = 2.0
    """Softmax temperature of the distillation from the float model (classifiers)."""
    label_weight: Annotated[float, Field(ge=0, le=1)] = 0.5
    """Weight of the labels' cross-entropy against distillation from the float model, when the training rows
    have integer labels (otherwise the loss is distillation only)."""


# ---- quantize ----

class QuantizeConfig(SpecModel):
    method: Literal["dynamic", "static", "weightOnly"] = "dynamic"
    """dynamic: weights INT8 offline, activations quantized at run time; static: both offline, calibrated on
    the data (QDQ); weightOnly: INT4 weights for MatMul (MatMulNBits), activations stay float."""
    backend: QuantizerName = "auto"
    """Who quantizes: onnxruntime (ONNX Runtime's quantizer), nncf (OpenVINO NNCF's post-training
    quantization, static only: QDQ placed where OpenVINO fuses it into int8 kernels, with its transformer
    preset for Hugging Face transformers); auto: nncf for a model served by OpenVINO, else onnxruntime."""
    weights: Literal["int8", "uint8", "int4"] = "int8"
    """Weight type (int4 only with weightOnly)."""
    activations: Literal["int8", "uint8"] = "uint8"
    """Activation type for static quantization (dynamic quantization always uses uint8 activations)."""
    per_channel: bool = True
    """Per-channel weight scales: slower to quantize, far better fidelity on transformers."""
    reduce_range: bool = False
    """7-bit weights, for CPUs without VNNI where 8-bit multiplies can saturate."""
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    """Calibration method for static quantization."""
    format: Literal["qdq", "qoperator"] = "qdq"
    """Graph format of static quantization: qdq (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses
    into int8 kernels) or qoperator (QLinearConv, QLinearMatMul...). A graph ONNX Runtime refuses to load is
    written again in the other format, and the report says so."""
    percentile: Annotated[float, Field(gt=90, le=100)] = 99.999
    """Percentile for percentile calibration."""
    block_size: Annotated[int, Field(ge=16, le=256)] = 32
    """Block size for weight-only INT4."""
    op_types: list[str] = []
    """Only quantize these operator types (default: all the quantizer supports)."""
    exclude_nodes: list[str] = []
    """Node names left in float."""

    @model_validator(mode="after")
    def consistent(self) -> QuantizeConfig:
        if self.backend == "nncf" and self.method != "static":
            raise ValueError(f"backend nncf quantizes statically (method: static), got method {self.method}")
        if (self.weights == "int4") != (self.method == "weightOnly"):
            raise ValueError("weights: int4 goes with method: weightOnly, and weightOnly quantizes to int4")
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"blockSize must be a power of two, got {self.block_size}")
        return self


# ---- weightOnly (text-generation) ----

class WeightOnlyConfig(SpecModel):
    """Weight-only quantization of a causal language model, applied by the generative runtime that serves it
    (ONNX Runtime GenAI's builder: MatMulNBits; OpenVINO GenAI: NNCF weight compression)."""

    bits: Literal[4, 8] = 4
    """Bits per weight of the decoder's linear layers."""
    group_size: Literal[16, 32, 64, 128, 256] | None = 32
    """Weights sharing one scale along the input dimension (null: one scale per output channel). A group size
    that does not divide a layer's input size is refused by the runtime."""
    symmetric: bool = True
    """Symmetric (no zero point) or asymmetric (a zero point per group: finer, slightly slower)."""
    algorithm: Literal["rtn", "k_quant", "awq", "scale_estimation", "awq+se"] = "rtn"
    """rtn: round to nearest (data-free); k_quant: ONNX Runtime's k-quant search of scales (data-free); awq,
    scale_estimation, awq+se: NNCF's data-aware algorithms on the calibration text (OpenVINO GenAI)."""
    ratio: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Share of the linear layers at `bits`; the rest stay at 8 bits, chosen by the runtime's quantizer's
    sensitivity metric (NNCF mixed precision; OpenVINO GenAI)."""
    int8_lm_head: bool = False
    """Keep the output projection (and an embedding tied to it) at 8 bits: on small models with a large
    vocabulary it holds a fifth of the weights and most of the quantization loss."""
    keep_sensitive: Annotated[int, Field(ge=0, le=1000)] = 0
    """Keep this many of the most sensitive linear layers at 8 bits (4-bit recipes), ranked by measured
    sensitivity: each layer's expected output error under this recipe's quantization, weighted by its input
    activations on the calibration text. (ONNX Runtime GenAI fuses q/k/v: keeping one keeps the three.)"""

