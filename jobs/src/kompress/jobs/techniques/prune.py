"""Pruning: unstructured magnitude pruning (zeroed weights) or structured pruning (removed channels, FFN
neurons or attention heads), optionally followed by recovery fine-tuning.

- magnitude without `finetune` (the default) works on the ONNX graph: weight tensors lose their smallest
  values. Zeroed weights make a model compressible and prepare it for sparse kernels, but dense runtimes run it
  at the same speed and the ONNX file keeps its size: the report says so.
- magnitude with `finetune` works in PyTorch: torch.nn.utils.prune masks the weights, the masked model is
  fine-tuned (distilled from the dense one) so the remaining weights compensate, then the masks are made
  permanent.
- structured works in PyTorch (see `structure.py`): whole structures are removed, so the exported graph has
  smaller tensors and runs faster; recovery fine-tuning distils the pruned model from the unpruned one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.io import onnx_utils
from kompress.jobs.io.checkpoints import Checkpoints
from kompress.jobs.io.torch_model import TorchModel, to_tensors
from kompress.jobs.tasks import registry as tasks
from kompress.jobs.techniques.base import StepResult, training_rows
from kompress.jobs.techniques.configs import PruneConfig, TrainingConfig
from kompress.jobs.techniques.context import StepContext
from kompress.jobs.techniques.structure import prune_structured
from kompress.jobs.techniques.training import FitResult, distillation_loss, fit

_WEIGHT_OPS = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1}  # op -> input index of the weight
TEMPERATURE = 2.0
"""Softmax temperature of the recovery distillation for classifiers (softer targets carry more of the
teacher's ranking than its top-1 alone)."""
_TEACHER_CACHE_BYTES = 512 * 2**20
"""Teacher outputs are computed once and kept when they fit in this much memory, else per batch."""
_UNSTRUCTURED_NOTE = ("Unstructured sparsity: dense runtimes gain little speed and the file keeps its size; "
                      "combine with quantization, or use structured pruning for latency.")


def default_finetune(origin: str) -> TrainingConfig:
    """Recovery fine-tuning when `finetune` is omitted for structured pruning: 3 epochs at learning rate 1e-3
    for conv/MLP models from ONNX (small models retrain fast and need a large step to re-balance), 1 epoch at
    5e-5 for Hugging Face transformers (pretrained weights; larger steps erase what pretraining learned)."""
    if origin == "huggingface":
        return TrainingConfig(epochs=1, batch_size=16, learning_rate=5e-5)
    return TrainingConfig(epochs=3, batch_size=32, learning_rate=1e-3)


def prune(model: Path | TorchModel, config: PruneConfig, ctx: StepContext) -> StepResult:
    if config.method == "structured":
        return _structured(model, config, ctx)  # type: ignore[arg-type]
    if config.finetune is not None:
        return _magnitude_torch(model, config, ctx)  # type: ignore[arg-type]
    return _magnitude_onnx(model, config, ctx)  # type: ignore[arg-type]


# ---- structured (PyTorch) ----

def _structured(model: TorchModel, config: PruneConfig, ctx: StepContext) -> StepResult:
    data = training_rows(ctx, "prune")
    finetune = _finetune_config(config.finetune, model.origin)
    teacher = model.clone() if finetune.epochs > 0 else None
    facts = prune_structured(model, config.target, config.sparsity, config.round_to,
                             {k: v for k, v in data.items() if k != "labels"}, config.importance)
    if ctx.progress:
        ctx.progress.info(f"prune: removed {facts['structuresRemoved']} of {facts['structuresTotal']} "
                          f"{facts['unit']}; parameters {facts['parametersBefore']} -> {facts['parametersAfter']}")
    fitted = _recover(model, teacher, finetune, data, ctx, "prune recovery") if teacher is not None else None
    details = {"method": "structured", **facts, "finetune": fitted.details() if fitted else None,
               "finetuneConfig": finetune.model_dump(mode="json", by_alias=True)}
    if fitted:
        details["finetuneTeacher"] = "the unpruned model"
    return StepResult(model_path=model, details=details)


def _finetune_config(given: TrainingConfig | None, origin: str) -> TrainingConfig:
    """The fields a spec sets override the default for the model's origin (so `{epochs: 5}` keeps the
    default learning rate for this kind of model)."""
    default = default_finetune(origin)
    if given is None:
        return default
    return default.model_copy(update={f: getattr(given, f) for f in given.model_fields_set})


# ---- magnitude with fine-tuning (PyTorch) ----

def _magnitude_torch(model: TorchModel, config: PruneConfig, ctx: StepContext) -> StepResult:
    from torch import nn
    from torch.nn.utils import prune as tprune

    assert config.finetune is not None
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)
    layers = [m for m in model.module.modules()
              if isinstance(m, kinds) and m.weight.numel() >= config.min_elements]
    if not layers:
        raise InvalidInputError("the model has no Conv/Linear weight tensors large enough to prune "
                                f"(minElements {config.min_elements})", field="techniques.prune")
    data = training_rows(ctx, "prune")
    finetune = _finetune_config(config.finetune, model.origin)
    teacher = model.clone() if finetune.epochs > 0 else None
    before = model.parameter_count()
    # the masks stay in place while fine-tuning (zeroed weights get no updates), then become permanent
    if config.scope == "global":
        tprune.global_unstructured([(m, "weight") for m in layers], pruning_method=tprune.L1Unstructured,
                                   amount=config.sparsity)
    else:
        for m in layers:
            tprune.l1_unstructured(m, "weight", amount=config.sparsity)
    fitted = _recover(model, teacher, finetune, data, ctx, "prune fine-tuning") if teacher else None
    for m in layers:
        tprune.remove(m, "weight")
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    total = sum(m.weight.numel() for m in layers)
    return StepResult(model_path=model, details={
        "method": "magnitude", "scope": config.scope, "targetSparsity": config.sparsity,
        "achievedSparsity": round(zeros / total, 4), "prunedTensors": len(layers), "prunedParameters": total,
        "parametersBefore": before, "parametersAfter": model.parameter_count(), "nonzeroParametersAfter":
            model.parameter_count() - zeros,
        "finetune": fitted.details() if fitted else None,
        "finetuneConfig": finetune.model_dump(mode="json", by_alias=True), "note": _UNSTRUCTURED_NOTE,
    })


# ---- recovery fine-tuning, shared ----

def _recover(student: TorchModel, teacher: TorchModel, config: TrainingConfig, data: dict[str, np.ndarray],
             ctx: StepContext, label: str) -> FitResult:
    """Distil ``student`` from ``teacher`` on the training rows with the shared, resumable training loop.

    On a resumed Job the caller has pruned the same model the same way (deterministic), so the checkpoint's
    weights fit the student's shapes; `fit` restores them."""
    import torch

    names = student.input_names
    n = len(data[names[0]])
    if config.max_samples:
        n = min(n, config.max_samples)
    rows = {k: data[k][:n] for k in names}
    teacher.module.eval()
    with torch.no_grad():
        probe = teacher.module(*to_tensors({k: v[:2] for k, v in rows.items()}, names))
    labels = data.get("labels")
    # labels help classifiers only: integer class ids that index the output's classes
    if (labels is not None and not tasks.get(ctx.task).embeddings and probe.ndim == 2 and labels.dtype.kind in "iu"
            and labels.ndim == 1 and len(labels) >= n and int(labels[:n].max(initial=0)) < probe.shape[1]):
        rows["labels"] = labels[:n].astype(np.int64)
    cached = n * probe[0].numel() * 4 <= _TEACHER_CACHE_BYTES
    if cached:
        # the teacher is frozen: one pass instead of one per epoch
        outs = []
        with torch.no_grad():
            for start in range(0, n, 64):
                batch = {k: rows[k][start:start + 64] for k in names}
                outs.append(teacher.module(*to_tensors(batch, names)).float().numpy())
        rows["__teacher"] = np.concatenate(outs)

    norms = [m for m in student.module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def loss_fn(batch: dict[str, np.ndarray]) -> Any:
        # Match the teacher's deterministic outputs: dropout (fit switches it on) only adds noise a few hundred
        # rows cannot average out (measured on MiniLM: it undid the pruning compensation). Batch norms keep
        # training so their statistics follow the pruned layers.
        if student.module.training:
            student.module.eval()
            for m in norms:
                m.train()
        inputs = to_tensors(batch, names)
        out = student.module(*inputs)
        if cached:
            target = torch.from_numpy(batch["__teacher"])
        else:
            with torch.no_grad():
                target = teacher.module(*inputs)
        hard = torch.from_numpy(batch["labels"]) if "labels" in batch else None
        return distillation_loss(out, target, ctx.task, TEMPERATURE, hard)

    return fit(student.module, loss_fn, rows, config, seed=ctx.seed,
               checkpoints=ctx.checkpoints or Checkpoints(None), progress=ctx.progress, label=label)


# ---- magnitude on the ONNX graph ----

def _weight_initializers(model) -> list:  # type: ignore[no-untyped-def]
    inits = {i.name: i for i in model.graph.initializer}
    names: list[str] = []
    for node in model.graph.node:
        idx = _WEIGHT_OPS.get(node.op_type)
        if idx is not None and len(node.input) > idx and node.input[idx] in inits and node.input[idx] not in names:
            names.append(node.input[idx])
    return [inits[n] for n in names]


def _magnitude_onnx(model_path: Path, config: PruneConfig, ctx: StepContext) -> StepResult:
    from onnx import numpy_helper

    model = onnx_utils.load(model_path)
    tensors = [t for t in _weight_initializers(model) if int(np.prod(t.dims)) >= config.min_elements]
    if not tensors:
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
        "note": _UNSTRUCTURED_NOTE,
    })
