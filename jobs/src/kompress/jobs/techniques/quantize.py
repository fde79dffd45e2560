"""Quantization with ONNX Runtime: dynamic INT8 (per-tensor or per-channel), static INT8 in QDQ format
calibrated on the data (MinMax, Entropy, Percentile), and weight-only INT4 (MatMulNBits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kompress.jobs import onnx_utils
from kompress.jobs.context import StepContext
from kompress.jobs.techniques.base import StepResult
from kompress.jobs.techniques.configs import QuantizeConfig


class _CalibrationReader:
    """Feeds calibration rows one at a time to ONNX Runtime's calibrators."""

    def __init__(self, inputs: dict[str, np.ndarray]) -> None:
        self.count = len(next(iter(inputs.values())))
        self._rows = iter([{k: v[i : i + 1] for k, v in inputs.items()} for i in range(self.count)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._rows, None)


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

        reader = _CalibrationReader(ctx.calibration)
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
        onnx_utils.save(quantizer.model.model, out)
        details |= {"blockSize": config.block_size}
    return StepResult(model_path=out, details=details)
