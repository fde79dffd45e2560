"""weightOnly: weight-only quantization of a causal language model, applied by the generative runtime that
serves it. What kompress adds to the runtime's quantizer: which layers stay out of the low-bit body, chosen by
measured sensitivity (`sensitive_layers`) rather than a fixed list."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kompress.jobs.runtimes.generative import WeightRecipe
from kompress.jobs.techniques.base import StepResult
from kompress.jobs.techniques.configs import WeightOnlyConfig
from kompress.jobs.techniques.context import GenerationContext

if TYPE_CHECKING:
    from kompress.jobs.progress import Progress


def recipe_of(config: WeightOnlyConfig, keep: tuple[str, ...] = ()) -> WeightRecipe:
    return WeightRecipe(bits=config.bits, group_size=config.group_size, symmetric=config.symmetric,
                        algorithm=config.algorithm, ratio=config.ratio, int8_lm_head=config.int8_lm_head, keep=keep)


def weight_only(model: Path, config: WeightOnlyConfig, ctx: GenerationContext) -> StepResult:
    """Quantize the float model's weights with the serving runtime; `model` is the runtime's float folder."""
    keep: tuple[str, ...] = ()
    if config.keep_sensitive:
        if not ctx.sensitivity:
            ctx.sensitivity = sensitive_layers(ctx.hf_dir, ctx.calibration, config, ctx.progress)
        keep = tuple(list(ctx.sensitivity)[:config.keep_sensitive])
    recipe = recipe_of(config, keep)
    started = time.perf_counter()
    out = ctx.runtime.quantize(ctx.hf_dir, model, ctx.workdir / "model", recipe, ctx.limits, ctx.calibration)
    details: dict[str, object] = {"recipe": recipe.label, "runtime": ctx.runtime.name,
                                  "quantizeSeconds": round(time.perf_counter() - started, 1)}
    if keep:
        details["keptLayers"] = list(keep)
        details["keptSensitivity"] = {k: round(ctx.sensitivity[k], 5) for k in keep}
    return StepResult(out, details)


# long: hooks, the calibration pass and the per-layer error read best together
def sensitive_layers(hf_dir: Path, calibration: list[np.ndarray], config: WeightOnlyConfig,
                     progress: Progress | None = None) -> dict[str, float]:
    """Every decoder linear layer's relative output error under this config's round-to-nearest quantization,
    most sensitive first: sum_ij E_ij^2 a_j / sum_ij W_ij^2 a_j, where E is the quantization error of W and a_j
    the mean squared input activation of channel j on the calibration sequences (the diagonal of the
    inputs' second moment, as GPTQ and AWQ weigh errors). One float32 copy of the model is held."""
    import torch
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    energy: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    linears = {n: m for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and (".layers." in n or n == "lm_head")}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            energy[name] = energy.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    for name, module in linears.items():
        hooks.append(module.register_forward_hook(hook(name)))
    with torch.no_grad():
        for seq in calibration:
            model(torch.from_numpy(seq[None].astype(np.int64)))
    for h in hooks:
        h.remove()
    scores: dict[str, float] = {}
    with torch.no_grad():
        for name, module in linears.items():
            act = energy[name] / max(counts[name], 1)
            w = module.weight.float()
            err = w - _rtn(w, config.bits, config.group_size, config.symmetric)
            scores[name] = float(((err * err) * act).sum() / ((w * w) * act).sum().clamp_min(1e-30))
    del model, linears
    if progress is not None:
        progress.info(f"sensitivity of {len(scores)} linear layers measured on {len(calibration)} calibration "
                      f"sequences in {time.perf_counter() - started:.0f} s")
    return dict(sorted(scores.items(), key=lambda kv: -kv[1]))


def _rtn(w: Any, bits: int, group: int | None, symmetric: bool) -> Any:
    """Round-to-nearest quantize-dequantize of a weight matrix [out, in], grouped along the input dimension."""
    import torch

    assert isinstance(w, torch.Tensor)
    out_dim, in_dim = w.shape
    g = group if group and in_dim % group == 0 else in_dim
    x = w.reshape(out_dim, in_dim // g, g)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax
        q = (x / scale).round().clamp(-qmax - 1, qmax)
        return (q * scale).reshape(out_dim, in_dim)
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    scale = (hi - lo).clamp_min(1e-12) / (2**bits - 1)
    zero = (-lo / scale).round()
    q = ((x / scale).round() + zero).clamp(0, 2**bits - 1)
    return ((q - zero) * scale).reshape(out_dim, in_dim)
