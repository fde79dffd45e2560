"""Small helpers around ONNX files: load, save (external data when large), inspect."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import TYPE_CHECKING

from kompress.jobs.errors import InvalidInputError

if TYPE_CHECKING:
    import onnx

_TWO_GB = 2**31 - 1


def load(path: Path, *, field: str = "model.uri") -> onnx.ModelProto:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as err:
        raise InvalidInputError(f"{path.name} is not a readable ONNX model "
                                f"(truncated or not ONNX: {err.__class__.__name__}: {err})",
                                field=field) from None
    if not model.graph.node:
        raise InvalidInputError(f"{path.name} is not a valid ONNX model: the graph has no nodes", field=field)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    large = model.ByteSize() > _TWO_GB - 2**24
    onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=path.name + ".data" if large else None)
    return path


def op_histogram(model: onnx.ModelProto, top: int = 12) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common(top))


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = value
        else:
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value


def parameter_count(path: Path) -> int:
    """Elements in the model's initializers (weights, biases, quantization scales); for a model without
    float initializers, in its float Constant nodes instead (some exporters, e.g. old Paddle ones, keep every
    weight there; exporters that use initializers keep only shapes and scalars in Constant nodes)."""
    import math

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    tensors = list(model.graph.initializer)
    if not any(t.data_type in floats for t in tensors):
        tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
                    if a.name == "value" and a.t.data_type in floats]
    return sum(math.prod(t.dims) for t in tensors)


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Move the tensors of top-level Constant nodes into initializers (same names, same values), so
    quantizers see them as weights: ONNX Runtime's quantizer only quantizes initializers offline, and a
    weight in a Constant node is quantized again at every call (measured on the PP-OCR direction classifier:
    106 DynamicQuantizeLinear for 53 ConvInteger, 0.54x). Returns how many were moved."""
    keep, moved = [], 0
    for node in model.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is None or len(node.output) != 1:
            keep.append(node)
            continue
        tensor = type(value)()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
        moved += 1
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return moved
