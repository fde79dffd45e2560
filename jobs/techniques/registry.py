"""Technique registry: a technique is one module that registers a name, a config model and an apply function.

Adding a technique touches its own file (plus an import line in ``techniques/__init__.py``):
the spec's ``techniques[]`` item, the CRD schema and the runner all read this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kompress.jobs.specbase import SpecModel

if TYPE_CHECKING:
    from kompress.jobs.context import StepContext


@dataclass(frozen=True)
class StepResult:
    """What one technique produced: the new ONNX file and facts for the report."""

    model_path: Path
    details: dict[str, Any]


ApplyFn = Callable[[Path, Any, "StepContext"], StepResult]


@dataclass(frozen=True)
class Technique:
    name: str
    config: type[SpecModel]
    apply: ApplyFn
    summary: str


_TECHNIQUES: dict[str, Technique] = {}


def register(name: str, config: type[SpecModel], summary: str) -> Callable[[ApplyFn], ApplyFn]:
    def decorate(fn: ApplyFn) -> ApplyFn:
        if name in _TECHNIQUES:
            raise ValueError(f"technique {name!r} registered twice")
        _TECHNIQUES[name] = Technique(name=name, config=config, apply=fn, summary=summary)
        return fn

    return decorate


def get(name: str) -> Technique:
    return _TECHNIQUES[name]


def names() -> list[str]:
    return list(_TECHNIQUES)


def all_techniques() -> list[Technique]:
    return list(_TECHNIQUES.values())
