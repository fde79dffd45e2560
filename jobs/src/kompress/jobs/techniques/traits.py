"""What the built-in search candidates and their expected gains depend on: the model's traits (format,
load-time metadata, target device, where the baseline's time goes) and the op-type families and priors that
turn a profile into an expected gain (Amdahl). A leaf: the catalog and the runtimes' own recipes read it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

BERT_LIKE = frozenset({"albert", "bert", "camembert", "distilbert", "electra", "mpnet", "roberta", "xlm-roberta"})
"""Hugging Face model types whose encoder layout ONNX Runtime's "bert" fusions understand: graphOptimize's
`modelType: auto` fuses them, and the built-in candidates treat them as transformers."""


@dataclass(frozen=True)
class ModelTraits:
    """What the built-in candidates and their expected gains depend on: the model's format and load-time
    metadata, the target device, and where the baseline's time goes (op type -> share of node time, from
    ONNX Runtime's profiler; empty when not profiled)."""

    format: str
    metadata: Mapping[str, str]
    device: str
    op_share: Mapping[str, float] = field(default_factory=dict)

    def share(self, ops: frozenset[str]) -> float:
        return sum(s for op, s in self.op_share.items() if op in ops)

    @property
    def transformer(self) -> bool:
        return self.metadata.get("hf.model_type", "") in BERT_LIKE

    @property
    def hidden_layers(self) -> int:
        return int(self.metadata.get("hf.num_hidden_layers", 0) or 0)



CONV_OPS = frozenset({"Conv", "FusedConv", "ConvTranspose"})
MATMUL_OPS = frozenset({"MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Attention", "MultiHeadAttention"})
QUANTIZABLE_HEAVY = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
"""The compute-heavy op types ONNX Runtime's static quantizer turns into int8 kernels."""
INT8_KERNEL_GAIN = 2.0
"""Prior speedup of an op ONNX Runtime runs on int8 kernels (about 2x FP32 on VNNI/AMX CPUs; not measured
per machine: the trials measure)."""
CONV_INTEGER_GAIN = 0.4
"""Dynamic INT8 turns Conv into ConvInteger plus run-time activation quantization: 0.2-0.5x
(measured by the design notes on this kind of CPU; a prior here, not re-measured per machine)."""
PER_TENSOR_EDGE = 1.05
"""One scale per tensor is a little cheaper to apply than one per channel (the prior's 2.1 vs 2.0)."""
MIN_SHARE = 0.05
"""Below this share of the baseline's time in the ops a recipe changes, it is not worth a trial (Amdahl: at
most ~5% faster). Above it, the candidates are ranked by expected gain, so the small ones run last. (At 0.1,
the PP-OCR recognizer's GEMMs, ~10% of its time, fell on either side between runs, and with them its only
promotable recipe, dynamic INT8 at 1.10x.)"""


def amdahl(parts: list[tuple[float, float]]) -> float:
    """Whole-model gain when each (share of time, speedup of that share) changes and the rest stays."""
    changed = sum(share for share, _ in parts)
    return 1.0 / max(1e-6, (1.0 - changed) + sum(share / gain for share, gain in parts))
