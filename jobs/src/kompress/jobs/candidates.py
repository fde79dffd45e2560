"""Built-in search candidates and their expected gains, assembled from the technique catalog: each technique
contributes its own recipes and its own prior gain per step (`techniques/catalog.py`)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from kompress.jobs.spec import Candidate
from kompress.jobs.techniques import catalog


def default_candidates(fmt: str, metadata: Mapping[str, str], device: str,
                       op_share: Mapping[str, float] | None = None) -> list[Candidate]:
    """Built-in recipes for the model at hand: INT8 variants for every model (FP16 too on a GPU); for Hugging
    Face transformers also layer distillation followed by fused INT8; for ONNX CNN/MLP models QAT. A recipe
    that fails validation is an error here, never silently dropped."""
    return [Candidate.model_validate({"name": name, "techniques": steps})
            for name, steps in catalog.recipes(catalog.ModelTraits(fmt, metadata, device, op_share or {}))]


def expected_gain(candidate: Candidate, objective: str, metadata: Mapping[str, str], device: str,
                  op_share: Mapping[str, float] | None = None) -> float:
    """The product of each step's expected gain (a prior used only to order the trials; measurements
    decide)."""
    traits = catalog.ModelTraits("", metadata, device, op_share or {})
    return float(math.prod(catalog.get(name).expected_gain(config, objective, traits)
                           for name, config in candidate.steps()))
