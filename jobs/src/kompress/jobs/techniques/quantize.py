"""Quantization with ONNX Runtime: dynamic INT8 (per-tensor or per-channel), static INT8 in QDQ format
calibrated on the data (MinMax, Entropy, Percentile), and weight-only INT4 (MatMulNBits); or static INT8 with
OpenVINO NNCF, for models OpenVINO serves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kompress.jobs.errors import RuntimeFailure, require_modules
from kompress.jobs.io import model_files, onnx_utils
from kompress.jobs.io.data import InputPlan
from kompress.jobs.runtimes import registry as runtimes
from kompress.jobs.techniques.base import StepResult
from kompress.jobs.techniques.configs import QuantizeConfig
from kompress.jobs.techniques.context import StepContext

ORT_QUANTIZER = "onnxruntime"
"""onnxruntime.quantization: the quantizer for dynamic, weight-only and (for ONNX Runtime) static INT8."""


class _CalibrationReader:
    """Feeds calibration rows one at a time to ONNX Runtime's calibrators, as the model's feeds (`plan`:
    data.inputs' batch axes and constants; None: every input batch-first)."""

    def __init__(self, inputs: dict[str, np.ndarray], plan: InputPlan | None = None) -> None:
        plan = plan or InputPlan.batch_first(inputs)
        self.count = len(next(iter(inputs.values())))
        self._rows = (plan.take(inputs, slice(i, i + 1)) for i in range(self.count))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._rows, None)


def _weights_as_initializers(model_path: Path, ctx: StepContext, details: dict[str, object]) -> Path:
    """The model with Constant-node weights moved into initializers (what the quantizers quantize offline)."""
    model = onnx_utils.load(model_path)
    moved = onnx_utils.constants_to_initializers(model)
    if not moved:
        return model_path
    details["constantsMovedToInitializers"] = moved
    return onnx_utils.save(model, ctx.out_path("input.onnx"))


def _writable_copy(model_path: Path, ctx: StepContext) -> Path:
    """ONNX Runtime's quantizers write a shape-inferred copy beside their input (`<name>-inferred.onnx`): a
    model in a read-only place (package://, a read-only volume or root filesystem) goes to the step's folder
    first."""
    if os.access(model_path.parent, os.W_OK):
        return model_path
    return model_files.copy_model(model_path, ctx.out_path("source") / model_path.name)


def _loads(path: Path) -> str | None:
    """None when ONNX Runtime loads the graph, else its first error line."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:
        return str(err).splitlines()[0][:300]
    return None


def quantize(model_path: Path, config: QuantizeConfig, ctx: StepContext) -> StepResult:
    import onnx
    from onnxruntime.quantization import QuantType

    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    out = ctx.out_path("quantized.onnx")
    # Fused transformer graphs carry contrib ops whose output types shape inference cannot see.
    extra: dict[str, object] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    details: dict[str, object] = {"method": config.method, "weights": config.weights,
                                  "perChannel": config.per_channel}
    if _backend(config, ctx) == "nncf":
        # NNCF reads Constant-node weights itself, and its Cast clean-up fails on a Cast of an initializer
        # (AttributeError 'type', seen on the PP-OCR direction classifier once its Constants were moved)
        return StepResult(model_path=out, details={"method": "static"} | _nncf(model_path, out, config, ctx))
    model_path = _writable_copy(_weights_as_initializers(model_path, ctx, details), ctx)
    if config.method == "dynamic":
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(str(model_path), str(out), per_channel=config.per_channel,
                         reduce_range=config.reduce_range, weight_type=qtype[config.weights],
                         op_types_to_quantize=config.op_types or None,
                         nodes_to_exclude=config.exclude_nodes or None, extra_options=extra)
    elif config.method == "static":
        details |= _static(model_path, out, config, ctx, extra, qtype)
    else:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        model = onnx.load(str(model_path))
        quantizer = MatMulNBitsQuantizer(model, block_size=config.block_size, is_symmetric=True,
                                         nodes_to_exclude=config.exclude_nodes or None)
        quantizer.process()
        onnx_utils.save(quantizer.model.model, out)
        details |= {"blockSize": config.block_size}
    return StepResult(model_path=out, details=details)


def _static(model_path: Path, out: Path, config: QuantizeConfig, ctx: StepContext, extra: dict[str, object],
            qtype: dict[str, object]) -> dict[str, object]:
    """Static INT8 calibrated on the data, in the configured format; a graph ONNX Runtime refuses to load
    (seen on PP-OCR: QDQ around a node the pre-fusion made) is written again in the other format, and an
    unloadable graph is never returned."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration]
    if config.calibration == "percentile":
        extra["CalibPercentile"] = config.percentile
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    tried: dict[str, str] = {}
    for name in (config.format, *(f for f in formats if f != config.format)):
        ctx.require_calibration("static quantization", "techniques.quantize")
        reader = _CalibrationReader(ctx.calibration, ctx.input_plan)
        if ctx.progress:
            ctx.progress.info(f"calibrating activations on {reader.count} samples ({config.calibration}, {name})")
        quantize_static(str(model_path), str(out), reader, quant_format=formats[name],
                        per_channel=config.per_channel, reduce_range=config.reduce_range,
                        activation_type=qtype[config.activations], weight_type=qtype[config.weights],
                        calibrate_method=method, op_types_to_quantize=config.op_types or None,
                        nodes_to_exclude=config.exclude_nodes or None, extra_options=dict(extra))
        error = _loads(out)
        if error is None:
            facts: dict[str, object] = {"activations": config.activations, "calibration": config.calibration,
                                        "calibrationSamples": reader.count, "format": name}
            return facts | ({"refusedFormats": tried} if tried else {})
        tried[name] = error
        if ctx.progress:
            ctx.progress.info(f"quantize: ONNX Runtime refuses the {name} graph ({error}); trying another format")
    raise RuntimeFailure("quantize: ONNX Runtime refuses every static INT8 graph written: "
                         + "; ".join(f"{k}: {v}" for k, v in tried.items()))


def _backend(config: QuantizeConfig, ctx: StepContext) -> str:
    if config.backend != "auto":
        return config.backend
    # static INT8 with the quantizer of the runtime that serves the result (NNCF's QDQ is what OpenVINO's CPU
    # plugin fuses); dynamic and weight-only INT8 are ONNX Runtime's quantizer's alone
    return runtimes.get(ctx.runtime).static_quantizer if config.method == "static" else ORT_QUANTIZER


def _nncf(model_path: Path, out: Path, config: QuantizeConfig, ctx: StepContext) -> dict[str, object]:
    """NNCF's post-training quantization of the ONNX model (its ONNX backend: QDQ where OpenVINO's CPU plugin
    fuses int8 kernels), calibrated on the data; Hugging Face transformers get NNCF's transformer preset
    (SmoothQuant, float softmax and layer norms). `opTypes` and `excludeNodes` become NNCF's ignored scope."""
    require_modules("quantize backend nncf", ("nncf", "openvino"), "openvino", field="techniques.quantize.backend")
    import nncf
    import onnx

    from kompress.jobs.techniques.traits import BERT_LIKE

    model = onnx.load(str(model_path))
    ignored = set(config.exclude_nodes)
    if config.op_types:
        ignored |= {n.name for n in model.graph.node if n.op_type not in config.op_types and n.name}
    ctx.require_calibration("NNCF quantization", "techniques.quantize")
    reader = _CalibrationReader(ctx.calibration, ctx.input_plan)
    rows = [row for row in iter(reader.get_next, None)]
    transformer = ctx.metadata.get("hf.model_type", "") in BERT_LIKE
    if ctx.progress:
        ctx.progress.info(f"NNCF: calibrating on {len(rows)} samples{' (transformer preset)' if transformer else ''}")
    quantized = nncf.quantize(
        model, nncf.Dataset(rows), subset_size=len(rows),
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
        ignored_scope=nncf.IgnoredScope(names=sorted(ignored), validate=False) if ignored else None)
    onnx_utils.save(quantized, out)
    return {"backend": "nncf", "calibrationSamples": len(rows), "modelType": "transformer" if transformer else None,
            "ignoredNodes": len(ignored), "nncf": nncf.__version__}
