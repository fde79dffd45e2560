"""The PyTorch stage of a pipeline: techniques that train (structured pruning with recovery, distillation,
quantization-aware training) work on a `TorchModel`, which the runner exports to ONNX before the first
ONNX step and at the end.

Where the trainable module comes from, by source format (nothing is unpickled):
- huggingface: the transformers model, loaded from safetensors, wrapped as for export (pooling included);
- onnx and torch-export: the source ONNX graph converted to torch modules by onnx2torch (Conv2d, Linear, ...),
  which suits convolutional and MLP models; a torch.export archive is first exported to ONNX by `prepare`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.io import models as model_io
from kompress.jobs.io import onnx_utils


@dataclass
class TorchModel:
    module: Any
    """torch.nn.Module; forward(*inputs, in `input_names` order) returns the output quality is measured on."""
    input_names: list[str]
    output_name: str
    dynamic_axes: dict[str, dict[int, str]]
    example_args: tuple
    origin: str
    """huggingface or onnx (how the module was built)."""
    metadata: dict[str, str] = field(default_factory=dict)
    hf_model: Any = None
    """The inner transformers model for Hugging Face sources (what structural techniques edit)."""

    def export(self, out: Path) -> Path:
        return model_io.export_onnx(self.module, self.example_args, self.input_names, self.output_name,
                                    self.dynamic_axes, out, self.metadata)

    def clone(self) -> TorchModel:
        module = copy.deepcopy(self.module)
        hf = None
        if self.hf_model is not None:
            hf = next((m for m in module.modules() if type(m) is type(self.hf_model)), None)
        return TorchModel(module, list(self.input_names), self.output_name, dict(self.dynamic_axes),
                          self.example_args, self.origin, dict(self.metadata), hf)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def forward_numpy(self, inputs: dict[str, np.ndarray]) -> Any:
        """Run the module on numpy inputs (a batch); returns a tensor."""
        return self.module(*to_tensors(inputs, self.input_names))


def to_tensors(inputs: dict[str, np.ndarray], names: list[str]) -> tuple:
    import torch

    out = []
    for name in names:
        array = inputs[name]
        if array.dtype.kind in "iu":
            out.append(torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)))
        else:
            out.append(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
    return tuple(out)


def load(fmt: str, local: Path, onnx_path: Path, task: str, samples: dict[str, np.ndarray]) -> TorchModel:
    """The trainable module for a source model (see the module docstring for what each format gives)."""
    import torch

    from kompress.jobs.cpu import available_threads

    torch.set_num_threads(available_threads())  # training threads within the pod's CPU limit
    torch.manual_seed(0)
    if fmt == "huggingface":
        hf = model_io.load_huggingface(local, task, samples)
        inner = getattr(hf.module, "encoder", None) or getattr(hf.module, "model", None)
        return TorchModel(hf.module, hf.input_names, hf.output_name, hf.dynamic_axes, hf.example_args,
                          "huggingface", dict(hf.metadata), inner)
    return _from_onnx(onnx_path, samples)


def _from_onnx(onnx_path: Path, samples: dict[str, np.ndarray]) -> TorchModel:
    import onnx2torch

    specs = model_io.input_specs(onnx_path)
    outputs = model_io.tensor_specs(onnx_path, "output")
    model = onnx_utils.load(onnx_path)
    # weights kept in Constant nodes (old Paddle exports) are trainable only as initializers
    onnx_utils.constants_to_initializers(model)
    try:
        module = onnx2torch.convert(model)
    except Exception as err:
        raise InvalidInputError(
            f"{onnx_path.name} cannot be turned into trainable PyTorch modules (onnx2torch: "
            f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); techniques that "
            "train need a Hugging Face model folder, or an ONNX/torch-export model of supported layers",
            field="model.uri") from None
    names = [s.name for s in specs]
    args = to_tensors({n: samples[n][:2] for n in names}, names)
    axes = {s.name: {0: "batch"} for s in specs}
    axes[outputs[0].name] = {0: "batch"}
    meta = {p.key: p.value for p in model.metadata_props}
    return TorchModel(module.train(False), names, outputs[0].name, axes, args, "onnx", meta)
