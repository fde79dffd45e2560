"""ONNX Runtime as kompress runs it: thread pools sized to the pod, providers for the target device, the
session options every timing in kompress shares (the evaluation, techniques that time alternatives, bench/),
its per-op profiler (what a search's candidates are chosen from), node placement on GPU targets, Triton's
onnxruntime backend, and the ORT format export for mobile and minimal builds. The reference runtime: a
baseline is measured with it unless the spec names another."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.runtimes import ort_export
from kompress.jobs.runtimes.base import ORT_CONTRIB, STANDARD_ONNX, Runtime, Session, SessionTarget


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


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    summary = "ONNX Runtime (CPU, or CUDA on a GPU target), served by Triton's onnxruntime backend"
    modules = ("onnxruntime",)
    extra = "onnx"
    libraries = ("onnxruntime", "onnx")
    devices = frozenset({"cpu", "gpu"})
    reads = frozenset({STANDARD_ONNX, ORT_CONTRIB})
    exports = frozenset({"ort"})
    reference = True
    catalog_recipes = True
    static_quantizer = "onnxruntime"

    def open(self, path: Path, target: SessionTarget, *, profile_prefix: str | None = None) -> Session:
        """A session on the target's device and threads; a graph ONNX Runtime refuses is a clear error naming
        the file, not a traceback."""
        import onnxruntime as ort

        options = session_options(target.threads)
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        try:
            session: Session = ort.InferenceSession(str(path), options, providers=providers_for(target.device))
        except (ort.capi.onnxruntime_pybind11_state.InvalidGraph,
                ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
                ort.capi.onnxruntime_pybind11_state.Fail) as err:
            raise InvalidInputError(f"{path.name} cannot be loaded by ONNX Runtime: "
                                    f"{str(err).splitlines()[0][:300]}", field="model.uri") from None
        return session

    def probe_memory(self, path: Path, feeds: Mapping[str, np.ndarray], target: SessionTarget) -> None:
        # default session options (no spinning settings): what a server would load
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = target.threads
        session = ort.InferenceSession(str(path), options, providers=providers_for(target.device))
        for _ in range(3):
            session.run(None, dict(feeds))

    def parameters(self, path: Path) -> int | None:
        from kompress.jobs.io.onnx_utils import parameter_count

        return parameter_count(path)

    def _profiled_events(self, path: Path, feeds: Mapping[str, np.ndarray], target: SessionTarget,
                         calls: int) -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory() as tmp:
            session = self.open(path, target, profile_prefix=str(Path(tmp) / "profile"))
            for _ in range(calls):
                session.run(None, dict(feeds))
            events: list[dict[str, Any]] = json.loads(Path(session.end_profiling()).read_text())  # type: ignore[attr-defined]
        return events

    def profile_ops(self, path: Path, feeds: Mapping[str, np.ndarray], target: SessionTarget,
                    runs: int) -> dict[str, float] | None:
        """From ONNX Runtime's own profiler, over `runs` profiled calls after one warm-up call in the same
        session (its events are dropped)."""
        per_run: list[dict[str, float]] = []
        for event in self._profiled_events(path, feeds, target, runs + 1):
            if event.get("cat") == "Session" and event.get("name") == "model_run":
                per_run.append({})
            elif event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time") and per_run:
                op = event["args"].get("op_name", "?")
                per_run[-1][op] = per_run[-1].get(op, 0.0) + float(event.get("dur", 0))
        counted = per_run[1:] or per_run  # the first run warms caches and allocators
        totals: dict[str, float] = {}
        for run in counted:
            for op, dur in run.items():
                totals[op] = totals.get(op, 0.0) + dur
        return {op: d / max(len(counted), 1) for op, d in sorted(totals.items(), key=lambda kv: -kv[1])}

    def placement(self, path: Path, feeds: Mapping[str, np.ndarray], target: SessionTarget) -> Any:
        """Which execution provider ran each node, from one profiled run. On a GPU target, ops without CUDA
        kernels (dynamic INT8's MatMulInteger, say) fall back to the CPU, with a copy across the bus at every
        boundary: measured on an H200, fused dynamic-INT8 MiniLM ran 49 nodes on the CPU and took 4.0 ms at
        batch 1 where FP32 on the GPU took 1.2 ms."""
        from kompress.jobs.report.model import Placement

        by_provider: dict[str, int] = {}
        cpu_ops: dict[str, int] = {}
        for event in self._profiled_events(path, feeds, target, 1):
            if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
                continue
            provider = event["args"].get("provider", "unknown")
            by_provider[provider] = by_provider.get(provider, 0) + 1
            if provider == "CPUExecutionProvider":
                op = event["args"].get("op_name", "?")
                cpu_ops[op] = cpu_ops.get(op, 0) + 1
        return Placement(nodes_by_provider=by_provider,
                         cpu_ops=dict(sorted(cpu_ops.items(), key=lambda kv: -kv[1])))

    def triton_backend(self, precision: str | None) -> dict[str, Any]:
        return {"platform": "onnxruntime_onnx"}

    def export(self, fmt: str, model: Path, out_dir: Path, feeds: Mapping[str, np.ndarray]) -> Any:
        if fmt != "ort":
            return super().export(fmt, model, out_dir, feeds)
        return ort_export.export_ort(model, out_dir, dict(feeds))

    def export_files(self) -> tuple[str, ...]:
        return ort_export.ORT_FILES


RUNTIME = OnnxRuntime()
