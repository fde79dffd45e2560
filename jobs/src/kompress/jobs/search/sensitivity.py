"""Which nodes break INT8: the activations that quantize worst, measured on the calibration rows.

Static INT8 maps each activation tensor to 256 levels between its calibrated min and max; a tensor with a
few huge values (an outlier channel) leaves its other values a handful of levels, and everything downstream
inherits the damage. This runs the float model once over the calibration rows with every activation that a
quantizable node reads (or writes) made an output, simulates uint8 min/max quantize-dequantize on each in
numpy, and ranks tensors by their signal-to-quantization-noise ratio over their typical values (SQNR, dB;
low is bad) - close to the local error ONNX Runtime's QDQ debugger calls `qdq_err`, without needing a QDQ
graph. Keeping a tensor's producer
and consumers in float (`quantize.excludeNodes`) is the accuracy-aware fallback's repair."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kompress.jobs.io import onnx_utils
from kompress.jobs.io.data import Dataset

QUANTIZABLE = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "EmbedLayerNormalization"})
MAX_ROWS = 32


@dataclass(frozen=True)
class Sensitive:
    tensor: str
    sqnr_db: float
    nodes: tuple[str, ...]
    """The quantizable nodes that read or write the tensor: kept in float together."""


def rank(model_path: Path, rows: Dataset | dict[str, np.ndarray],
         op_types: list[str] | None = None) -> list[Sensitive]:
    """Activation tensors of quantizable nodes, worst SQNR first (rows: calibration rows, fed through their
    input plan when they have one)."""
    import onnx

    model = onnx_utils.load(model_path)
    onnx_utils.constants_to_initializers(model)
    kinds = set(op_types or QUANTIZABLE)
    weights = {t.name for t in model.graph.initializer}
    touching: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in kinds and node.name:  # excludeNodes names nodes: an unnamed one cannot be kept
            for name in [*node.input, *node.output]:
                if name and name not in weights:
                    touching.setdefault(name, []).append(node.name)
    graph_io = {v.name for v in [*model.graph.input, *model.graph.output]}
    tensors = [t for t in touching if t not in graph_io]
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in existing)
    values = _collect(model, rows, tensors)
    out = [Sensitive(t, _sqnr_db(v), tuple(dict.fromkeys(touching[t]))) for t, v in values.items()]
    return sorted(out, key=lambda s: s.sqnr_db)


def _collect(model: object, rows: Dataset | dict[str, np.ndarray], tensors: list[str]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    names = [o.name for o in session.get_outputs()]
    wanted = [names.index(t) for t in tensors if t in names]
    data = rows if isinstance(rows, Dataset) else Dataset(dict(rows), None, "", Path("rows.npz"))
    parts: dict[str, list[np.ndarray]] = {names[i]: [] for i in wanted}
    for r in range(min(MAX_ROWS, data.size)):
        outs = session.run(None, data.feeds(r, r + 1))
        for i in wanted:
            if np.issubdtype(np.asarray(outs[i]).dtype, np.floating):
                parts[names[i]].append(np.asarray(outs[i], dtype=np.float32).ravel())
    return {t: np.concatenate(p) for t, p in parts.items() if p}


def _sqnr_db(x: np.ndarray) -> float:
    """SQNR of uint8 asymmetric min/max quantize-dequantize (what static INT8 does to an activation), over
    the typical values (|x| up to its 99th percentile): an outlier channel keeps its own precision and
    dominates a whole-tensor SQNR, while the values it crushes are the ones that carry the information
    (measured: 41 dB over the whole tensor, about 0 dB over its typical values, output cosine 0)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255 or 1.0
    zero = np.round(-lo / scale)
    dq = (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale
    typical = np.abs(x) <= np.percentile(np.abs(x), 99)
    noise = float(np.square((x - dq)[typical]).sum())
    signal = float(np.square(x[typical]).sum())
    return float(10 * np.log10(signal / noise)) if noise > 0 and signal > 0 else 99.0
