"""OpenVINO as kompress runs it: a model compiled for the CPU with the target's threads, the latency hint
and a named inference precision, behind the small part of ONNX Runtime's session interface the evaluation
uses (`run`, `get_inputs`, `get_outputs`), so every measurement times both runtimes the same way. Also the
IR a promoted OpenVINO model is served as."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.runtimes.base import Precision, require_openvino

_PRECISIONS = {"f32": "f32", "bf16": "bf16", "f16": "f16", "float32": "f32", "bfloat16": "bf16",
               "float16": "f16"}


@dataclass(frozen=True)
class _Arg:
    """An input or output as ONNX Runtime describes it: name and shape (a dynamic dimension is a string)."""

    name: str
    shape: list[int | str]


class OpenVinoSession:
    """A compiled OpenVINO model with one infer request, used like an onnxruntime.InferenceSession."""

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        # ports looked up once: `run` is the timed call, and a lookup there is time charged to OpenVINO
        self._ports = {p.get_any_name(): p for p in compiled.outputs}
        self._all_ports = list(compiled.outputs)
        self.precision: str = _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        """The precision OpenVINO actually compiled with (a hint the CPU cannot honour falls back)."""

    @staticmethod
    def _args(ports: Any) -> list[_Arg]:
        return [_Arg(p.get_any_name(), [d.get_length() if d.is_static else "?" for d in p.get_partial_shape()])
                for p in ports]

    def get_inputs(self) -> list[_Arg]:
        return self._args(self._compiled.inputs)

    def get_outputs(self) -> list[_Arg]:
        return self._args(self._compiled.outputs)

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self._request.infer(feeds)  # copies the outputs (share_outputs=False): callers keep them
        ports = [self._ports[name] for name in output_names] if output_names else self._all_ports
        return [np.asarray(results[port]) for port in ports]


def _precision_name(value: Any) -> str:
    text = str(value).lower().removeprefix("<type: '").removesuffix("'>")
    return _PRECISIONS.get(text, text)


def cpu_config(threads: int, precision: str) -> dict[str, Any]:
    """How kompress compiles for the CPU, wherever it compiles (the sessions it times, the memory probe): one
    latency stream on the target's threads, at a named precision."""
    return {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": precision}


def compile_model(path: Path, threads: int, precision: Precision) -> OpenVinoSession:
    """Compile `path` (.onnx or .xml) for the CPU; a model OpenVINO cannot read (ONNX Runtime's contrib ops,
    such as graphOptimize's fused Attention) is a clear error naming the file."""
    require_openvino("openvino", field="target.runtime")
    import openvino as ov

    core = ov.Core()
    try:
        return OpenVinoSession(core.compile_model(core.read_model(str(path)), "CPU", cpu_config(threads, precision)))
    except RuntimeError as err:
        raise InvalidInputError(f"{path.name} cannot be compiled by OpenVINO: {_reason(str(err))}",
                                field="target.runtime") from None


_NOISE = ("Exception from", "Check '", "While validating", "FrontEnd API failed", "--", "Summary", "Model wasn't")


def _reason(text: str) -> str:
    """The useful part of an OpenVINO exception (its first lines are source locations): which ops failed to
    convert and the first reason given."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    failed = next((line.lstrip("- ") for line in lines if line.startswith("-- Conversion is failed for")), None)
    reasons = [line for line in lines if not line.startswith(_NOISE)]
    return ("; ".join(p for p in (failed, *reasons[:1]) if p) or (lines[-1] if lines else text))[:300]


def save_ir(onnx_path: Path, xml: Path, precision: Precision = "f32") -> Path:
    """The OpenVINO IR (`model.xml` + `model.bin`) of an ONNX model. Float weights are stored as fp16 when the
    model computes in bf16 or f16 anyway (half the file; the final measurement runs this very IR, so what is
    gated is what is served), and kept in their own types at f32."""
    require_openvino("an OpenVINO IR", field="target.runtime")
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=precision in ("bf16", "f16"))
    return xml


def ir_parameters(xml: Path) -> int:
    """Elements in the IR's weight constants (what `onnx_utils.parameter_count` counts for ONNX)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    return int(sum(int(np.prod(op.get_output_shape(0))) for op in model.get_ops()
                   if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) > 0))
