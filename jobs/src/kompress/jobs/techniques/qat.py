"""Quantization-aware training (QAT): fine-tune with INT8 rounding simulated in the forward pass, then export
an ONNX QDQ model that ONNX Runtime runs with INT8 kernels (QLinearConv, QGemm, ...).

torch.ao FX graph mode inserts fake-quantize modules (per-channel symmetric INT8 weights, per-tensor
asymmetric UINT8 activations: the U8S8 QDQ format ONNX Runtime runs fastest on x86); the training loop is the
shared one (labels' cross-entropy plus distillation from the float model). The TorchScript exporter turns
each fake-quantize into a QuantizeLinear/DequantizeLinear pair; the exported weights are then stored as INT8
initializers, so the file is about 4x smaller, as after post-training quantization.

torch.ao.quantization is deprecated in favour of torchao; it is used here only because QAT needs training
(post-training quantization stays with ONNX Runtime: the `quantize` technique). FX tracing limits QAT to
models without data-dependent Python control flow: convolutional and MLP models from ONNX qualify, Hugging
Face transformers do not."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.io import onnx_utils
from kompress.jobs.io.checkpoints import Checkpoints
from kompress.jobs.io.torch_model import TorchModel, to_tensors
from kompress.jobs.techniques import training
from kompress.jobs.techniques.base import StepResult, training_rows
from kompress.jobs.techniques.configs import QATConfig
from kompress.jobs.techniques.context import StepContext

FIELD = "techniques.qat"
QCONFIG = {"weights": "int8, per-channel symmetric (zero point 0), moving-average min/max",
           "activations": "uint8, per-tensor asymmetric, moving-average min/max",
           "format": "ONNX QDQ (QuantizeLinear/DequantizeLinear), INT8 weight initializers"}
# ONNX Runtime's kernels that show the QDQ graph really runs in integer arithmetic
_INT8_KERNELS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "QLinearAdd",
                 "QLinearMul", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat",
                 "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QAttention", "DynamicQuantizeMatMul"}


@dataclass
class QuantizedTorchModel(TorchModel):
    """TorchModel whose export stores the quantized weights as INT8 initializers."""

    def export(self, out: Path) -> Path:
        super().export(out)
        fold_weight_quantizers(out)
        return out

    def clone(self) -> TorchModel:
        return type(self)(**vars(super().clone()))


def qat(model: TorchModel, config: QATConfig, ctx: StepContext) -> StepResult:
    import torch
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats
    from torch.ao.quantization import disable_observer

    if model.origin == "huggingface":
        raise InvalidInputError(
            "QAT supports FX-traceable models (convolutional and MLP models from ONNX); Hugging Face "
            "transformers cannot be traced by torch.fx: use quantize (ONNX Runtime post-training "
            "quantization, method: dynamic or static) for transformers", field=FIELD)
    torch.manual_seed(ctx.seed)
    teacher = model.clone().module.eval()  # the float model, distilled from while the student learns to round
    for p in teacher.parameters():
        p.requires_grad_(False)
    prepared = prepare(model)
    fake_quants = _fake_quantizers(prepared)
    calibrated = _calibrate(prepared, model.input_names, ctx, config.calibration_samples)
    # Before spending time on training: does the export give ONNX Runtime anything to run in INT8?
    kernels = _int8_kernels(_as_result(prepared, model), ctx.out_path("check"))
    if not kernels:
        raise InvalidInputError("ONNX Runtime runs no operator of this model in INT8 after QAT (no Conv, Gemm or "
                                "MatMul was quantized); QAT has nothing to gain here", field=FIELD)
    if ctx.progress:
        ctx.progress.info(f"qat: {len(fake_quants)} fake-quantize modules, ranges calibrated on {calibrated} rows, "
                          f"INT8 kernels {kernels}")

    rows, has_labels = _rows_and_labels(ctx)
    checkpoints = ctx.checkpoints or Checkpoints(None)
    batches_per_epoch, freeze_step, step = _observer_schedule(config, rows, checkpoints)
    frozen = False
    names = model.input_names

    def loss_fn(batch: training.Batch) -> Any:
        nonlocal step, frozen
        if not frozen and step >= freeze_step and config.freeze_observers_after < 1:
            prepared.apply(disable_observer)
            prepared.apply(freeze_bn_stats)
            frozen = True
        step += 1
        args = to_tensors({k: batch[k] for k in names}, names)
        out = prepared(*args)
        with torch.no_grad():
            target = teacher(*args)
        labels = torch.from_numpy(batch["labels"].astype(np.int64)) if has_labels else None
        return training.distillation_loss(out, target, ctx.task, config.temperature, labels, config.label_weight)

    fitted = training.fit(prepared, loss_fn, rows, config, seed=ctx.seed, checkpoints=checkpoints,
                          progress=ctx.progress, label="qat")
    prepared.eval()
    # Export reads the learned ranges; observers must not move them while the exporter traces
    prepared.apply(disable_observer)
    details: dict[str, Any] = {
        "qconfig": QCONFIG, "fakeQuantModules": len(fake_quants), "calibrationSamples": calibrated,
        "observerFreezeEpoch": round(freeze_step / batches_per_epoch, 2) if config.freeze_observers_after < 1
        else None,
        "loss": ("cross-entropy on labels + distillation from the float model" if has_labels
                 else "distillation from the float model"),
        "int8Kernels": kernels, **fitted.details(),
    }
    return StepResult(model_path=_as_result(prepared, model), details=details)


def _observer_schedule(config: QATConfig, rows: dict[str, np.ndarray],
                       checkpoints: Checkpoints) -> tuple[int, int, int]:
    """Batches per epoch, the step at which observers freeze, and the step training starts at: a resumed run
    starts counting at the saved position, so observers freeze at the same step as an uninterrupted one."""
    n = len(next(iter(rows.values())))
    if config.max_samples:
        n = min(n, config.max_samples)
    batches_per_epoch = max(1, -(-n // config.batch_size))
    freeze_step = round(config.freeze_observers_after * batches_per_epoch * config.epochs)
    saved = checkpoints.read_json("train.json") or {}
    return batches_per_epoch, freeze_step, saved.get("epoch", 0) * batches_per_epoch + saved.get("batch", 0)


def _as_result(prepared: Any, model: TorchModel) -> TorchModel:
    return QuantizedTorchModel(prepared, list(model.input_names), model.output_name, dict(model.dynamic_axes),
                               model.example_args, model.origin, dict(model.metadata))


def prepare(model: TorchModel) -> Any:
    """The model with fake-quantize modules inserted (a deterministic function of the model, so a resumed run
    rebuilds the same module tree before loading the checkpointed weights, ranges and observer states)."""
    import copy

    import torch
    from torch.ao.quantization import FakeQuantize, QConfig, QConfigMapping
    from torch.ao.quantization.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    # torch's own x86 QAT qconfig uses FusedMovingAvgObsFakeQuantize (no ONNX symbolic) and 7-bit activations
    # (the exporter adds a Clip that breaks ONNX Runtime's QDQ fusion): plain FakeQuantize with full ranges.
    activation = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                        dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    weight = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                                    dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    mapping = QConfigMapping().set_global(QConfig(activation=activation, weight=weight))
    module = copy.deepcopy(model.module).train()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the torch.ao deprecation notice (see the module docstring)
            return prepare_qat_fx(module, mapping, example_inputs=model.example_args,
                                  prepare_custom_config=_leaves(module), backend_config=_backend())
    except Exception as err:
        raise InvalidInputError(
            f"QAT supports FX-traceable models (convolutional and MLP models from ONNX); this model cannot be "
            f"traced ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); use quantize "
            "(ONNX Runtime post-training quantization) instead", field=FIELD) from None


def _backend() -> Any:
    """torch's native backend config, plus nn.Flatten (what onnx2torch builds) sharing its input's quantization
    parameters like torch.flatten does: with its own, the exported graph has a DequantizeLinear/Flatten/
    QuantizeLinear requantization that ONNX Runtime cannot drop."""
    import torch
    from torch.ao.quantization.backend_config import BackendPatternConfig, ObservationType, get_native_backend_config

    backend = get_native_backend_config()
    flatten = next(c for c in backend.configs if c.pattern is torch.flatten)
    backend.set_backend_pattern_config(
        BackendPatternConfig(torch.nn.Flatten).set_observation_type(ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT)
        .set_dtype_configs(flatten.dtype_configs))
    return backend


def _leaves(module: Any) -> Any:
    """onnx2torch's own modules (Shape, Reshape, Gather, ...) stay opaque to the FX tracer: their forward
    branches on tensor values, which symbolic tracing cannot follow. They run in float between quantized layers."""
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig

    classes = sorted({type(m) for m in module.modules() if type(m).__module__.startswith("onnx2torch.")},
                     key=lambda c: c.__qualname__)
    return PrepareCustomConfig().set_non_traceable_module_classes(classes)


def _fake_quantizers(module: Any) -> list[Any]:
    from torch.ao.quantization import FakeQuantizeBase

    return [m for m in module.modules() if isinstance(m, FakeQuantizeBase)]


def _calibrate(module: Any, names: list[str], ctx: StepContext, limit: int) -> int:
    """Initialise the activation and weight ranges from the calibration rows (untrained observers would start
    at scale 1)."""
    import torch

    rows = ctx.calibration
    n = min(limit, ctx.require_calibration("QAT's range calibration", FIELD))
    module.eval()
    with torch.no_grad():
        for start in range(0, n, 64):
            module(*to_tensors({k: rows[k][start:min(n, start + 64)] for k in names}, names))
    return n


def _rows_and_labels(ctx: StepContext) -> tuple[dict[str, np.ndarray], bool]:
    rows = dict(training_rows(ctx, "qat"))
    labels = rows.get("labels")
    # cross-entropy needs class indices; other labels (scores, vectors) are left to distillation
    has_labels = labels is not None and labels.dtype.kind in "iu" and labels.ndim == 1
    if labels is not None and not has_labels:
        del rows["labels"]
    return rows, has_labels


def fold_weight_quantizers(path: Path) -> int:
    """Replace QuantizeLinear nodes on constant weights by their INT8 result (DequantizeLinear then reads an
    INT8 initializer, as in ONNX Runtime's own QDQ models); returns how many were folded."""
    from onnx import numpy_helper

    model = onnx_utils.load(path)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    # the exporter shares equal zero points through Identity nodes
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}

    def const(name: str) -> np.ndarray | None:
        tensor = inits.get(alias.get(name, name))
        return None if tensor is None else numpy_helper.to_array(tensor)

    renamed: dict[str, str] = {}
    folded = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits or len(node.input) < 3:
            continue
        x, scale, zero = const(node.input[0]), const(node.input[1]), const(node.input[2])
        if x is None or scale is None or zero is None or zero.dtype not in (np.int8, np.uint8):
            continue
        if scale.size > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        # the same arithmetic as torch's fake quantization (multiply by the reciprocal, round half to even)
        info = np.iinfo(zero.dtype)
        q = np.rint(x.astype(np.float32) * (np.float32(1) / scale.astype(np.float32))) + zero.astype(np.int32)
        name = f"{node.input[0]}_quantized"
        graph.initializer.append(numpy_helper.from_array(np.clip(q, info.min, info.max).astype(zero.dtype), name))
        renamed[node.output[0]] = name
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx_utils.save(model, path)
    return len(folded)


def _int8_kernels(result: TorchModel, folder: Path) -> dict[str, int]:
    """Export once and ask ONNX Runtime which integer kernels its optimized graph runs (a QDQ graph whose pairs
    it cannot fuse would run in float, only slower). Leaves the observers enabled."""
    import onnxruntime as ort
    from torch.ao.quantization import disable_observer, enable_observer

    result.module.apply(disable_observer)  # tracing for export must not move the calibrated ranges
    try:
        exported = result.export(folder / "model.onnx")
    except Exception as err:
        raise InvalidInputError(
            f"the fake-quantized model cannot be exported to ONNX ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''}); use quantize (ONNX Runtime post-training "
            "quantization) instead", field=FIELD) from None
    finally:
        result.module.apply(enable_observer)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    options.log_severity_level = 3  # the warning that the optimized file is hardware specific: it is only read here
    ort.InferenceSession(str(exported), options, providers=["CPUExecutionProvider"])
    counts: dict[str, int] = {}
    for node in onnx_utils.load(folder / "optimized.onnx").graph.node:
        if node.op_type in _INT8_KERNELS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
