"""Unstructured magnitude pruning of an ONNX model's weight tensors (global or per layer).

Zeroed weights make a model compressible and prepare it for sparse kernels, but dense runtimes run it at
the same speed and the ONNX file stays the same size: the report says so. Structured pruning, which
removes channels and really speeds a model up, needs the training path (PyTorch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from kompress.jobs import onnx_utils
from kompress.jobs.context import StepContext
from kompress.jobs.specbase import SpecModel
from kompress.jobs.techniques.registry import StepResult, register

_WEIGHT_OPS = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1}  # op -> input index of the weight


class PruneConfig(SpecModel):
    method: Literal["magnitude"] = "magnitude"
    """magnitude: zero the weights with the smallest absolute values (unstructured)."""
    sparsity: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    """Fraction of weights set to zero, in [0, 1)."""
    scope: Literal["global", "layer"] = "layer"
    """layer: the same sparsity in every weight tensor; global: one threshold across all of them."""
    min_elements: Annotated[int, Field(ge=1)] = 1024
    """Tensors smaller than this (biases, norms) are left dense."""


def _weight_initializers(model) -> list:  # type: ignore[no-untyped-def]
    inits = {i.name: i for i in model.graph.initializer}
    names: list[str] = []
    for node in model.graph.node:
        idx = _WEIGHT_OPS.get(node.op_type)
        if idx is not None and len(node.input) > idx and node.input[idx] in inits and node.input[idx] not in names:
            names.append(node.input[idx])
    return [inits[n] for n in names]


@register("prune", PruneConfig, "Unstructured magnitude pruning of weight tensors.")
def prune(model_path: Path, config: PruneConfig, ctx: StepContext) -> StepResult:
    from onnx import numpy_helper

    model = onnx_utils.load(model_path)
    tensors = [t for t in _weight_initializers(model) if int(np.prod(t.dims)) >= config.min_elements]
    if not tensors:
        from kompress.jobs.errors import InvalidInputError

        raise InvalidInputError("the model has no MatMul/Gemm/Conv weight tensors large enough to prune",
                                field="techniques.prune")
    arrays = {t.name: numpy_helper.to_array(t) for t in tensors}
    if config.scope == "global":
        magnitudes = np.concatenate([np.abs(a).ravel() for a in arrays.values()])
        k = int(config.sparsity * magnitudes.size)
        threshold = np.partition(magnitudes, k)[k] if k else -1.0
    zeros = total = 0
    for tensor in tensors:
        array = arrays[tensor.name]
        if config.scope == "layer":
            flat = np.abs(array).ravel()
            k = int(config.sparsity * flat.size)
            threshold = np.partition(flat, k)[k] if k else -1.0
        pruned = np.where(np.abs(array) < threshold, np.zeros_like(array), array)
        tensor.CopyFrom(numpy_helper.from_array(pruned, tensor.name))
        zeros += int((pruned == 0).sum())
        total += pruned.size
    out = onnx_utils.save(model, ctx.out_path("pruned.onnx"))
    return StepResult(model_path=out, details={
        "method": config.method, "scope": config.scope, "targetSparsity": config.sparsity,
        "achievedSparsity": round(zeros / total, 4), "prunedTensors": len(tensors), "prunedParameters": total,
        "note": "Unstructured sparsity: dense runtimes gain little speed and the file keeps its size; "
                "combine with quantization, or use structured pruning for latency.",
    })
