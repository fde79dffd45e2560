"""Quantization with ONNX Runtime: dynamic INT8 (per-tensor or per-channel), static INT8 in QDQ format
calibrated on the data (MinMax, Entropy, Percentile), and weight-only INT4 (MatMulNBits)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from kompress.jobs.context import StepContext
from kompress.jobs.specbase import SpecModel
from kompress.jobs.techniques.registry import StepResult, register


class QuantizeConfig(SpecModel):
    method: Literal["dynamic", "static", "weightOnly"] = "dynamic"
    """dynamic: weights INT8 offline, activations quantized at run time; static: both offline, calibrated on
    the data (QDQ); weightOnly: INT4 weights for MatMul (MatMulNBits), activations stay float."""
    weights: Literal["int8", "uint8", "int4"] = "int8"
    """Weight type (int4 only with weightOnly)."""
    activations: Literal["int8", "uint8"] = "uint8"
    """Activation type for static quantization (dynamic quantization always uses uint8 activations)."""
    per_channel: bool = True
    """Per-channel weight scales: slower to quantize, far better fidelity on transformers."""
    reduce_range: bool = False
    """7-bit weights, for CPUs without VNNI where 8-bit multiplies can saturate."""
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    """Calibration method for static quantization."""
    percentile: Annotated[float, Field(gt=90, le=100)] = 99.999
    """Percentile for percentile calibration."""
    block_size: Annotated[int, Field(ge=16, le=256)] = 32
    """Block size for weight-only INT4."""
    op_types: list[str] = []
    """Only quantize these operator types (default: all the quantizer supports)."""
    exclude_nodes: list[str] = []
    """Node names left in float."""

    @model_validator(mode="after")
    def consistent(self) -> QuantizeConfig:
        if (self.weights == "int4") != (self.method == "weightOnly"):
            raise ValueError("weights: int4 goes with method: weightOnly, and weightOnly quantizes to int4")
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"blockSize must be a power of two, got {self.block_size}")
        return self


class _CalibrationReader:
    """Feeds calibration rows one at a time to ONNX Runtime's calibrators."""

    def __init__(self, inputs: dict[str, np.ndarray], limit: int) -> None:
        n = min(len(next(iter(inputs.values()))), limit)
        self._rows = iter([{k: v[i : i + 1] for k, v in inputs.items()} for i in range(n)])
        self.count = n

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._rows, None)

    def rewind(self) -> None:  # pragma: no cover - ORT calls it for some calibrators only
        pass


@register("quantize", QuantizeConfig, "INT8/INT4 quantization with ONNX Runtime.")
def quantize(model_path: Path, config: QuantizeConfig, ctx: StepContext) -> StepResult:
    import onnx
    from onnxruntime.quantization import QuantType

    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    out = ctx.out_path("quantized.onnx")
    # Fused transformer graphs carry contrib ops whose output types shape inference cannot see.
    extra: dict[str, object] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    details: dict[str, object] = {"method": config.method, "weights": config.weights,
                                  "perChannel": config.per_channel}
    if config.method == "dynamic":
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(str(model_path), str(out), per_channel=config.per_channel,
                         reduce_range=config.reduce_range, weight_type=qtype[config.weights],
                         op_types_to_quantize=config.op_types or None,
                         nodes_to_exclude=config.exclude_nodes or None, extra_options=extra)
    elif config.method == "static":
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

        reader = _CalibrationReader(ctx.calibration, limit=len(next(iter(ctx.calibration.values()))))
        if ctx.progress:
            ctx.progress.info(f"calibrating activations on {reader.count} samples ({config.calibration})")
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[config.calibration]
        if config.calibration == "percentile":
            extra["CalibPercentile"] = config.percentile
        quantize_static(str(model_path), str(out), reader, quant_format=QuantFormat.QDQ,
                        per_channel=config.per_channel, reduce_range=config.reduce_range,
                        activation_type=qtype[config.activations], weight_type=qtype[config.weights],
                        calibrate_method=method, op_types_to_quantize=config.op_types or None,
                        nodes_to_exclude=config.exclude_nodes or None, extra_options=extra)
        details |= {"activations": config.activations, "calibration": config.calibration,
                    "calibrationSamples": reader.count}
    else:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        model = onnx.load(str(model_path))
        quantizer = MatMulNBitsQuantizer(model, block_size=config.block_size, is_symmetric=True,
                                         nodes_to_exclude=config.exclude_nodes or None)
        quantizer.process()
        from kompress.jobs import onnx_utils

        onnx_utils.save(quantizer.model.model, out)
        details |= {"blockSize": config.block_size}
    return StepResult(model_path=out, details=details)
