"""The runtimes a variant can be measured and served with, and which one a variant uses.

Light on purpose (no ONNX Runtime or OpenVINO import): the spec, the catalog and the registry read it. The
sessions themselves are in `ort_sessions` (ONNX Runtime) and `openvino_sessions` (OpenVINO)."""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kompress.jobs.errors import InvalidInputError

Runtime = Literal["onnxruntime", "openvino"]
RUNTIMES: tuple[Runtime, ...] = ("onnxruntime", "openvino")
Precision = Literal["f32", "bf16", "f16"]
OPENVINO_MODULES = ("openvino", "nncf")


@dataclass(frozen=True)
class Serving:
    """How a variant runs: the runtime, and for OpenVINO the inference precision it is compiled with (the
    plugin's default on a CPU with bf16 is bf16, which changes the outputs: what is measured is what is
    served, so the precision is always named)."""

    runtime: Runtime = "onnxruntime"
    precision: Precision | None = None
    """OpenVINO's INFERENCE_PRECISION_HINT (None for ONNX Runtime: the graph's own types decide)."""

    def __post_init__(self) -> None:
        if self.runtime == "openvino" and self.precision is None:
            object.__setattr__(self, "precision", "f32")
        if self.runtime == "onnxruntime":
            object.__setattr__(self, "precision", None)

    @property
    def label(self) -> str:
        return self.runtime if self.precision is None else f"{self.runtime} {self.precision}"


def openvino_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in OPENVINO_MODULES)


def require_openvino(what: str, *, field: str | None = None) -> None:
    """A one-line InvalidInputError (exit 2) when `what` needs OpenVINO and this install lacks it (the slim
    image, or an install without the `openvino` extra). Imports nothing."""
    missing = [m for m in OPENVINO_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise InvalidInputError(
            f"{what} needs OpenVINO (extra `openvino`: kompress-jobs[openvino], in [engine] and the full image); "
            f"this install has no {', '.join(missing)}", field=field)


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU computes in bfloat16 natively (AMX or AVX512-BF16), where OpenVINO's bf16 precision
    is a speedup; elsewhere OpenVINO emulates it or falls back to f32, and a bf16 candidate is not worth a
    trial."""
    with contextlib.suppress(OSError):
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("flags")), [])
        return "amx_bf16" in flags or "avx512_bf16" in flags
    return False


def serving_names(runtime: Runtime) -> tuple[str, str]:
    """The model's file names in an output folder and a registry version: the graph and its companion (the
    external data of an ONNX model over 2 GB; the weights of an OpenVINO IR)."""
    return ("model.xml", "model.bin") if runtime == "openvino" else ("model.onnx", "model.onnx.data")
