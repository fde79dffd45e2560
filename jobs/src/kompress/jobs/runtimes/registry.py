"""The registered runtimes, and `Serving` (a runtime and its precision). The built-in runtimes are listed in
BUILTIN (one entry per module); a plugin (or a test) registers its own with `register`. Everything outside
`runtimes/` asks this module about a runtime: nothing else compares a runtime's name."""

from __future__ import annotations

from dataclasses import dataclass

from kompress.jobs.plugins import Registry
from kompress.jobs.runtimes import litert, onnxruntime, openvino
from kompress.jobs.runtimes.base import Runtime

AUTO = "auto"
"""target.runtime auto: a search chooses among every installed runtime that can serve the model."""

_RUNTIMES: Registry[Runtime] = Registry("runtime", "target.runtime", (onnxruntime.RUNTIME, openvino.RUNTIME))
unregister, names, get, all_runtimes = _RUNTIMES.unregister, _RUNTIMES.names, _RUNTIMES.get, _RUNTIMES.all


def register(runtime: Runtime) -> Runtime:
    """Add a runtime (a name already registered is replaced: a test's fake, or a plugin's override); there is
    one reference runtime."""
    if runtime.reference and any(r.reference and r.name != runtime.name for r in all_runtimes()):
        raise ValueError(f"runtime {runtime.name} claims to be the reference, but one is registered already")
    return _RUNTIMES.register(runtime)


def reference() -> Runtime:
    """The runtime a baseline is measured with unless the spec names another (ONNX Runtime)."""
    return next(r for r in all_runtimes() if r.reference)


def source_exports() -> list[str]:
    """Export formats written from the original model rather than by the serving runtime (tflite): any
    serving runtime goes with them."""
    return [litert.FORMAT]


def writes_export(runtime: Runtime, fmt: str) -> bool:
    return fmt in runtime.exports or fmt in source_exports()


def installed() -> list[Runtime]:
    return [r for r in all_runtimes() if r.installed()]


def resolve(name: str | None) -> Runtime:
    """target.runtime as given (None, or auto: the reference runtime, which the baseline is measured with)."""
    return reference() if name in (None, AUTO) else get(name)


@dataclass(frozen=True)
class Serving:
    """How a variant runs: the runtime, and the inference precision it computes in (None for a runtime that
    runs the graph's own types). A runtime with precisions always names one: a CPU default such as OpenVINO's
    bf16 changes the outputs, and what is measured is what is served."""

    runtime: str
    precision: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", get(self.runtime).precision(self.precision))

    @classmethod
    def reference(cls) -> Serving:
        return cls(reference().name)

    @property
    def engine(self) -> Runtime:
        return get(self.runtime)

    @property
    def label(self) -> str:
        return self.runtime if self.precision is None else f"{self.runtime} {self.precision}"
