"""OpenVINO as kompress runs it: a model compiled for the CPU with the target's threads, the latency hint and
a named inference precision, behind the small part of ONNX Runtime's session interface measurement uses
(`run`, `get_inputs`, `get_outputs`), so every measurement times both runtimes the same way. Served as an
OpenVINO IR by Triton's openvino backend; NNCF is its static INT8 quantizer; its own search recipes are bf16
(on CPUs that compute in it) and NNCF INT8."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kompress.jobs.cpu import cpu_has_bf16
from kompress.jobs.errors import InvalidInputError
from kompress.jobs.runtimes.base import Runtime, ServingLayout, Session, SessionTarget

if TYPE_CHECKING:
    from kompress.jobs.techniques.traits import ModelTraits

_PRECISIONS = {"f32": "f32", "bf16": "bf16", "f16": "f16", "float32": "f32", "bfloat16": "bf16",
               "float16": "f16"}
BF16_GAIN = 2.0
"""Prior speedup of the convolutions and GEMMs in bf16 on a CPU with AMX or AVX512-BF16 (MiniLM on an AMX
Xeon, the issue's harness: 2.05x the ORT FP32 baseline)."""
OPENVINO_GAIN = 1.05
"""Prior gain of OpenVINO over ONNX Runtime at the same precision (1.09x measured on MiniLM, AMX Xeon)."""


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

    def run(self, output_names: list[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        results = self._request.infer(dict(feeds))  # copies the outputs (share_outputs=False): callers keep them
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


_NOISE = ("Exception from", "Check '", "While validating", "FrontEnd API failed", "--", "Summary", "Model wasn't")


def _reason(text: str) -> str:
    """The useful part of an OpenVINO exception (its first lines are source locations): which ops failed to
    convert and the first reason given."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    failed = next((line.lstrip("- ") for line in lines if line.startswith("-- Conversion is failed for")), None)
    reasons = [line for line in lines if not line.startswith(_NOISE)]
    return ("; ".join(p for p in (failed, *reasons[:1]) if p) or (lines[-1] if lines else text))[:300]


class OpenVino(Runtime):
    name = "openvino"
    summary = "OpenVINO (CPU), served as an OpenVINO IR by Triton's openvino backend"
    modules = ("openvino", "nncf")
    extra = "openvino"
    libraries = ("openvino", "nncf")
    precisions = ("f32", "bf16", "f16")
    static_quantizer = "nncf"
    layout = ServingLayout("model.xml", "model.bin", ".bin", "openvino-ir")

    def open(self, path: Path, target: SessionTarget, *, profile_prefix: str | None = None) -> Session:
        """Compile `path` (.onnx or .xml) for the CPU; a model OpenVINO cannot read (ONNX Runtime's contrib ops,
        such as graphOptimize's fused Attention) is a clear error naming the file."""
        self.require("compiling a model", field="target.runtime")
        import openvino as ov

        core = ov.Core()
        try:
            compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                          cpu_config(target.threads, target.precision or "f32"))
        except RuntimeError as err:
            raise InvalidInputError(f"{path.name} cannot be compiled by OpenVINO: {_reason(str(err))}",
                                    field="target.runtime") from None
        return OpenVinoSession(compiled)

    def probe_memory(self, path: Path, feeds: Mapping[str, np.ndarray], target: SessionTarget) -> None:
        import openvino as ov

        core = ov.Core()
        request = core.compile_model(str(path), "CPU",
                                     cpu_config(target.threads, target.precision or "f32")).create_infer_request()
        for _ in range(3):
            request.infer(dict(feeds))

    def served_model(self, onnx_path: Path, workdir: Path, precision: str | None) -> Path:
        """The OpenVINO IR (`model.xml` + `model.bin`) of an ONNX model. Float weights are stored as fp16 when
        the model computes in bf16 or f16 anyway (half the file; the final measurement runs this very IR, so
        what is gated is what is served), and kept in their own types at f32."""
        self.require("an OpenVINO IR", field="target.runtime")
        import openvino as ov

        xml = workdir / self.layout.graph
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=precision in ("bf16", "f16"))
        return xml

    def parameters(self, path: Path) -> int | None:
        """Elements in the IR's weight constants (what ONNX parameter counts count)."""
        if path.suffix != ".xml":
            from kompress.jobs.io.onnx_utils import parameter_count

            return parameter_count(path)
        import openvino as ov

        model = ov.Core().read_model(str(path))
        return int(sum(int(np.prod(op.get_output_shape(0))) for op in model.get_ops()
                       if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) > 0))

    def triton_backend(self, precision: str | None) -> dict[str, Any]:
        return {"backend": "openvino", "parameters": [
            {"key": "PERFORMANCE_HINT", "value": {"string_value": "LATENCY"}},
            {"key": "INFERENCE_PRECISION_HINT", "value": {"string_value": precision or "f32"}}]}

    def search_recipes(self, traits: ModelTraits, *, pinned: bool) -> list[dict[str, Any]]:
        """NNCF static INT8 where the profile leaves int8 kernels something to do, bf16 on CPUs that compute in
        it, and (choosing between runtimes) the original on OpenVINO at f32."""
        from kompress.jobs.techniques.traits import CONV_OPS, MATMUL_OPS, MIN_SHARE

        on = {"runtime": self.name}
        out: list[dict[str, Any]] = []
        if not traits.op_share or traits.share(CONV_OPS | MATMUL_OPS) >= MIN_SHARE:
            out.append({"name": "openvino-int8", "techniques": [{"quantize": {"method": "static", "backend": "nncf"}}],
                        **(on if pinned else {})})
            if cpu_has_bf16():
                out.append({"name": "openvino-bf16", "techniques": [], "precision": "bf16", **on})
        if pinned:
            out.append({"name": "openvino-f32", "techniques": [], "precision": "f32", **on})
        return out

    def expected_gain(self, precision: str | None, quantizes: bool, objective: str, traits: ModelTraits) -> float:
        from kompress.jobs.techniques.traits import CONV_OPS, MATMUL_OPS, amdahl

        if objective == "size":
            return 1.0
        gain = OPENVINO_GAIN
        if precision in ("bf16", "f16") and not quantizes:
            heavy = traits.share(CONV_OPS | MATMUL_OPS) if traits.op_share else 0.9
            gain *= amdahl([(heavy, BF16_GAIN)])
        return gain


RUNTIME = OpenVino()
