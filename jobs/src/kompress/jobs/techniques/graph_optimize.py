"""ONNX Runtime graph optimization: transformer fusions (Attention, SkipLayerNorm, BiasGelu, ...) or generic
offline optimization. Fusing before quantization is where most CPU speed is won: fused Attention becomes
QAttention after dynamic quantization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kompress.jobs.cpu import available_threads
from kompress.jobs.io import onnx_utils
from kompress.jobs.techniques import layer_norm
from kompress.jobs.techniques.base import StepResult
from kompress.jobs.techniques.configs import GraphOptimizeConfig
from kompress.jobs.techniques.context import StepContext
from kompress.jobs.techniques.traits import BERT_LIKE


def graph_optimize(model_path: Path, config: GraphOptimizeConfig, ctx: StepContext) -> StepResult:
    # The input file's own metadata wins: a torch step (pruned heads, fewer layers) records its shape there.
    import onnx

    meta = {**ctx.metadata, **{p.key: p.value for p in onnx.load(str(model_path), load_external_data=False)
                               .metadata_props}}
    hf_type = meta.get("hf.model_type", "")
    model_type = config.model_type
    if model_type == "auto":
        model_type = "bert" if hf_type in BERT_LIKE else "generic"
    out = ctx.out_path("optimized.onnx")
    if model_type == "bert":
        from onnxruntime.transformers import optimizer

        heads = config.num_heads or int(meta.get("hf.num_attention_heads", 0))  # 0: detected from the graph
        hidden = config.hidden_size or int(meta.get("hf.hidden_size", 0))
        if not config.hidden_size and heads and meta.get("hf.attention_head_size"):
            # after head pruning the attention width is heads x head size, no longer the model's hidden size
            hidden = heads * int(meta["hf.attention_head_size"])
        fused = optimizer.optimize_model(
            str(model_path), model_type="bert", num_heads=heads, hidden_size=hidden,
            opt_level=0, use_gpu=ctx.device == "gpu", optimization_options=_fusion_options(config),
        )
        layer_norm = _choose_skip_layer_norm(fused.model, config, ctx)
        # save_model_to_file adds the com.microsoft opset import that the fused contrib ops need
        fused.save_model_to_file(str(out), use_external_data_format=fused.model.ByteSize() > 2**31 - 2**24)
        ops = onnx_utils.op_histogram(fused.model)
        details = {"mode": "transformer-fusion", "numHeads": heads, "hiddenSize": hidden,
                   "fusedAttention": ops.get("Attention", 0) + ops.get("MultiHeadAttention", 0),
                   "geluApproximation": config.gelu_approximation, "skipLayerNorm": layer_norm, "ops": ops}
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
                                            if config.level == "extended"
                                            else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
        options.optimized_model_filepath = str(out)
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        details = {"mode": f"generic-{config.level}", "ops": onnx_utils.op_histogram(onnx_utils.load(out))}
    return StepResult(model_path=out, details=details)


def _fusion_options(config: GraphOptimizeConfig) -> Any:
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_gelu_approximation = config.gelu_approximation
    return options


def _choose_skip_layer_norm(model: Any, config: GraphOptimizeConfig, ctx: StepContext) -> dict[str, Any]:
    """Split the fused SkipLayerNormalization ops when asked, or under auto when timing on this machine says
    the split form is faster. Returns what was decided and why, for the report."""
    candidates = layer_norm.splittable(model)
    if not candidates:
        return {"form": "fused", "split": 0, "reason": "no splittable SkipLayerNormalization (or opset < 17)"}
    if config.skip_layer_norm == "fused" or (config.skip_layer_norm == "auto" and ctx.device == "gpu"):
        return {"form": "fused", "split": 0, "reason": f"skipLayerNorm {config.skip_layer_norm} on {ctx.device}"}
    timing: dict[str, Any] = {}
    if config.skip_layer_norm == "auto":
        hidden = layer_norm.hidden_size(model, model.graph.node[candidates[0]])
        if hidden <= 0:
            return {"form": "fused", "split": 0, "reason": "auto: the normalized width is not a constant to time"}
        micros = layer_norm.time_forms(hidden, available_threads())
        timing = {"microsecondsPerCall": micros, "hiddenSize": hidden}
        if micros["fused"] < micros["split"] * layer_norm.SPLIT_MIN_GAIN:
            return {"form": "fused", "split": 0, "reason": "the fused kernel timed as fast here", **timing}
    count = layer_norm.split(model, candidates)
    if ctx.progress:
        ctx.progress.info(f"graphOptimize: split {count} SkipLayerNormalization into Sum + LayerNormalization"
                          + (f" (timed {timing['microsecondsPerCall']} us)" if timing else ""))
    return {"form": "split", "split": count, "reason": f"skipLayerNorm {config.skip_layer_norm}", **timing}
