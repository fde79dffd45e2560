"""Bring a model to ONNX: an ONNX file as is, a Hugging Face directory or a torch.export archive exported.

Nothing is unpickled: Hugging Face weights load only from safetensors, torch.export archives through
torch.export.load (weights-only), and no remote code runs."""

from __future__ import annotations

import hashlib
import inspect
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kompress.jobs.errors import InvalidInputError, require_torch
from kompress.jobs.io import model_files, onnx_utils
from kompress.jobs.io.data import InputSpec
from kompress.jobs.io.frameworks import registry as frameworks
from kompress.jobs.io.frameworks.base import Converted
from kompress.jobs.spec.sections import ModelSpec
from kompress.jobs.tasks import registry as tasks

OPSET = 17


@dataclass
class SourceModel:
    onnx_path: Path
    format: str
    sha256: str
    inputs: list[InputSpec]
    metadata: dict[str, str] = field(default_factory=dict)
    converted: Converted | None = None
    """A Keras, TensorFlow or scikit-learn model: how it was converted, and the original, still loaded."""

    @property
    def graph_format(self) -> str:
        """The form the techniques start from: a converted model is an ONNX graph like any other."""
        return "onnx" if self.converted is not None else self.format


def detect_format(path: Path, declared: str | None) -> str:
    if declared:
        return declared
    framework = frameworks.detect(path)
    if framework is not None:
        return framework.name
    if path.is_dir():
        if (path / "config.json").exists():
            return "huggingface"
        onnx_files = sorted(path.glob("*.onnx"))
        if len(onnx_files) == 1:
            return "onnx"
        raise InvalidInputError(f"cannot tell the format of folder {path.name}: no config.json and "
                                f"{len(onnx_files)} .onnx files; set model.format", field="model.uri")
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix in (".pt2", ".ep"):
        return "torch-export"
    raise InvalidInputError(f"cannot tell the format of {path.name} from its name; set model.format "
                            "(onnx, huggingface, torch-export, keras, tensorflow or sklearn)", field="model.uri")


def sha256_tree(path: Path) -> str:
    if path.is_file():
        return model_files.sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(model_files.sha256_file(f).encode())
    return h.hexdigest()


def input_specs(onnx_path: Path) -> list[InputSpec]:
    """The model's graph inputs (initializers excluded); fails clearly on a truncated or non-ONNX file."""
    return tensor_specs(onnx_path, "input")


def tensor_specs(onnx_path: Path, kind: str) -> list[InputSpec]:
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:
        raise InvalidInputError(f"{onnx_path.name} is not a readable ONNX model "
                                f"(truncated or not ONNX: {err.__class__.__name__})",
                                field="model.uri") from None
    if not model.graph.node:
        raise InvalidInputError(f"{onnx_path.name} is not a valid ONNX model: the graph has no nodes",
                                field="model.uri")
    inits = {i.name for i in model.graph.initializer}
    values = model.graph.input if kind == "input" else model.graph.output
    specs = []
    for value in values:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
        np_name = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        specs.append(InputSpec(value.name, f"tensor({_ONNX_TYPE_NAMES.get(np_name, np_name)})", dims))
    return specs


_ONNX_TYPE_NAMES = {"float32": "float", "float64": "double"}


def prepare(spec: ModelSpec, local: Path, workdir: Path, samples: dict[str, np.ndarray] | None,
            seed: int = 0) -> SourceModel:
    fmt = detect_format(local, spec.format)
    digest = sha256_tree(local)
    meta: dict[str, str] = {}
    framework = frameworks.find(fmt)
    if framework is not None:
        framework.require()
        converted = framework.convert(local, workdir, spec)
        path = converted.onnx_path
        inputs = input_specs(path)
        converted.inputs = [i.name for i in inputs]
        converted.outputs = [o.name for o in tensor_specs(path, "output")]
        return SourceModel(path, fmt, digest, inputs, {"converted.from": fmt}, converted)
    if fmt == "onnx":
        path = local if local.is_file() else sorted(local.glob("*.onnx"))[0]
    else:
        require_torch(f"a {fmt} model (exported to ONNX with PyTorch)", field="model.uri")
        import torch

        torch.manual_seed(seed)  # exports trace the model; keep anything random in it reproducible
        if fmt == "huggingface":
            path, meta = _export_huggingface(local, spec.task, workdir, samples)
        else:
            path, meta = _export_torch_export(local, workdir)
    # reading the inputs also fails early and clearly on a truncated or non-ONNX file
    return SourceModel(path, fmt, digest, input_specs(path), meta)


class _MeanPooled:
    """Wraps a Hugging Face encoder so the exported graph outputs sentence embeddings (as
    sentence-transformers computes them: masked mean pooling, then L2 normalization when configured)."""

    @staticmethod
    def build(encoder, normalize: bool):  # type: ignore[no-untyped-def]
        import torch

        class MeanPooled(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.encoder = encoder

            def forward(self, input_ids, attention_mask, token_type_ids=None):  # type: ignore[no-untyped-def]
                kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
                if token_type_ids is not None:
                    kwargs["token_type_ids"] = token_type_ids
                hidden = self.encoder(**kwargs).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                return pooled

        return MeanPooled()


@dataclass
class HuggingFaceModule:
    """A Hugging Face model wrapped so that forward(*inputs) returns the tensor quality is measured on."""

    module: object  # torch.nn.Module
    input_names: list[str]
    output_name: str
    dynamic_axes: dict[str, dict[int, str]]
    example_args: tuple
    metadata: dict[str, str]
    config: object  # transformers.PretrainedConfig


def load_huggingface(folder: Path, task: str, samples: dict[str, np.ndarray] | None) -> HuggingFaceModule:
    """Load a Hugging Face text model from safetensors only (no remote code), wrapped for export."""
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if not list(folder.glob("*.safetensors")):
        raise InvalidInputError(f"{folder.name} has no .safetensors weights; pickled weights "
                                "(pytorch_model.bin) are not loaded, for safety", field="model.uri")
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        head = tasks.get(task).hf_head
        auto = transformers.AutoModelForSequenceClassification if head == "logits" else transformers.AutoModel
        # Eager attention exports the plain MatMul/Softmax pattern that ONNX Runtime fuses into Attention.
        model = auto.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                     trust_remote_code=False, attn_implementation="eager").eval()
    except (OSError, ValueError, KeyError) as err:
        raise InvalidInputError(f"{folder.name} is not a loadable Hugging Face model: "
                                f"{str(err).splitlines()[0]}", field="model.uri") from None
    accepted = list(inspect.signature(model.forward).parameters)
    names: list[str] = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]
    if samples and not set(samples) <= set(names):
        names = [n for n in names if n in samples]
    if "input_ids" not in names or "attention_mask" not in names:
        raise InvalidInputError(f"{folder.name}: only text models taking input_ids and attention_mask are "
                                "exported from Hugging Face folders; export other models to ONNX first",
                                field="model.uri")
    if samples:
        args = tuple(torch.from_numpy(np.asarray(samples[n][:2], dtype=np.int64)) for n in names)
    else:
        args = tuple(torch.ones((2, 16), dtype=torch.int64) for _ in names)
    if head == "pooled":
        module, output = _MeanPooled.build(model, _has_normalize(folder)), "sentence_embedding"
    elif head == "logits":
        module, output = _OutputSelector.build(model, "logits", names), "logits"
    else:
        module, output = _OutputSelector.build(model, "last_hidden_state", names), "last_hidden_state"
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if head != "sequence" else {0: "batch", 1: "sequence"}
    meta = {"hf.model_type": str(config.model_type),
            "hf.num_attention_heads": str(getattr(config, "num_attention_heads", 0)),
            "hf.hidden_size": str(getattr(config, "hidden_size", 0)),
            "hf.num_hidden_layers": str(getattr(config, "num_hidden_layers", 0)),
            "export.task": task}
    return HuggingFaceModule(module, names, output, axes, args, meta, config)


def export_onnx(module, args: tuple, input_names: list[str], output_name: str,  # type: ignore[no-untyped-def]
                dynamic_axes: dict[str, dict[int, str]], out: Path, metadata: dict[str, str]) -> Path:
    """TorchScript-based ONNX export (fusable by ONNX Runtime's transformer optimizer), with metadata."""
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    was_training = getattr(module, "training", False)
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about Python control flow the export does not need
        torch.onnx.export(module, args, str(out), input_names=input_names, output_names=[output_name],
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)
    if was_training:
        module.train()
    model_proto = onnx_utils.load(out)
    onnx_utils.set_metadata(model_proto, metadata)
    onnx_utils.save(model_proto, out)
    return out


def _export_huggingface(folder: Path, task: str, workdir: Path,
                        samples: dict[str, np.ndarray] | None) -> tuple[Path, dict[str, str]]:
    hf = load_huggingface(folder, task, samples)
    out = export_onnx(hf.module, hf.example_args, hf.input_names, hf.output_name, hf.dynamic_axes,
                      workdir / "source" / "model.onnx", hf.metadata)
    return out, hf.metadata


class _OutputSelector:
    @staticmethod
    def build(model, attribute: str, names: list[str]):  # type: ignore[no-untyped-def]
        import torch

        class Select(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args):  # type: ignore[no-untyped-def]
                return getattr(self.model(**dict(zip(names, args, strict=True))), attribute)

        return Select()


def _has_normalize(folder: Path) -> bool:
    modules = folder / "modules.json"
    if not modules.exists():
        return False
    try:
        entries = json.loads(modules.read_text())
    except ValueError:
        return False
    return any(str(m.get("type", "")).endswith("Normalize") for m in entries)


def _export_torch_export(path: Path, workdir: Path) -> tuple[Path, dict[str, str]]:
    import torch

    if not path.is_file():
        raise InvalidInputError(f"{path.name}: a torch-export model is one .pt2 file", field="model.uri")
    try:
        program = torch.export.load(str(path))
    except Exception as err:
        raise InvalidInputError(f"{path.name} is not a loadable torch.export archive "
                                f"({err.__class__.__name__}: {str(err).splitlines()[0][:200]})",
                                field="model.uri") from None
    out = workdir / "source" / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx_program = torch.onnx.export(program, dynamo=True, optimize=True)
    if onnx_program is None:
        raise InvalidInputError("torch.onnx.export returned no program for the .pt2 archive", field="model.uri")
    onnx_program.save(str(out))
    return out, {"export.from": "torch-export"}
