"""ONNX Runtime graph optimization: transformer fusions (Attention, SkipLayerNorm, BiasGelu, ...) or generic
offline optimization. Fusing before quantization is where most CPU speed is won: fused Attention becomes
QAttention after dynamic quantization."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from kompress.jobs import onnx_utils
from kompress.jobs.context import StepContext
from kompress.jobs.specbase import SpecModel
from kompress.jobs.techniques.registry import StepResult, register

# Hugging Face model types whose encoder layout ONNX Runtime's "bert" fusions understand.
_BERT_LIKE = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet", "camembert", "albert"}


class GraphOptimizeConfig(SpecModel):
    model_type: Literal["auto", "bert", "generic"] = "auto"
    """bert: transformer fusions; generic: ONNX Runtime's offline graph optimizations; auto: bert when the
    model came from a BERT-like Hugging Face architecture, else generic."""
    num_heads: Annotated[int, Field(ge=0)] = 0
    """Attention heads (0: read from the model's Hugging Face config)."""
    hidden_size: Annotated[int, Field(ge=0)] = 0
    """Hidden size (0: read from the model's Hugging Face config)."""
    level: Literal["basic", "extended"] = "extended"
    """Generic optimization level (layout-specific 'all' optimizations are left to the serving runtime)."""


@register("graphOptimize", GraphOptimizeConfig, "ONNX Runtime graph optimization and transformer fusion.")
def graph_optimize(model_path: Path, config: GraphOptimizeConfig, ctx: StepContext) -> StepResult:
    # The input file's own metadata wins: a torch step (pruned heads, fewer layers) records its shape there.
    import onnx

    meta = {**ctx.metadata, **{p.key: p.value for p in onnx.load(str(model_path), load_external_data=False)
                               .metadata_props}}
    hf_type = meta.get("hf.model_type", "")
    model_type = config.model_type
    if model_type == "auto":
        model_type = "bert" if hf_type in _BERT_LIKE else "generic"
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
            opt_level=0, use_gpu=ctx.device == "gpu",
        )
        # save_model_to_file adds the com.microsoft opset import that the fused contrib ops need
        fused.save_model_to_file(str(out), use_external_data_format=fused.model.ByteSize() > 2**31 - 2**24)
        ops = onnx_utils.op_histogram(fused.model)
        details = {"mode": "transformer-fusion", "numHeads": heads, "hiddenSize": hidden,
                   "fusedAttention": ops.get("Attention", 0) + ops.get("MultiHeadAttention", 0), "ops": ops}
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
