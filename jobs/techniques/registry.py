"""Technique registry: a technique is one module that registers a name, a config model and an apply function.

Adding a technique touches its own file (plus an import line in ``techniques/__init__.py``):
the spec's ``techniques[]`` item, the CRD schema and the runner all read this registry.

A technique works in one of two stages, which may depend on its config: "onnx" techniques take and return
an ONNX file; "torch" techniques (the ones that train) take and return a `TorchModel`. The runner converts
between the two, so torch steps come first in a pipeline (the spec checks the order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kompress.jobs.specbase import SpecModel

if TYPE_CHECKING:
    from kompress.jobs.context import StepContext
    from kompress.jobs.torch_model import TorchModel


Stage = Literal["onnx", "torch"]


@dataclass(frozen=True)
class StepResult:
    """What one technique produced: the new model (an ONNX file, or a TorchModel for torch steps) and facts
    for the report."""

    model_path: Path | TorchModel
    details: dict[str, Any]


ApplyFn = Callable[[Any, Any, "StepContext"], StepResult]


@dataclass(frozen=True)
class Technique:
    name: str
    config: type[SpecModel]
    apply: ApplyFn
    summary: str
    stage: Stage | Callable[[Any], Stage] = "onnx"
    last_torch_step: bool = False
    """True when no torch step may follow (e.g. QAT leaves a fake-quantized module that must be exported)."""

    def stage_of(self, config: Any) -> Stage:
        return self.stage(config) if callable(self.stage) else self.stage


_TECHNIQUES: dict[str, Technique] = {}


def register(name: str, config: type[SpecModel], summary: str,
             stage: Stage | Callable[[Any], Stage] = "onnx",
             last_torch_step: bool = False) -> Callable[[ApplyFn], ApplyFn]:
    def decorate(fn: ApplyFn) -> ApplyFn:
        if name in _TECHNIQUES:
            raise ValueError(f"technique {name!r} registered twice")
        _TECHNIQUES[name] = Technique(name=name, config=config, apply=fn, summary=summary, stage=stage,
                                      last_torch_step=last_torch_step)
        return fn

    return decorate


def get(name: str) -> Technique:
    return _TECHNIQUES[name]


def names() -> list[str]:
    return list(_TECHNIQUES)


def all_techniques() -> list[Technique]:
    return list(_TECHNIQUES.values())
