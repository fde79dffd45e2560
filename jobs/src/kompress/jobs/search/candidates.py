"""Built-in search candidates and their expected gains, assembled from the technique catalog: each technique
contributes its own recipes and its own prior gain per step (`techniques/catalog.py`); the runtime a
candidate is served by (target.runtime, or each candidate's own under `auto`) adds OpenVINO's recipes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kompress.jobs.runtimes.base import Serving, cpu_has_bf16, openvino_installed
from kompress.jobs.spec.document import Candidate
from kompress.jobs.techniques import catalog

BF16_GAIN = 2.0
"""Prior speedup of the convolutions and GEMMs in bf16 on a CPU with AMX or AVX512-BF16 (MiniLM on an AMX
Xeon, the issue's harness: 2.05x the ORT FP32 baseline)."""
OPENVINO_GAIN = 1.05
"""Prior gain of OpenVINO over ONNX Runtime at the same precision (1.09x measured on MiniLM, AMX Xeon)."""


def default_candidates(fmt: str, metadata: Mapping[str, str], device: str,
                       op_share: Mapping[str, float] | None = None, runtime: str = "onnxruntime") -> list[Candidate]:
    """Built-in recipes for the model at hand and the runtime that serves it: for ONNX Runtime, INT8 variants
    for every model (FP16 too on a GPU), for Hugging Face transformers also layer distillation followed by
    fused INT8, for ONNX CNN/MLP models QAT; for OpenVINO, NNCF's INT8 and (on CPUs that compute in bf16)
    bf16 precision; for `auto`, both, plus the original on OpenVINO. A recipe that fails validation is an
    error here, never silently dropped."""
    traits = catalog.ModelTraits(fmt, metadata, device, op_share or {})
    out: list[dict[str, Any]] = []
    if runtime in ("onnxruntime", "auto"):
        pinned = {"runtime": "onnxruntime"} if runtime == "auto" else {}
        out += [{"name": name, "techniques": steps, **pinned} for name, steps in catalog.recipes(traits)]
    # under auto, an install without OpenVINO (the slim image) searches ONNX Runtime's recipes only (the runner
    # says so) rather than spending trials on errors; runtime openvino itself fails at once without it
    if runtime == "openvino" or (runtime == "auto" and openvino_installed()):
        out += _openvino_recipes(traits, pinned={"runtime": "openvino"} if runtime == "auto" else {})
    return [Candidate.model_validate(c) for c in out]


def _openvino_recipes(model: catalog.ModelTraits, pinned: dict[str, str]) -> list[dict[str, Any]]:
    """NNCF static INT8 where the profile leaves int8 kernels something to do, bf16 on CPUs that compute in
    it, and (choosing between runtimes) the original on OpenVINO at f32."""
    out: list[dict[str, Any]] = []
    heavy = model.share(catalog.CONV_OPS | catalog.MATMUL_OPS)
    if not model.op_share or heavy >= catalog.MIN_SHARE:
        out.append({"name": "openvino-int8", "techniques": [{"quantize": {"method": "static", "backend": "nncf"}}],
                    **pinned})
        if cpu_has_bf16():
            out.append({"name": "openvino-bf16", "techniques": [], "precision": "bf16", "runtime": "openvino"})
    if pinned:
        out.append({"name": "openvino-f32", "techniques": [], "precision": "f32", "runtime": "openvino"})
    return out


def expected_gain(candidate: Candidate, objective: str, metadata: Mapping[str, str], device: str,
                  op_share: Mapping[str, float] | None = None, serving: Serving | None = None) -> float:
    """The product of each step's expected gain and the runtime's (priors used only to order the trials;
    measurements decide)."""
    traits = catalog.ModelTraits("", metadata, device, op_share or {})
    gain = math.prod(catalog.get(name).expected_gain(config, objective, traits) for name, config in candidate.steps())
    if serving is not None and serving.runtime == "openvino" and objective != "size":
        if serving.precision in ("bf16", "f16") and not any(name == "quantize" for name, _ in candidate.steps()):
            heavy = traits.share(catalog.CONV_OPS | catalog.MATMUL_OPS) if traits.op_share else 0.9
            gain *= catalog.amdahl([(heavy, BF16_GAIN)])
        gain *= OPENVINO_GAIN
    return float(gain)
