"""Built-in search candidates and their expected gains, assembled from the technique catalog and the
runtimes: each technique contributes its own recipes and its own prior gain per step
(`techniques/catalog.py`); each runtime searched adds its own recipes and its prior gain over the reference
runtime (`runtimes/`). Which runtimes are searched: the target's, or under `auto` every installed runtime
that runs on the target's device."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kompress.jobs.runtimes import registry as runtimes
from kompress.jobs.runtimes.base import Runtime
from kompress.jobs.runtimes.registry import Serving
from kompress.jobs.spec.document import Candidate, OptimizationSpec
from kompress.jobs.spec.sections import TargetSpec
from kompress.jobs.techniques import catalog
from kompress.jobs.techniques.traits import ModelTraits


def searched_runtimes(spec: OptimizationSpec) -> list[Runtime]:
    """The runtimes a search tries: the one target.runtime names, or (auto, or unset) every installed one
    that can serve the target (an install without a runtime's extra, such as the slim image without
    OpenVINO, searches the others rather than spending trials on errors; the runner says so)."""
    chosen = [runtimes.get(name) for name in spec.search_runtimes()]
    if not spec.searches_runtimes:
        return chosen
    return [r for r in chosen if r.reference or r.installed()]


def default_candidates(fmt: str, metadata: Mapping[str, str], target: TargetSpec,
                       op_share: Mapping[str, float] | None = None,
                       searched: list[Runtime] | None = None) -> list[Candidate]:
    """Built-in recipes for the model at hand and the runtimes searched: the catalog's recipes (INT8 variants
    for every model, FP16 too on a GPU, for Hugging Face transformers also layer distillation followed by
    fused INT8, for ONNX CNN/MLP models QAT) on runtimes that take them, and each runtime's own (OpenVINO:
    NNCF's INT8, bf16 on CPUs that compute in it, the original at f32 when choosing between runtimes). A
    recipe that fails validation is an error here, never silently dropped. `searched`: the runtimes the
    search chooses among (default: the one the target names, or the reference runtime)."""
    traits = ModelTraits(fmt, metadata, target.device, op_share or {})
    searched = searched or [runtimes.resolve(target.runtime)]
    pinned = len(searched) > 1 or target.runtime == runtimes.AUTO
    out: list[dict[str, Any]] = []
    for runtime in searched:
        on = {"runtime": runtime.name} if pinned else {}
        if runtime.catalog_recipes:
            out += [{"name": name, "techniques": steps, **on} for name, steps in catalog.recipes(traits)]
        out += runtime.search_recipes(traits, pinned=pinned)
    return [Candidate.model_validate(c) for c in out]


def expected_gain(candidate: Candidate, objective: str, metadata: Mapping[str, str], device: str,
                  op_share: Mapping[str, float] | None = None, serving: Serving | None = None) -> float:
    """The product of each step's expected gain and the runtime's (priors used only to order the trials;
    measurements decide)."""
    traits = ModelTraits("", metadata, device, op_share or {})
    steps = candidate.steps()
    gain = math.prod(catalog.get(name).expected_gain(config, objective, traits) for name, config in steps)
    if serving is not None:
        gain *= serving.engine.expected_gain(serving.precision, any(name == "quantize" for name, _ in steps),
                                             objective, traits)
    return float(gain)
