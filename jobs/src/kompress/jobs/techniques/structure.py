"""Structured pruning of a `TorchModel`: whole conv channels / hidden neurons, transformer FFN neurons or
attention heads are removed, so the exported ONNX graph has smaller weight tensors and really runs faster.

- channels (ONNX-sourced conv/MLP models, as onnx2torch modules): Torch-Pruning's dependency graph finds every
  layer coupled to a channel (the consumer conv or linear, norms, flatten, residual adds) and slices them all.
  The layer that produces the model output is never pruned, so output shapes stay as they were.
- ffn (BERT-style Hugging Face encoders): neurons of each layer's intermediate.dense (its output rows and
  output.dense's input columns).
- heads (BERT-style encoders): whole heads of each self-attention (query/key/value rows, attention.output.dense
  columns); the module attributes that size the attention reshape are updated so the export stays valid.

Every layer loses the same fraction (rounded so kept counts are a multiple of ``round_to``), which keeps
per-layer shapes uniform (one head count for the whole model, as ONNX Runtime's attention fusion expects).

Importance ("activation", the default) is each structure's contribution to the next layer's output energy
measured on a few hundred training rows, E[||W_next[:, i] * x_i||^2]; it ranks FFN neurons and heads far better
than weight norms. "magnitude" uses weight norms only and needs no data.

Pruning is deterministic for a given model and data, which resuming a recovery fine-tune relies on: the
checkpoint holds weights of the pruned shapes. `prune_structured` is also the function to call for a
structurally pruned copy of a model (e.g. a distillation student): clone, then prune the clone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.io.torch_model import TorchModel, to_tensors

Target = Literal["auto", "channels", "ffn", "heads"]
Importance = Literal["activation", "magnitude"]

IMPORTANCE_ROWS = 256
"""Rows forwarded to measure activation importance (a few hundred rank structures stably)."""
_BATCH = 32
_FIELD = "techniques.prune.target"


def resolve_target(model: TorchModel, target: str) -> str:
    """auto: FFN neurons for Hugging Face transformers, channels for conv/MLP models from ONNX."""
    if target != "auto":
        return target
    return "ffn" if model.origin == "huggingface" else "channels"


def kept_count(total: int, sparsity: float, round_to: int, where: str, unit: str) -> int:
    """How many of ``total`` structures stay: the nearest multiple of ``round_to`` to total * (1 - sparsity)."""
    step = min(round_to, total)  # a layer narrower than round_to is rounded in its own width
    kept = min(total, math.floor(total * (1.0 - sparsity) / step + 0.5) * step)
    if kept <= 0:
        raise InvalidInputError(
            f"sparsity {sparsity} leaves no {unit} in {where} ({total} {unit}, rounded to multiples of "
            f"{step}); lower the sparsity or roundTo", field="techniques.prune.sparsity")
    return kept


def prune_structured(model: TorchModel, target: str, sparsity: float, round_to: int = 8,
                     importance_data: dict[str, np.ndarray] | None = None,
                     importance: str = "activation") -> dict[str, Any]:
    """Remove ``sparsity`` of the structures named by ``target`` from ``model`` (edited in place).

    ``importance_data``: input rows (numpy, by input name) for activation importance; without them, or with
    importance "magnitude", weight norms rank the structures. Returns facts for the report."""
    import torch

    target = resolve_target(model, target)
    if importance != "magnitude" and not importance_data:
        importance = "magnitude"
    before = model.parameter_count()
    module = model.module
    modes = {m: m.training for m in module.modules()}  # restored as found (a wrapper may differ from its model)
    module.eval()  # importance is measured without dropout
    try:
        with torch.no_grad():
            reference = module(*model.example_args)
        if target == "channels":
            layers = _prune_channels(model, sparsity, round_to, importance_data, importance)
            unit = "channels"
        elif target in ("ffn", "heads"):
            blocks = _bert_layers(model)
            if target == "ffn":
                layers = _prune_ffn(model, blocks, sparsity, round_to, importance_data, importance)
                unit = "neurons"
            else:
                layers = _prune_heads(model, blocks, sparsity, importance_data, importance)
                unit = "heads"
        else:
            raise InvalidInputError(f"unknown target {target!r}", field=_FIELD)
        with torch.no_grad():
            try:
                after_out = module(*model.example_args)
            except RuntimeError as err:
                raise InvalidInputError(f"after removing {unit} the model no longer runs ({str(err)[:200]}); "
                                        "the graph probably holds a fixed shape that depends on them",
                                        field=_FIELD) from None
        if tuple(after_out.shape) != tuple(reference.shape):
            raise InvalidInputError(f"removing {unit} changed the output shape from {tuple(reference.shape)} "
                                    f"to {tuple(after_out.shape)}", field=_FIELD)
    finally:
        for m, mode in modes.items():
            m.train(mode)
    total = sum(layer["before"] for layer in layers)
    removed = sum(layer["before"] - layer["after"] for layer in layers)
    after = model.parameter_count()
    return {"target": target, "unit": unit, "importance": importance, "requestedSparsity": sparsity,
            "achievedSparsity": round(removed / total, 4) if total else 0.0,
            "structuresRemoved": removed, "structuresTotal": total,
            "parametersBefore": before, "parametersAfter": after,
            "parameterReduction": round(1.0 - after / before, 4) if before else 0.0,
            "roundTo": round_to if target != "heads" else 1, "layers": layers}


def _batches(model: TorchModel, data: dict[str, np.ndarray]) -> Iterator[tuple[tuple, Any]]:
    """Input batches (tensors in input order) over the first IMPORTANCE_ROWS rows, with the attention mask
    (bool [batch, seq]) when the model takes one, so padding tokens do not count."""
    n = min(IMPORTANCE_ROWS, len(data[model.input_names[0]]))
    for start in range(0, n, _BATCH):
        rows = {k: data[k][start:start + _BATCH] for k in model.input_names}
        args = to_tensors(rows, model.input_names)
        mask = args[model.input_names.index("attention_mask")].bool() if "attention_mask" in model.input_names \
            else None
        yield args, mask


def _measure(model: TorchModel, data: dict[str, np.ndarray], hooks: list[tuple[Any, Callable]]) -> None:
    """Forward the importance rows with forward-pre hooks ``(module, fn(inputs, mask))`` installed."""
    import torch

    state: dict[str, Any] = {"mask": None}
    handles = [m.register_forward_pre_hook(lambda _m, inputs, fn=fn: fn(inputs[0], state["mask"]))
               for m, fn in hooks]
    try:
        with torch.no_grad():
            for args, mask in _batches(model, data):
                state["mask"] = mask
                model.module(*args)
    finally:
        for h in handles:
            h.remove()


def _tokens(x: Any, mask: Any) -> Any:
    """[batch, seq, features] -> [real tokens, features] (all positions when there is no mask)."""
    if mask is not None and x.ndim == 3 and tuple(mask.shape) == tuple(x.shape[:2]):
        return x[mask]
    return x.reshape(-1, x.shape[-1])


# ---- channels: conv / MLP models through Torch-Pruning's dependency graph ----

def _prunable_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _prune_channels(model: TorchModel, sparsity: float, round_to: int, data: dict[str, np.ndarray] | None,
                    importance: str) -> list[dict[str, Any]]:
    import torch
    import torch_pruning as tp

    if model.origin == "huggingface":
        raise InvalidInputError("target channels is for conv/MLP models; prune a transformer's ffn neurons or "
                                "attention heads", field=_FIELD)
    module = model.module
    names = {m: n for n, m in module.named_modules()}
    kinds = _prunable_types()
    order = _layers_in_call_order(model, kinds)
    stats: dict[Any, Any] = {}
    if len(order) < 2:
        raise InvalidInputError("target channels found nothing to prune: the model needs a Conv or Linear layer "
                                "before the one producing its output", field=_FIELD)
    output_layer = order[-1]  # its output channels are the model's outputs: never pruned

    if importance == "activation" and data:
        # E[x_j^2] per input channel of every conv/linear: with its weight column norm, the energy channel j
        # sends into that layer
        def energy(m: Any) -> Callable:
            def fn(x: Any, mask: Any) -> None:
                if isinstance(m, torch.nn.Linear):
                    t = _tokens(x, mask)
                    per, count = t.pow(2).sum(0), len(t)
                else:  # [batch, channels, *spatial]
                    per, count = x.pow(2).transpose(0, 1).reshape(x.shape[1], -1).sum(1), x.numel() // x.shape[1]
                total, n = stats.get(m, (0.0, 0))
                stats[m] = (total + per.double(), n + count)
            return fn

        _measure(model, data, [(m, energy(m)) for m in order])
    graph = tp.DependencyGraph().build_dependency(module, example_inputs=model.example_args)
    magnitude = tp.importance.GroupMagnitudeImportance(p=2)
    layers: list[dict[str, Any]] = []
    for group in graph.get_all_groups(ignored_layers=[output_layer], root_module_types=list(kinds)):
        root = group[0].dep.target.module
        total = len(group[0].idxs)
        name = names.get(root, type(root).__name__)
        kept = kept_count(total, sparsity, round_to, f"layer {name}", "channels")
        layers.append({"name": name, "before": total, "after": kept})
        if kept >= total:
            continue
        scores = _consumer_energy(graph, group, stats, total) if stats else None
        if scores is None:
            scores = magnitude(group)
        drop = torch.argsort(scores.double(), stable=True)[: total - kept].sort().values.tolist()
        group.prune(idxs=drop)
    if not layers:
        raise InvalidInputError("target channels found nothing to prune: no Conv/Linear channels can be removed "
                                "without changing the model's output", field=_FIELD)
    return layers


def _layers_in_call_order(model: TorchModel, kinds: tuple) -> list[Any]:
    """The conv/linear layers of the model in the order one forward pass calls them."""
    import torch

    order: list[Any] = []

    def record(m: Any) -> Callable:
        def hook(_m: Any, inputs: tuple) -> None:
            if m not in order:
                order.append(m)
        return hook

    handles = [m.register_forward_pre_hook(record(m)) for m in model.module.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model.module(*model.example_args)
    for h in handles:
        h.remove()
    return order


def _consumer_energy(graph: Any, group: Any, stats: dict[Any, Any], total: int) -> Any:
    """Per root channel: sum over the layers that read it of E[x_j^2] * ||W[:, j]||^2 (None when no measured
    conv/linear consumes the group, e.g. a grouped conv)."""
    import torch

    scores = torch.zeros(total, dtype=torch.float64)
    found = False
    for item in group:
        m = item.dep.target.module
        if not isinstance(m, _prunable_types()) or graph.is_out_channel_pruning_fn(item.dep.handler):
            continue
        if m not in stats or getattr(m, "groups", 1) != 1:
            continue
        sums, count = stats[m]
        mean_sq = sums / max(1, count)
        w = m.weight.detach().double()  # type: ignore[attr-defined]
        column = w.pow(2).transpose(0, 1).reshape(w.shape[1], -1).sum(1)
        if len(mean_sq) != len(column):
            continue
        idxs = torch.as_tensor(item.idxs, dtype=torch.long)
        scores.index_add_(0, torch.as_tensor(item.root_idxs, dtype=torch.long), mean_sq[idxs] * column[idxs])
        found = True
    return scores if found else None


# ---- transformers: FFN neurons and attention heads of BERT-style encoder layers ----

def _bert_layers(model: TorchModel) -> list[tuple[str, Any]]:
    """Encoder layers with the BERT layout (attention.self.query/key/value, attention.output.dense,
    intermediate.dense, output.dense): BERT, RoBERTa, ELECTRA, MiniLM and similar."""
    from torch import nn

    hf = model.hf_model
    if model.origin != "huggingface" or hf is None:
        raise InvalidInputError("targets ffn and heads need a Hugging Face transformer (model.format: "
                                "huggingface); use target channels for conv/MLP models", field=_FIELD)
    out = []
    for name, m in hf.named_modules():
        ok = all(isinstance(_get(m, p), nn.Linear) for p in (
            "intermediate.dense", "output.dense", "attention.self.query", "attention.self.key",
            "attention.self.value", "attention.output.dense"))
        if ok and hasattr(_get(m, "attention.self"), "attention_head_size"):
            out.append((name, m))
    if not out:
        raise InvalidInputError(f"{type(hf).__name__} has no BERT-style encoder layers "
                                "(intermediate.dense / output.dense / attention.self); ffn and heads pruning "
                                "support BERT-like encoders", field=_FIELD)
    return out


def _get(m: Any, path: str) -> Any:
    for part in path.split("."):
        m = getattr(m, part, None)
        if m is None:
            return None
    return m


class _InputStats:
    """Mean and covariance of a linear layer's input over the measured (real) tokens."""

    def __init__(self) -> None:
        self.count = 0
        self.sum: Any = 0.0
        self.gram: Any = 0.0

    def add(self, x: Any, mask: Any) -> None:
        t = _tokens(x, mask).float()
        self.count += len(t)
        self.sum = self.sum + t.double().sum(0)
        self.gram = self.gram + (t.T @ t).double()  # float32 product, float64 accumulation

    def mean(self) -> Any:
        return self.sum / max(1, self.count)

    def covariance(self) -> Any:
        import torch

        mu = self.mean()
        return self.gram / max(1, self.count) - torch.outer(mu, mu)


def _input_stats(model: TorchModel, layers: list[Any], data: dict[str, np.ndarray]) -> list[_InputStats]:
    stats = [_InputStats() for _ in layers]
    _measure(model, data, [(layer, st.add) for layer, st in zip(layers, stats, strict=True)])
    return stats


def _compensate(linear: Any, drop: list[int], stats: _InputStats) -> None:
    """Before ``linear`` loses the input columns ``drop``, let the kept columns and the bias take over what
    the dropped inputs contributed: least squares on the measured inputs,
    min E||W_drop x_drop - (dW x_keep + db)||^2, lightly damped (1% of the mean variance) so a few hundred
    rows do not overfit. The bias alone carries the dropped inputs' mean."""
    import torch

    cov, mu = stats.covariance(), stats.mean()
    keep = torch.tensor(sorted(set(range(linear.in_features)) - set(drop)), dtype=torch.long)
    gone = torch.tensor(drop, dtype=torch.long)
    w = linear.weight.detach().double()
    kk = cov[keep][:, keep]
    damp = 0.01 * float(torch.diagonal(kk).mean().clamp(min=1e-12))
    solution = torch.linalg.solve(kk + damp * torch.eye(len(keep), dtype=kk.dtype), cov[gone][:, keep].T).T
    delta = w[:, gone] @ solution
    shift = w[:, gone] @ mu[gone] - delta @ mu[keep]
    with torch.no_grad():
        linear.weight[:, keep] += delta.to(linear.weight.dtype)
        if linear.bias is not None:
            linear.bias += shift.to(linear.bias.dtype)


def _prune_ffn(model: TorchModel, blocks: list[tuple[str, Any]], sparsity: float, round_to: int,
               data: dict[str, np.ndarray] | None, importance: str) -> list[dict[str, Any]]:
    import torch
    import torch_pruning as tp

    stats = _input_stats(model, [b.output.dense for _, b in blocks], data) \
        if importance == "activation" and data else None
    layers = []
    for i, (name, block) in enumerate(blocks):
        up, down = block.intermediate.dense, block.output.dense
        total = up.out_features
        kept = kept_count(total, sparsity, round_to, f"layer {name}", "neurons")
        layers.append({"name": f"{name}.intermediate.dense", "before": total, "after": kept})
        if kept >= total:
            continue
        column = down.weight.detach().double().pow(2).sum(0)
        if stats:
            # fluctuation x column norm (FLAP): a neuron's mean is compensated below, its variance is lost
            scores = torch.diagonal(stats[i].covariance()) * column
        else:
            scores = up.weight.detach().double().pow(2).sum(1).sqrt() * column.sqrt()
        drop = torch.argsort(scores, stable=True)[: total - kept].sort().values.tolist()
        if stats:
            _compensate(down, drop, stats[i])
        tp.prune_linear_out_channels(up, drop)
        tp.prune_linear_in_channels(down, drop)
    return layers


def _prune_heads(model: TorchModel, blocks: list[tuple[str, Any]], sparsity: float,
                 data: dict[str, np.ndarray] | None, importance: str) -> list[dict[str, Any]]:
    import torch
    import torch_pruning as tp

    stats = _input_stats(model, [b.attention.output.dense for _, b in blocks], data) \
        if importance == "activation" and data else None
    layers = []
    counts, sizes = set(), set()
    for i, (name, block) in enumerate(blocks):
        attn, out = block.attention.self, block.attention.output.dense
        heads, size = attn.num_attention_heads, attn.attention_head_size
        kept = kept_count(heads, sparsity, 1, f"layer {name}", "heads")
        counts.add(kept)
        sizes.add(size)
        layers.append({"name": f"{name}.attention", "before": heads, "after": kept})
        if kept >= heads:
            continue
        w = out.weight.detach().double().reshape(out.out_features, heads, size)
        if stats:
            # the variance head h sends through the output projection: trace(W_h^T W_h Cov_h)
            cov = stats[i].covariance().reshape(heads, size, heads, size)
            per_head = torch.stack([cov[h, :, h, :] for h in range(heads)])
            scores = (torch.einsum("ohd,ohe->hde", w, w) * per_head).sum((1, 2))
        else:
            scores = sum(lin.weight.detach().double().reshape(heads, size, -1).pow(2).sum((1, 2))
                         for lin in (attn.query, attn.key, attn.value)) + w.pow(2).sum((0, 2))
        drop_heads = torch.argsort(scores, stable=True)[: heads - kept].sort().values.tolist()
        drop = [h * size + j for h in drop_heads for j in range(size)]
        if stats:
            _compensate(out, drop, stats[i])
        for lin in (attn.query, attn.key, attn.value):
            tp.prune_linear_out_channels(lin, drop)
        tp.prune_linear_in_channels(out, drop)
        # the attention reshape reads these (view(..., -1, head_size) and all_head_size)
        attn.num_attention_heads = kept
        attn.all_head_size = kept * size
    if len(counts) == 1 and len(sizes) == 1:
        # ONNX Runtime's attention fusion needs the head count and the attention width (heads x head size, no
        # longer the hidden size): the exported file's metadata carries both
        model.metadata["hf.num_attention_heads"] = str(counts.pop())
        model.metadata["hf.attention_head_size"] = str(sizes.pop())
    return layers
