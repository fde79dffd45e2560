"""Generative runtimes: what a runtime that serves a causal language model is to kompress (ONNX Runtime GenAI,
OpenVINO GenAI). A generative runtime exports a Hugging Face causal-LM folder to the folder its server reads,
applies weight-only quantization recipes (`WeightRecipe`), and opens a `GenerativeSession` that returns
next-token logits for given token ids (quality) and generates greedily with timings (speed). Light on purpose:
each runtime module imports its library inside its functions. The built-ins are registered in
`runtimes/genai_registry.py`; a plugin registers its own there."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from kompress.jobs.errors import InvalidInputError


@dataclass(frozen=True)
class WeightRecipe:
    """A weight-only quantization recipe, runtime-neutral: each runtime says which algorithms it offers and
    translates the rest into its own options."""

    bits: int
    """4 or 8: the body's weights."""
    group_size: int | None = 32
    """Weights per scale along the input dimension (None: one scale per output channel)."""
    symmetric: bool = True
    algorithm: str = "rtn"
    """rtn (round to nearest), k_quant (ONNX Runtime's k-quant search), awq, scale_estimation, awq+se (NNCF,
    data-aware), hqq."""
    ratio: float = 1.0
    """Share of the body's weights at `bits`; the rest at 8 bits (NNCF's mixed precision, chosen by its own
    sensitivity metric)."""
    int8_lm_head: bool = False
    """The output projection (and a tied embedding) at 8 bits instead of `bits`."""
    keep: tuple[str, ...] = ()
    """Weights kept at 8 bits, chosen by measured sensitivity (Hugging Face parameter names without
    `.weight`, e.g. model.layers.3.mlp.down_proj)."""

    @property
    def data_aware(self) -> bool:
        return self.algorithm in ("awq", "scale_estimation", "awq+se", "gptq") or self.ratio < 1.0

    @property
    def label(self) -> str:
        group = f"g{self.group_size}" if self.group_size else "per-channel"
        parts = [f"int{self.bits}", "sym" if self.symmetric else "asym", group, self.algorithm]
        if self.ratio < 1.0:
            parts.append(f"ratio {self.ratio:g}")
        if self.int8_lm_head:
            parts.append("int8 lm_head")
        if self.keep:
            parts.append(f"{len(self.keep)} kept at int8")
        return " ".join(parts)


@dataclass
class Generation:
    """One greedy generation: the new token ids and when each arrived."""

    tokens: list[int]
    first_token_seconds: float
    """From handing over the prompt to the first new token (time to first token)."""
    decode_seconds: list[float] = field(default_factory=list)
    """Per later token, the time it took."""

    @property
    def decode_tokens_per_second(self) -> float:
        total = sum(self.decode_seconds)
        return len(self.decode_seconds) / total if total > 0 else 0.0


class GenerativeSession(Protocol):
    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Next-token logits at every position of one sequence of token ids (1-D int64): float32 [len, vocab].
        Each call starts from an empty cache."""
        ...

    def generate(self, prompt: np.ndarray, new_tokens: int) -> Generation:
        """Greedy generation of exactly `new_tokens` tokens (no stop at end-of-sequence) after `prompt`."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ExportLimits:
    """What the export is asked to support: the longest sequence a session will see."""

    max_length: int


class GenerativeRuntime:
    """One generative runtime. Subclasses set the class attributes and implement export/quantize/open."""

    name: ClassVar[str]
    summary: ClassVar[str]
    extra: ClassVar[str] = "llm"
    modules: ClassVar[tuple[str, ...]] = ()
    """Importable modules the runtime needs (checked before anything is fetched)."""
    algorithms: ClassVar[frozenset[str]] = frozenset({"rtn"})
    """The weight-only algorithms this runtime's quantizer offers."""
    group_sizes: ClassVar[tuple[int | None, ...]] = (32, 64, 128)
    serving_format: ClassVar[str] = "genai"
    """The served folder's format name in the report and the registry manifest."""
    precisions: ClassVar[tuple[str, ...]] = ()
    """Inference precisions the runtime computes in (empty: the graph's own types)."""
    supported_architectures: ClassVar[frozenset[str] | None] = None
    """Hugging Face `model_type`s the exporter handles (None: whatever it accepts)."""

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    def require(self, what: str, field: str | None = "target.runtime") -> None:
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            raise InvalidInputError(f"{what} needs the {self.name} runtime (extra {self.extra}: "
                                    f"{', '.join(missing)} not installed)", field=field)

    def refuses(self, architecture: str, model_type: str) -> str | None:
        """Why this runtime's exporter cannot export the architecture (one line naming the exporter), or None."""
        if self.supported_architectures is not None and model_type not in self.supported_architectures:
            return (f"{self.name}'s exporter cannot export a {model_type!r} model; it exports: "
                    f"{', '.join(sorted(self.supported_architectures))}")
        return None

    def supports(self, recipe: WeightRecipe) -> str | None:
        """Why this runtime cannot apply the recipe (None: it can)."""
        if recipe.algorithm not in self.algorithms:
            return f"{self.name} offers {', '.join(sorted(self.algorithms))}, not {recipe.algorithm}"
        if recipe.group_size not in self.group_sizes:
            return f"{self.name} takes group sizes {', '.join(str(g) for g in self.group_sizes)}"
        return None

    def export_float(self, hf_dir: Path, out: Path, limits: ExportLimits) -> Path:
        """The float model folder (the baseline, served the same way as every variant)."""
        raise NotImplementedError

    def quantize(self, hf_dir: Path, float_dir: Path, out: Path, recipe: WeightRecipe, limits: ExportLimits,
                 calibration: list[np.ndarray]) -> Path:
        """A weight-only quantized model folder; `calibration`: token-id sequences for data-aware
        algorithms (never the evaluation text)."""
        raise NotImplementedError

    def open(self, model_dir: Path, threads: int, precision: str | None = None) -> GenerativeSession:
        raise NotImplementedError

    def precision(self, requested: str | None) -> str | None:
        """The precision a session computes in (a runtime with precisions always names one: f32 unless asked)."""
        if not self.precisions:
            return None
        return requested or self.precisions[0]

    def search_recipes(self, config: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]], str | None]]:
        """The built-in search candidates on this runtime for a model (its Hugging Face config): (name,
        techniques[] items, inference precision). The runtime's own default recipe is among them, so the trial
        table shows what the peer's default gives."""
        return []
