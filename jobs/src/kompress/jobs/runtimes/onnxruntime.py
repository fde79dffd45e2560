"""ONNX Runtime sessions as kompress opens them: thread pools sized to the pod, providers for the target
device, and the session options every timing in kompress shares (the evaluation, techniques that time
alternatives, bench/)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.runtimes.base import Serving
from kompress.jobs.spec.document import TargetSpec


def available_threads() -> int:
    """Cores this process may use: its CPU affinity, capped by the cgroup's CPU quota (a pod's CPU limit does
    not change the affinity, and a pool sized to the node's cores thrashes under the quota)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return cores if quota is None else min(cores, max(1, int(quota)))


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup's CFS quota allows (None: no quota). cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`
    over `cpu.cfs_period_us`, in the `cpu` or `cpu,cpuacct` hierarchy): a node on cgroup v1 still runs pods."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else float(quota) / float(period)
    except (OSError, ValueError):
        pass
    for hierarchy in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        try:
            quota_us = int((root / hierarchy / "cpu.cfs_quota_us").read_text())
            period_us = int((root / hierarchy / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    if device == "gpu":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InvalidInputError("target.device is gpu but this onnxruntime has no CUDA provider "
                                    "(install onnxruntime-gpu on a GPU node)", field="target.device")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(threads: int) -> Any:
    """CPU session options for timing variants alternately in one process (the evaluation and bench/).
    Threads spin between the ops of a run, as ONNX Runtime's default does, but stop at the end of each run:
    a pool left spinning after its run steals the cores of the variant timed next (MiniLM FP32, 2 cores,
    measured here: 43 ms left spinning, 18.2 ms never spinning, 16.6-17.4 ms spinning within runs only)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def open_session(path: Path, target: TargetSpec, *, serving: Serving | None = None,
                 profile_prefix: str | None = None) -> Any:
    """A session for `path` on the target's device and threads, in the runtime `serving` names (default: the
    target's); a graph the runtime refuses is a clear error naming the file, not a traceback."""
    serving = serving or target.serving()
    threads = target.threads or available_threads()
    if serving.runtime == "openvino":
        from kompress.jobs.runtimes.openvino import compile_model

        return compile_model(path, threads, serving.precision or "f32")
    import onnxruntime as ort

    options = session_options(threads)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(path), options, providers=providers_for(target.device))
    except (ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidProtobuf, ort.capi.onnxruntime_pybind11_state.Fail) as err:
        raise InvalidInputError(f"{path.name} cannot be loaded by ONNX Runtime: {str(err).splitlines()[0][:300]}",
                                field="model.uri") from None


def batch_axis_fixed(session: Any, batch_axes: Mapping[str, int | None] | None = None) -> bool:
    """True when some input's batch axis is fixed at 1 (the model takes one sample per call). `batch_axes`:
    each input's batch axis (data.inputs; None for an input without one, such as a scalar); default 0."""
    axes = batch_axes or {}
    for i in session.get_inputs():
        axis = axes.get(i.name, 0)
        if axis is not None and axis < len(i.shape) and isinstance(i.shape[axis], int) and i.shape[axis] == 1:
            return True
    return False
