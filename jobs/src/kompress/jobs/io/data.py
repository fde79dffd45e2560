"""Calibration and evaluation data: a .npz of named input arrays (first axis = samples) plus optional labels.

Loaded without pickle; checked against the model's inputs so that a mismatch is one clear line, not an
ONNX Runtime stack trace. `InputPlan` is the one place stored rows become model feeds: every input is
batch-first unless `data.inputs` moves its batch axis, and inputs that are the same for every sample
(a recurrent state, a sample rate) are constants built once from the spec."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.io.model_files import sha256_file


class DeclaredConstant(Protocol):
    """data.inputs.<name>.constant as the spec gives it (spec.sections.InputConstant)."""

    @property
    def zeros(self) -> list[int] | None: ...
    @property
    def value(self) -> float | None: ...
    @property
    def dtype(self) -> str | None: ...

    def dims(self) -> tuple[int, ...]: ...


class DeclaredInput(Protocol):
    """data.inputs.<name> as the spec gives it (spec.sections.InputEntry): io reads the spec's shape, it does
    not import the spec (which sits above io in the data path)."""

    @property
    def batch_axis(self) -> int | None: ...
    @property
    def constant(self) -> DeclaredConstant | None: ...

LABELS = "labels"
TEXTS = "texts"
"""An optional array of strings beside the inputs: each row's text, shown with the worst cases."""

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


@dataclass(frozen=True, eq=False)
class Feed:
    """How one model input is fed: from the stored rows (samples-first), moved to `batch_axis`; or a
    `constant`, repeated along `batch_axis` to the batch size (given for batch 1), or as is when None."""

    name: str
    batch_axis: int | None = 0
    constant: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class InputPlan:
    """Turns stored rows into model feeds; every call that feeds a model goes through `take`."""

    feeds: tuple[Feed, ...]

    @classmethod
    def batch_first(cls, names: Iterable[str]) -> InputPlan:
        """Every input read from the rows as stored (the default without data.inputs)."""
        return cls(tuple(Feed(n) for n in names))

    @property
    def stored(self) -> list[str]:
        """The inputs read from the rows."""
        return [f.name for f in self.feeds if f.constant is None]

    @property
    def is_batch_first(self) -> bool:
        """True when the feeds are the stored rows as they are (no constant, no moved batch axis)."""
        return all(f.constant is None and f.batch_axis == 0 for f in self.feeds)

    def batch_axes(self) -> dict[str, int | None]:
        """Each input's batch axis in the model (None: the input has none, e.g. a scalar constant)."""
        return {f.name: f.batch_axis for f in self.feeds}

    def take(self, rows: Mapping[str, np.ndarray], index: slice | np.ndarray) -> dict[str, np.ndarray]:
        """The model's feeds for rows[index] (index: a slice or positions along the stored sample axis)."""
        out: dict[str, np.ndarray] = {}
        batch = 0
        for f in self.feeds:
            if f.constant is None:
                part = rows[f.name][index]
                batch = len(part)
                out[f.name] = (part if not f.batch_axis else
                               np.ascontiguousarray(np.moveaxis(part, 0, f.batch_axis)))
        for f in self.feeds:
            if f.constant is not None:
                out[f.name] = (f.constant if f.batch_axis is None
                               else np.repeat(f.constant, batch, axis=f.batch_axis))
        return {f.name: out[f.name] for f in self.feeds}


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]
    """The stored rows: one array per input read from the .npz, first axis = samples."""
    labels: np.ndarray | None
    sha256: str
    path: Path
    plan: InputPlan | None = None
    """How the rows become model feeds (None: every array is a batch-first model input)."""
    texts: np.ndarray | None = None
    """Each row's text (the file's `texts` array), when it has one."""
    row_ids: np.ndarray | None = None
    """Each row's position in the file (None: rows are the file's, in order)."""

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def feed_plan(self) -> InputPlan:
        return self.plan or InputPlan.batch_first(self.inputs)

    def rows(self, index: np.ndarray) -> Dataset:
        return Dataset({k: v[index] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[index], self.sha256, self.path, self.plan,
                       None if self.texts is None else self.texts[index], self.file_rows()[index])

    def file_rows(self) -> np.ndarray:
        """Each row's position in the file."""
        return self.row_ids if self.row_ids is not None else np.arange(self.size)

    def feeds(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """The model's feeds for rows start:stop."""
        return self.feed_plan.take(self.inputs, slice(start, stop))


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
    texts = arrays.pop(TEXTS, None)
    if texts is not None and texts.dtype.kind == "S":
        texts = np.char.decode(texts, "utf-8", errors="replace")
    if texts is not None and (texts.dtype.kind != "U" or texts.ndim != 1):
        raise InvalidInputError(f"{path.name}: `texts` must be a 1-D array of strings (one per row), got "
                                f"{texts.dtype} with shape {texts.shape}", field=field)
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
    if texts is not None and len(texts) != n:
        raise InvalidInputError(f"{path.name}: texts must have {n} entries (one per row), got {len(texts)}",
                                field=field)
    return Dataset(arrays, labels, sha256_file(path), path, texts=texts)


def conform(data: Dataset, inputs: list[InputSpec], field: str = "data.uri",
            declared: Mapping[str, DeclaredInput] | None = None) -> Dataset:
    """Check every model input has a matching array (name, rank, fixed dims, castable dtype) or a constant in
    `declared` (data.inputs); drop extras. The result carries the plan that turns its rows into feeds."""
    declared = declared or {}
    feeds = plan_feeds(inputs, declared)
    problems = []
    out: dict[str, np.ndarray] = {}
    for spec, feed in zip(inputs, feeds, strict=True):
        if feed.constant is not None:
            continue
        array = data.inputs.get(spec.name)
        if array is None:
            problems.append(f"missing array {spec.name!r} (store it in the .npz, samples first, or give it as "
                            "a constant in data.inputs)")
            continue
        axis = feed.batch_axis or 0
        # stored samples-first: the model's batch axis comes first, the other axes keep their order
        stored = (spec.shape[axis], *spec.shape[:axis], *spec.shape[axis + 1 :]) if spec.shape else ()
        if array.ndim != len(spec.shape):
            problems.append(f"{spec.name!r} has rank {array.ndim}, the model expects {len(spec.shape)} "
                            f"(shape {list(spec.shape)}"
                            + (f", stored samples-first as {list(stored)})" if axis else ")")
                            + ("; a scalar input is a constant in data.inputs" if not spec.shape else ""))
            continue
        fixed = [(i, d) for i, d in enumerate(stored) if isinstance(d, int) and d > 0 and i > 0]
        bad = [f"axis {i} is {array.shape[i]}, expected {d}" for i, d in fixed if array.shape[i] != d]
        if bad:
            problems.append(f"{spec.name!r}: " + ", ".join(bad)
                            + (f" (stored samples-first as {list(stored)})" if axis else ""))
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
    return Dataset(out, data.labels, data.sha256, data.path, InputPlan(tuple(feeds)), data.texts, data.row_ids)


def plan_feeds(inputs: list[InputSpec], declared: Mapping[str, DeclaredInput]) -> list[Feed]:
    """One Feed per model input, from the spec's data.inputs (checked against the model's input specs)."""
    names = [s.name for s in inputs]
    for name in declared:
        if name not in names:
            raise InvalidInputError(f"the model has no input {name!r} (its inputs: {', '.join(names)})",
                                    field=f"data.inputs.{name}")
    feeds = []
    for spec in inputs:
        entry = declared.get(spec.name)
        if entry is None:
            feeds.append(Feed(spec.name))
            continue
        field = f"data.inputs.{spec.name}"
        rank = len(spec.shape)
        axis = entry.batch_axis
        if axis is not None and axis >= rank:
            raise InvalidInputError(f"batchAxis {axis} is beyond the input's rank {rank} (shape {list(spec.shape)})"
                                    + ("; a scalar input has no batch axis" if rank == 0 else ""), field=field)
        if entry.constant is None:
            feeds.append(Feed(spec.name, axis or 0))
            continue
        feeds.append(Feed(spec.name, axis, _constant(spec, entry, field)))
    if not any(f.constant is None for f in feeds):
        raise InvalidInputError("every model input is a constant; data.uri must hold at least one input's rows",
                                field="data.inputs")
    return feeds


def _constant(spec: InputSpec, entry: DeclaredInput, field: str) -> np.ndarray:
    """The constant of data.inputs.<name>, in the model's type and checked against its declared shape."""
    const = entry.constant
    assert const is not None
    want = _ONNX_TO_NUMPY.get(spec.dtype)
    if want is None:
        raise InvalidInputError(f"unsupported input type {spec.dtype}", field=field)
    dtype = np.dtype(const.dtype) if const.dtype else np.dtype(want)
    if dtype != want and not np.can_cast(dtype, want, casting="same_kind"):
        raise InvalidInputError(f"the constant is {dtype.name}, the model expects {np.dtype(want).name}",
                                field=f"{field}.constant.dtype")
    dims = const.dims()
    filled = np.zeros(dims, dtype) if const.zeros is not None else np.full(dims, const.value, dtype)
    array: np.ndarray = filled.astype(want)
    if len(dims) != len(spec.shape):
        raise InvalidInputError(f"the constant has shape {list(dims)}, rank {len(dims)}; the model's input has rank "
                                f"{len(spec.shape)} (shape {list(spec.shape)})", field=f"{field}.constant")
    bad = [f"axis {i} is {n}, the model's is {d}" for i, (n, d) in enumerate(zip(dims, spec.shape, strict=True))
           if isinstance(d, int) and d > 0 and n != d and i != entry.batch_axis]
    if bad:
        raise InvalidInputError(f"the constant's shape {list(dims)} does not match the model's {list(spec.shape)}: "
                                + ", ".join(bad), field=f"{field}.constant")
    return array


def split(data: Dataset, calibration: int, evaluation: int, seed: int,
          allow_overlap: bool = False) -> tuple[Dataset, Dataset, bool]:
    """Evaluation rows and calibration rows from one fixed permutation; True when they overlap. Rows never
    overlap unless `allow_overlap`: calibration then gets only the rows left beside the evaluation rows
    (possibly none: a technique that calibrates refuses to run on none)."""
    order = np.random.default_rng(seed).permutation(data.size)
    n_eval = min(evaluation, data.size)
    n_cal = min(calibration, data.size)
    eval_idx = np.sort(order[:n_eval])
    rest = order[n_eval:]
    overlap = len(rest) < n_cal and allow_overlap
    cal_idx = order[-n_cal:] if overlap else rest[:n_cal]
    return data.rows(np.sort(cal_idx)), data.rows(eval_idx), overlap
