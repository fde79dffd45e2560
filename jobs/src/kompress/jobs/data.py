"""Calibration and evaluation data: a .npz of named input arrays (first axis = samples) plus optional labels.

Loaded without pickle; checked against the model's inputs so that a mismatch is one clear line, not an
ONNX Runtime stack trace."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.model_files import sha256_file

LABELS = "labels"

_ONNX_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: str  # ONNX type string, e.g. tensor(int64)
    shape: tuple[int | str | None, ...]


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    sha256: str
    path: Path

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))

    def rows(self, index: np.ndarray) -> Dataset:
        return Dataset({k: v[index] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[index], self.sha256, self.path)


def load_npz(path: Path, field: str = "data.uri") -> Dataset:
    if path.is_dir() or path.suffix != ".npz":
        raise InvalidInputError(f"{path.name} is not a .npz file", field=field)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise InvalidInputError(f"{path.name} holds object arrays, which would need unpickling; "
                                    "store plain numeric arrays", field=field) from None
        raise InvalidInputError(f"{path.name} is not a readable .npz: {err}", field=field) from None
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise InvalidInputError(f"{path.name} is not a readable .npz: {err}", field=field) from None
    labels = arrays.pop(LABELS, None)
    if not arrays:
        raise InvalidInputError(f"{path.name} holds no input arrays", field=field)
    sizes = {k: (v.shape[0] if v.ndim else 0) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise InvalidInputError(f"{path.name}: arrays must share a non-empty first (sample) axis, got {sizes}",
                                field=field)
    n = next(iter(sizes.values()))
    if labels is not None and (labels.ndim != 1 or len(labels) != n):
        raise InvalidInputError(f"{path.name}: labels must be 1-D with {n} entries, got shape {labels.shape}",
                                field=field)
    return Dataset(arrays, labels, sha256_file(path), path)


def conform(data: Dataset, inputs: list[InputSpec], field: str = "data.uri") -> Dataset:
    """Check every model input has a matching array (name, rank, fixed dims, castable dtype); drop extras."""
    problems = []
    out: dict[str, np.ndarray] = {}
    for spec in inputs:
        array = data.inputs.get(spec.name)
        if array is None:
            problems.append(f"missing array {spec.name!r}")
            continue
        if array.ndim != len(spec.shape):
            problems.append(f"{spec.name!r} has rank {array.ndim}, the model expects {len(spec.shape)} "
                            f"(shape {list(spec.shape)})")
            continue
        fixed = [(i, d) for i, d in enumerate(spec.shape) if isinstance(d, int) and d > 0 and i > 0]
        bad = [f"axis {i} is {array.shape[i]}, expected {d}" for i, d in fixed if array.shape[i] != d]
        if bad:
            problems.append(f"{spec.name!r}: " + ", ".join(bad))
            continue
        want = _ONNX_TO_NUMPY.get(spec.dtype)
        if want is None:
            problems.append(f"{spec.name!r}: unsupported input type {spec.dtype}")
            continue
        if array.dtype != want:
            if not np.can_cast(array.dtype, want, casting="same_kind"):
                problems.append(f"{spec.name!r} is {array.dtype}, the model expects {np.dtype(want).name}")
                continue
            array = array.astype(want)
        out[spec.name] = array
    if problems:
        expected = ", ".join(s.name for s in inputs)
        raise InvalidInputError(f"{data.path.name} does not match the model's inputs ({expected}): "
                                + "; ".join(problems), field=field)
    return Dataset(out, data.labels, data.sha256, data.path)


def split(data: Dataset, calibration: int, evaluation: int, seed: int) -> tuple[Dataset, Dataset, bool]:
    """Evaluation rows and calibration rows from one fixed permutation; True when they had to overlap."""
    order = np.random.default_rng(seed).permutation(data.size)
    n_eval = min(evaluation, data.size)
    n_cal = min(calibration, data.size)
    eval_idx = np.sort(order[:n_eval])
    rest = order[n_eval:]
    overlap = len(rest) < n_cal
    cal_idx = rest[:n_cal] if not overlap else order[-n_cal:]
    return data.rows(np.sort(cal_idx)), data.rows(eval_idx), overlap
