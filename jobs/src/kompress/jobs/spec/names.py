"""Names the spec checks against what is registered: runtimes, tasks, the runtimes' precisions and export
formats. Each is a plain string in Python, validated when a spec is read, and an enum of the registered
names when a JSON schema (the CRD's) is generated, so a runtime or task registered by a plugin or a test is
accepted without touching the spec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from kompress.jobs.runtimes import genai_registry as generative
from kompress.jobs.runtimes import registry as runtimes
from kompress.jobs.tasks import registry as tasks


class RegisteredName:
    """Pydantic metadata: a string that must be one of `names()` at validation time."""

    def __init__(self, kind: str, names: Callable[[], list[str]]) -> None:
        self.kind = kind
        self.names = names

    def _check(self, value: str) -> str:
        known = self.names()
        if value not in known:
            raise ValueError(f"unknown {self.kind} {value!r}; expected one of: {', '.join(known)}")
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        out["enum"] = self.names()
        return out


def _runtime_names() -> list[str]:
    """The runtimes that serve a graph, then the generative runtimes (text-generation's)."""
    return [*runtimes.names(), *generative.names()]


def _runtime_choices() -> list[str]:
    return [*_runtime_names(), runtimes.AUTO]


def _precisions() -> list[str]:
    return list(dict.fromkeys(p for r in runtimes.all_runtimes() for p in r.precisions))


def _exports() -> list[str]:
    return sorted({f for r in runtimes.all_runtimes() for f in r.exports} | set(runtimes.source_exports()))


def _quantizers() -> list[str]:
    """quantize's backends: auto, and the static quantizer of every registered runtime (ONNX Runtime's own
    quantizer, NNCF)."""
    return ["auto", *dict.fromkeys(r.static_quantizer for r in runtimes.all_runtimes())]


RuntimeName = Annotated[str, RegisteredName("runtime", _runtime_names)]
RuntimeChoice = Annotated[str, RegisteredName("runtime", _runtime_choices)]
"""A registered runtime, or auto."""
TaskName = Annotated[str, RegisteredName("task", tasks.names)]
PrecisionName = Annotated[str, RegisteredName("precision", _precisions)]
ExportFormat = Annotated[str, RegisteredName("export format", _exports)]
QuantizerName = Annotated[str, RegisteredName("quantize backend", _quantizers)]

