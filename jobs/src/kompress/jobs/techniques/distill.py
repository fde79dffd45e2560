"""Knowledge distillation: train a smaller student to reproduce the incoming model (the teacher).

The student is either derived from a Hugging Face transformer teacher (a copy keeping fewer encoder layers,
initialized from the teacher's weights) or supplied by the user (a Hugging Face folder or an ONNX file with
the teacher's inputs and output shape). It trains on the transfer rows (``data.trainUri``, else the calibration
rows; classifiers also learn from labels when present) with the shared resumable loop in training.py: soft
targets with a temperature for classifiers, MSE plus cosine distance for embeddings, and optionally the hidden
states of mapped layers.

Adding a student source (e.g. a structurally pruned copy of the teacher) is one field in `StudentSpec`
(configs.py) and one builder in `_BUILDERS`; the training below only needs a `Student`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.io import models as model_io
from kompress.jobs.io import storage, torch_model
from kompress.jobs.io.checkpoints import Checkpoints
from kompress.jobs.io.torch_model import TorchModel
from kompress.jobs.tasks import registry as tasks
from kompress.jobs.techniques import training
from kompress.jobs.techniques.base import StepResult, training_rows
from kompress.jobs.techniques.configs import DistillConfig, StudentSpec
from kompress.jobs.techniques.context import StepContext

if TYPE_CHECKING:
    import torch

FIELD = "techniques.distill"
_LAYER_LIST_NAMES = ("layer", "layers", "h", "block", "blocks")


@dataclass
class Student:
    model: TorchModel
    description: dict[str, Any]
    layer_map: list[tuple[int, int]] = field(default_factory=list)
    """(student layer, teacher layer) pairs whose hidden states can be matched."""


def _layer_list(hf_model: Any) -> tuple[Any, str] | None:
    """The ModuleList of a transformer's encoder/decoder blocks (e.g. BertModel.encoder.layer) and its path."""
    import torch

    n = getattr(getattr(hf_model, "config", None), "num_hidden_layers", None)
    if not n:
        return None
    for name, module in hf_model.named_modules():
        if (isinstance(module, torch.nn.ModuleList) and len(module) == n and name.split(".")[-1] in _LAYER_LIST_NAMES
                and len({type(m) for m in module}) == 1):
            return module, name
    return None


def keep_evenly(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced layers from the first to the last: the first keeps the embedding-side processing, the last
    produces what the output is computed from."""
    return sorted({int(i) for i in np.round(np.linspace(0, teacher_layers - 1, student_layers))})


def _derive_layers(teacher: TorchModel, spec: StudentSpec, ctx: StepContext) -> Student:
    where = f"{FIELD}.student.layers"
    found = _layer_list(teacher.hf_model) if teacher.hf_model is not None else None
    if found is None:
        raise InvalidInputError("a student with fewer layers is derived from Hugging Face transformer models "
                                f"only (this model came from {teacher.origin}); supply your own student with "
                                f"{FIELD}.student.uri", field=where)
    n_teacher = len(found[0])
    assert spec.layers is not None
    if spec.layers >= n_teacher:
        raise InvalidInputError(f"the student must have fewer layers than the teacher's {n_teacher}, got "
                                f"{spec.layers}", field=where)
    keep = keep_evenly(n_teacher, spec.layers)
    student = teacher.clone()
    layers, path = _layer_list(student.hf_model)  # type: ignore[misc]
    import torch

    parent = student.hf_model.get_submodule(path.rpartition(".")[0]) if "." in path else student.hf_model
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(kept):
        for module in layer.modules():  # caches and masks index layers by position
            if isinstance(getattr(module, "layer_idx", None), int):
                setattr(module, "layer_idx", new_index)  # noqa: B010 (a torch attribute mypy cannot see)
    setattr(parent, path.rpartition(".")[2], kept)
    config = student.hf_model.config
    config.num_hidden_layers = spec.layers
    if isinstance(getattr(config, "layer_types", None), list | tuple) and len(config.layer_types) == n_teacher:
        config.layer_types = [config.layer_types[i] for i in keep]
    student.metadata["hf.num_hidden_layers"] = str(spec.layers)
    return Student(student, {"source": "layers", "layers": spec.layers, "teacherLayers": n_teacher,
                             "keptTeacherLayers": keep}, list(enumerate(keep)))


def _from_uri(teacher: TorchModel, spec: StudentSpec, ctx: StepContext) -> Student:
    where = f"{FIELD}.student.uri"
    assert spec.uri is not None
    local = storage.fetch(spec.uri, ctx.workdir / "student-fetch", field=where)
    samples = _probe_rows(ctx)
    try:
        fmt = model_io.detect_format(local, spec.format)
        onnx_path = local if local.is_file() else (sorted(local.glob("*.onnx")) or [local])[0]
        if fmt == "onnx":
            names = [s.name for s in model_io.input_specs(onnx_path)]
            if set(names) != set(teacher.input_names):
                raise InvalidInputError(f"the student takes inputs {names}, the teacher takes "
                                        f"{teacher.input_names}; they must be the same")
        loaded = torch_model.load(fmt, local, onnx_path, ctx.task, samples)
    except InvalidInputError as err:
        raise InvalidInputError(f"the student is not loadable: {err.message}", field=where) from None
    # the student's output takes the teacher's name: evaluation and serving read the output by name
    student = torch_model.TorchModel(loaded.module, loaded.input_names, teacher.output_name, loaded.dynamic_axes,
                                     loaded.example_args, loaded.origin, loaded.metadata, loaded.hf_model)
    if set(student.input_names) != set(teacher.input_names):
        raise InvalidInputError(f"the student takes inputs {student.input_names}, the teacher takes "
                                f"{teacher.input_names}; they must be the same", field=where)
    t_shape, s_shape = _output_shapes(teacher, student, samples, where)
    if s_shape != t_shape:
        raise InvalidInputError(f"the student's output has shape {list(s_shape)}, the teacher's "
                                f"{list(t_shape)} (on the same {len(next(iter(samples.values())))} samples); "
                                "they must match", field=where)
    layer_map: list[tuple[int, int]] = []
    t_layers = _layer_list(teacher.hf_model) if teacher.hf_model is not None else None
    s_layers = _layer_list(student.hf_model) if student.hf_model is not None else None
    t_hidden = getattr(getattr(teacher.hf_model, "config", None), "hidden_size", None)
    s_hidden = getattr(getattr(student.hf_model, "config", None), "hidden_size", None)
    if t_layers and s_layers and t_hidden and t_hidden == s_hidden:
        # student layer j stands for the teacher layers up to this one (TinyBERT's uniform mapping)
        nt, ns = len(t_layers[0]), len(s_layers[0])
        layer_map = [(j, round((j + 1) * nt / ns) - 1) for j in range(ns)]
    return Student(student, {"source": "uri", "uri": spec.uri, "format": fmt,
                             "sha256": model_io.sha256_tree(local)}, layer_map)


# One builder per student source (a StudentSpec field); a structurally pruned copy of the teacher would be
# another entry here, reusing the structural pruning technique to build the module.
_BUILDERS: dict[str, Callable[[TorchModel, StudentSpec, StepContext], Student]] = {
    "layers": _derive_layers,
    "uri": _from_uri,
}


def build_student(teacher: TorchModel, spec: StudentSpec, ctx: StepContext) -> Student:
    """The student, rebuilt the same way on every run (a resumed run loads its checkpoint into it)."""
    import torch

    torch.manual_seed(ctx.seed)
    source = next(name for name in _BUILDERS if getattr(spec, name) is not None)
    return _BUILDERS[source](teacher, spec, ctx)


def _probe_rows(ctx: StepContext) -> dict[str, np.ndarray]:
    rows = training_rows(ctx, "distill")
    return {k: v[:2] for k, v in rows.items() if k != "labels"}


def _output_shapes(teacher: TorchModel, student: TorchModel, samples: dict[str, np.ndarray],
                   where: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    import torch

    teacher.module.eval()
    student.module.eval()
    with torch.no_grad():
        t_out = teacher.forward_numpy(samples)
        try:
            s_out = student.forward_numpy(samples)
        except Exception as err:
            raise InvalidInputError(f"the student fails on the teacher's inputs ({type(err).__name__}: "
                                    f"{str(err).splitlines()[0][:200] if str(err) else ''})", field=where) from None
    return tuple(t_out.shape), tuple(s_out.shape)


def _trim(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cut the padding columns no row uses: sentences are padded to the model's length but most are short, and
    with masked attention and masked pooling the result is the same (right padding only; left stays as is)."""
    mask = batch.get("attention_mask")
    if mask is None or mask.ndim != 2:
        return batch
    used = np.flatnonzero(mask.any(axis=0))
    length = int(used[-1]) + 1 if len(used) else 1
    if length == mask.shape[1]:
        return batch
    return {k: (v[:, :length] if k != "labels" and v.ndim == 2 and v.shape[1] == mask.shape[1] else v)
            for k, v in batch.items()}


class _HiddenCapture:
    """Forward hooks that keep the outputs of chosen transformer layers during one forward pass."""

    def __init__(self, layers: Any, indices: list[int]) -> None:
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = [layers[i].register_forward_hook(self._keep(i)) for i in indices]

    def _keep(self, index: int) -> Callable[..., None]:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            self.outputs[index] = output[0] if isinstance(output, tuple) else output

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _hidden_loss(student: dict[int, Any], teacher: dict[int, Any], layer_map: list[tuple[int, int]],
                 mask: Any) -> Any:
    """Mean over mapped layers of the masked squared error, scaled by the teacher layer's mean square so that
    layers (and models) of different magnitudes weigh alike."""
    weight = mask.unsqueeze(-1).to(teacher[layer_map[0][1]].dtype)
    tokens = weight.sum().clamp(min=1.0)
    total = 0
    for s, t in layer_map:
        ts = teacher[t]
        err = ((student[s] - ts) ** 2 * weight).sum() / (tokens * ts.shape[-1])
        scale = ((ts**2) * weight).sum() / (tokens * ts.shape[-1])
        total = total + err / scale.clamp(min=1e-12)
    return total / len(layer_map)


def distill(model: TorchModel, config: DistillConfig, ctx: StepContext) -> StepResult:
    import torch

    teacher = model
    student = build_student(teacher, config.student, ctx)
    data = training_rows(ctx, "distill")
    if not data or not len(next(iter(data.values()))):
        raise InvalidInputError("distillation needs transfer rows (data.trainUri or calibration rows)",
                                field="data.trainUri")
    labels_used = tasks.get(ctx.task).logits and "labels" in data
    if not labels_used:
        data = {k: v for k, v in data.items() if k != "labels"}
    both_hf = teacher.origin == student.model.origin == "huggingface"
    hidden = config.hidden_states and bool(student.layer_map)
    t_capture = s_capture = None
    if hidden:
        t_layers, _ = _layer_list(teacher.hf_model)  # type: ignore[misc]
        s_layers, _ = _layer_list(student.model.hf_model)  # type: ignore[misc]
        t_capture = _HiddenCapture(t_layers, sorted({t for _, t in student.layer_map}))
        s_capture = _HiddenCapture(s_layers, [s for s, _ in student.layer_map])
    teacher.module.eval()

    def loss_fn(batch: dict[str, np.ndarray]) -> Any:
        rows = _trim(batch) if both_hf else batch
        with torch.no_grad():
            t_out = teacher.forward_numpy(rows)
        s_out = student.model.forward_numpy(rows)
        labels = torch.from_numpy(rows["labels"].astype(np.int64)) if labels_used else None
        loss = training.distillation_loss(s_out, t_out, ctx.task, config.temperature, labels, config.label_weight)
        if t_capture is not None and s_capture is not None:
            mask = torch.from_numpy(rows["attention_mask"].astype(np.int64))
            loss = loss + _hidden_loss(s_capture.outputs, t_capture.outputs, student.layer_map, mask)
        return loss

    checkpoints = ctx.checkpoints or Checkpoints(None)
    if "sha256" in student.description:
        # the spec names the student by URI only: a changed file there must not resume from the old weights
        checkpoints = checkpoints.scope(f"student-{student.description['sha256'][:12]}")
    try:
        fitted = training.fit(student.model.module, loss_fn, data, config.training, seed=ctx.seed,
                              checkpoints=checkpoints, progress=ctx.progress, label="distill")
    finally:
        for capture in (t_capture, s_capture):
            if capture is not None:
                capture.close()
    student.model.module.eval()
    student.model.metadata["kompress.distill.student"] = json.dumps(student.description, sort_keys=True)
    n = len(next(iter(data.values())))
    details: dict[str, Any] = {
        "student": student.description,
        "parametersTeacher": teacher.parameter_count(), "parametersStudent": student.model.parameter_count(),
        "temperature": config.temperature, "hiddenStates": hidden,
        "trainSamples": min(n, config.training.max_samples or n), "labelsUsed": labels_used,
        **fitted.details(),
    }
    if hidden:
        details["hiddenLayerMap"] = [[s, t] for s, t in student.layer_map]
    if labels_used:
        details["labelWeight"] = config.label_weight
    return StepResult(model_path=student.model, details=details)

