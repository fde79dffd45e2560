"""FP16 conversion with ONNX Runtime's float16 tools: halves the size; fast on GPUs, slow on most CPUs."""

from __future__ import annotations

from pathlib import Path

from kompress.jobs.io import onnx_utils
from kompress.jobs.techniques.base import StepResult
from kompress.jobs.techniques.configs import Fp16Config
from kompress.jobs.techniques.context import StepContext


def fp16(model_path: Path, config: Fp16Config, ctx: StepContext) -> StepResult:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx_utils.load(model_path)
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(config.op_block_list))
    converted = convert_float_to_float16(model, keep_io_types=config.keep_io_types, op_block_list=block)
    out = onnx_utils.save(converted, ctx.out_path("fp16.onnx"))
    note = None if ctx.device == "gpu" else "FP16 on CPU is usually slower than FP32; it pays off on GPUs."
    return StepResult(model_path=out, details={"keepIoTypes": config.keep_io_types, "note": note})
