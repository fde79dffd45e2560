"""The measuring instruments that are not timing: a variant's session in its runtime, its outputs on the
data (quality is the task's to judge), peak memory, node placement and the per-op profile as its runtime
measures them. `variant.measure_variant` composes them with `timing`; nothing else measures a variant."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.io.data import Dataset
from kompress.jobs.progress import Progress
from kompress.jobs.report.model import Placement
from kompress.jobs.runtimes.base import Session
from kompress.jobs.runtimes.registry import Serving
from kompress.jobs.spec.sections import TargetSpec

QUALITY_BATCH = 32


def latency_feeds(data: Dataset, target: TargetSpec) -> dict[str, np.ndarray]:
    """The first latency batch of the data (target.batchSize rows, or all of them when there are fewer), as
    the model's feeds (data.inputs: batch axes moved, constants added)."""
    return data.feeds(0, min(target.batch_size, data.size))


def run_all(session: Session, data: Dataset | dict[str, np.ndarray], output: str | None,
            progress: Progress | None = None, label: str = "") -> np.ndarray:
    """The model's output (`output`, default the first) on every row, in batches of QUALITY_BATCH (one row
    when an input's batch axis is fixed at 1), concatenated along axis 0: outputs are taken as batch-first.
    `data`: a Dataset (its plan builds the feeds), or batch-first rows by input name."""
    if not isinstance(data, Dataset):
        data = Dataset(data, None, "", Path("rows"))
    batch = 1 if batch_axis_fixed(session, data.feed_plan.batch_axes()) else QUALITY_BATCH
    n = data.size
    out_name = output or session.get_outputs()[0].name
    parts = []
    bar = progress.bar(total=n, desc=f"quality {label}", unit="sample") if progress else None
    for start in range(0, n, batch):
        feeds = data.feeds(start, start + batch)
        try:
            part = session.run([out_name], feeds)[0]
        except Exception as err:
            unbatched = [f.name for f in data.feed_plan.feeds
                         if f.constant is not None and f.batch_axis is None and f.constant.ndim]
            hint = (f" (data.inputs: {', '.join(unbatched)} is fed as given whatever the batch size, having no "
                    "batchAxis; give its batchAxis if it has one)" if unbatched else "")
            raise InvalidInputError(f"running the model on the data failed: {str(err).splitlines()[0][:300]}{hint}",
                                    field="data.uri") from None
        rows = min(batch, n - start)
        if np.ndim(part) == 0 or len(part) != rows:
            raise InvalidInputError(f"output {out_name!r} has shape {list(np.shape(part))} for a batch of {rows}; "
                                    "quality reads outputs batch-first (axis 0 = samples): name a batch-first "
                                    "output in model.output", field="model.output")
        parts.append(part)
        if bar:
            bar.update(rows)
    if bar:
        bar.close()
    return np.concatenate(parts, axis=0).astype(np.float32)


def peak_memory(path: Path, data: Dataset, target: TargetSpec, serving: Serving) -> tuple[int, str]:
    """Peak memory to load the model and run one latency batch, as the serving runtime measures it (in a
    fresh process), and whose memory it is (gpu or host)."""
    return serving.engine.peak_memory(path, latency_feeds(data, target), target.session(serving))


def node_placement(path: Path, data: Dataset, target: TargetSpec, serving: Serving) -> Placement | None:
    """Which device ran each node, on one latency batch, where the serving runtime can say (GPU targets:
    ops without kernels there fall back to the CPU)."""
    placement: Placement | None = serving.engine.placement(path, latency_feeds(data, target),
                                                            target.session(serving))
    return placement


PROFILE_RUNS = 20


def op_profile(path: Path, data: Dataset, target: TargetSpec, serving: Serving,
               runs: int = PROFILE_RUNS) -> dict[str, float]:
    """Share of node time per op type on one latency batch, largest first (shares sum to 1): where the
    baseline's time goes, what a search quantizes and how much it can expect to gain (Amdahl). Empty when the
    serving runtime has no per-op profiler."""
    times = serving.engine.profile_ops(path, latency_feeds(data, target), target.session(serving), runs) or {}
    whole = sum(times.values()) or 1.0
    return {op: round(d / whole, 4) for op, d in times.items()}


def open_variant(path: Path, target: TargetSpec, serving: Serving) -> Session:
    """A session for `path` in the serving runtime, on the target's device and threads."""
    return serving.engine.open(path, target.session(serving))


def batch_axis_fixed(session: Session, batch_axes: Mapping[str, int | None] | None = None) -> bool:
    """True when some input's batch axis is fixed at 1 (the model takes one sample per call). `batch_axes`:
    each input's batch axis (data.inputs; None for an input without one, such as a scalar); default 0."""
    axes = batch_axes or {}
    for i in session.get_inputs():
        axis = axes.get(i.name, 0)
        if axis is not None and axis < len(i.shape) and isinstance(i.shape[axis], int) and i.shape[axis] == 1:
            return True
    return False
