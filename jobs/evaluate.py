"""One measurement harness for baseline and optimized models: quality, latency, throughput, size,
peak memory and energy. Variants are timed interleaved, in rounds, so drift on a noisy machine hits both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs import onnx_utils
from kompress.jobs.data import Dataset
from kompress.jobs.energy import Meter
from kompress.jobs.errors import InvalidInputError, RuntimeFailure
from kompress.jobs.progress import Progress
from kompress.jobs.spec import TargetSpec

QUALITY_BATCH = 32
ROUNDS = 5


def available_threads() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a pod's CPU limit does
    not change the affinity, and a pool sized to the node's cores thrashes under the quota)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(float(quota) / float(period))))
    except (OSError, ValueError):
        pass
    return cores


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


def open_session(path: Path, target: TargetSpec) -> Any:
    import onnxruntime as ort

    options = session_options(target.threads or available_threads())
    try:
        return ort.InferenceSession(str(path), options, providers=providers_for(target.device))
    except (ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidProtobuf, ort.capi.onnxruntime_pybind11_state.Fail) as err:
        raise InvalidInputError(f"{path.name} cannot be loaded by ONNX Runtime: {str(err).splitlines()[0][:300]}",
                                field="model.uri") from None


def latency_feeds(data: Dataset, target: TargetSpec) -> dict[str, np.ndarray]:
    """The first latency batch of the data (target.batchSize rows, or all of them when there are fewer)."""
    return {k: v[: min(target.batch_size, data.size)] for k, v in data.inputs.items()}


def batch_axis_fixed(session: Any) -> bool:
    return any(isinstance(i.shape[0], int) and i.shape[0] == 1 for i in session.get_inputs() if i.shape)


def run_all(session: Any, inputs: dict[str, np.ndarray], output: str | None,
            progress: Progress | None = None, label: str = "") -> np.ndarray:
    batch = 1 if batch_axis_fixed(session) else QUALITY_BATCH
    n = len(next(iter(inputs.values())))
    out_name = output or session.get_outputs()[0].name
    parts = []
    bar = progress.bar(total=n, desc=f"quality {label}", unit="sample") if progress else None
    for start in range(0, n, batch):
        feeds = {k: v[start : start + batch] for k, v in inputs.items()}
        try:
            parts.append(session.run([out_name], feeds)[0])
        except Exception as err:
            raise InvalidInputError(f"running the model on the data failed: {str(err).splitlines()[0][:300]}",
                                    field="data.uri") from None
        if bar:
            bar.update(len(next(iter(feeds.values()))))
    if bar:
        bar.close()
    return np.concatenate(parts, axis=0).astype(np.float32)


def _sample_vectors(out: np.ndarray, task: str, attention_mask: np.ndarray | None) -> np.ndarray:
    """One vector per sample: token outputs of an embedding model are mean-pooled over the mask."""
    if task == "embedding" and out.ndim == 3 and attention_mask is not None:
        mask = attention_mask[..., None].astype(np.float32)
        return (out * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return out.reshape(len(out), -1)


def quality(baseline: np.ndarray, optimized: np.ndarray, data: Dataset, task: str) -> tuple[dict, dict]:
    """Quality of each variant: accuracy when labels exist, and fidelity of optimized vs baseline."""
    mask = data.inputs.get("attention_mask")
    b = _sample_vectors(baseline, task, mask)
    o = _sample_vectors(optimized, task, mask)
    cos = (b * o).sum(1) / np.maximum(np.linalg.norm(b, axis=1) * np.linalg.norm(o, axis=1), 1e-12)
    fidelity: dict[str, Any] = {
        "cosineSimilarityMean": float(cos.mean()), "cosineSimilarityMin": float(cos.min()),
        "maxAbsError": float(np.abs(baseline - optimized).max()),
    }
    base_q: dict[str, Any] = {}
    opt_q: dict[str, Any] = {}
    if (b.ndim == 2 and b.shape[1] > 1 and task in ("classification", "generic")) or data.labels is not None:
        fidelity["top1Agreement"] = float((b.argmax(1) == o.argmax(1)).mean())
    if data.labels is not None:
        base_q["accuracy"] = float((b.argmax(1) == data.labels).mean())
        opt_q["accuracy"] = float((o.argmax(1) == data.labels).mean())
    opt_q["fidelity"] = fidelity
    return base_q, opt_q


@dataclass
class Timing:
    latencies: list[float]
    joules: float = 0.0
    runs: int = 0
    throughput_seconds: float = 0.0
    throughput_runs: int = 0


def measure_speed(sessions: dict[str, Any], data: Dataset, target: TargetSpec, meter: Meter,
                  progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Latency percentiles, throughput and energy per inference of each session.

    Latency runs alternate between the variants call by call, so bursts of load from neighbours land on
    both alike; throughput runs alternate in ROUNDS blocks of large batches."""
    n = data.size
    lat_batch = min(target.batch_size, n)
    thr_batch = min(target.throughput_batch_size, n)
    lat_feeds = latency_feeds(data, target)
    thr_feeds = {k: v[:thr_batch] for k, v in data.inputs.items()}
    timings = {name: Timing([]) for name in sessions}
    for sess in sessions.values():
        for _ in range(target.warmup_iterations):
            sess.run(None, lat_feeds)
    bar = progress.bar(total=target.iterations + ROUNDS, desc="latency and throughput", unit="run") \
        if progress else None
    per_call_energy = meter.block_seconds <= 0
    for _ in range(target.iterations):
        for name, sess in sessions.items():
            t = timings[name]
            j0 = meter.read_joules() if per_call_energy else 0.0
            t0 = time.perf_counter()
            sess.run(None, lat_feeds)
            t.latencies.append(time.perf_counter() - t0)
            if per_call_energy:
                t.joules += meter.read_joules() - j0
                t.runs += lat_batch
        if bar:
            bar.update(1)
    if not per_call_energy:
        _energy_in_blocks(sessions, lat_feeds, lat_batch, meter, timings)
    for _ in range(ROUNDS):
        for name, sess in sessions.items():
            t = timings[name]
            t0 = time.perf_counter()
            calls = 0
            while calls < 1 or (time.perf_counter() - t0 < 0.2 and calls < 20):
                sess.run(None, thr_feeds)
                calls += 1
            t.throughput_seconds += time.perf_counter() - t0
            t.throughput_runs += calls * thr_batch
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    out = {}
    for name, t in timings.items():
        lat = np.asarray(t.latencies)
        out[name] = {
            "latencySeconds": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                               "p99": float(np.percentile(lat, 99)), "mean": float(lat.mean()),
                               "samples": len(lat), "batchSize": lat_batch},
            "throughputInferencesPerSecond": t.throughput_runs / t.throughput_seconds,
            "throughputBatchSize": thr_batch,
            "energy": {"joulesPerInference": t.joules / t.runs, "method": meter.method, "inferences": t.runs,
                       "measuredOver": "single calls" if per_call_energy
                       else f"{ROUNDS} alternating blocks of {meter.block_seconds:g} s per variant"},
        }
    return out


def _energy_in_blocks(sessions: dict[str, Any], feeds: dict[str, np.ndarray], batch: int, meter: Meter,
                      timings: dict[str, Timing]) -> None:
    """Energy of back-to-back latency-batch calls, read around blocks of meter.block_seconds per variant,
    alternating variants for ROUNDS rounds (for counters too coarse to read around one call)."""
    for _ in range(ROUNDS):
        for name, sess in sessions.items():
            t = timings[name]
            j0, t0, calls = meter.read_joules(), time.perf_counter(), 0
            while calls < 1 or time.perf_counter() - t0 < meter.block_seconds:
                sess.run(None, feeds)
                calls += 1
            t.joules += meter.read_joules() - j0
            t.runs += calls * batch


def peak_memory(path: Path, data: Dataset, target: TargetSpec) -> tuple[int, str]:
    """Peak memory to load the model and run one latency batch, in a fresh process, and whose memory it is:
    the GPU's on a GPU target (where NVML reads it), else the host's resident set."""
    feeds = latency_feeds(data, target)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "feeds.npz"
        np.savez(npz, **feeds)
        cmd = [sys.executable, "-m", "kompress.jobs.memprobe", str(path), str(npz),
               str(target.threads or available_threads()), target.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeFailure(f"memory probe failed for {path.name}: {proc.stderr.strip().splitlines()[-1:]}")
    probe = json.loads(proc.stdout)
    if "gpuBytes" in probe:
        return int(probe["gpuBytes"]), "gpu"
    return int(probe["peakBytes"]), "host"


def static_facts(path: Path) -> dict[str, Any]:
    return {"sizeBytes": onnx_utils.size_bytes(path), "sha256": onnx_utils.sha256_file(path)}


STEP_LATENCY_RUNS = 30


def step_metrics(base_session: Any, base_out: np.ndarray, path: Path, data: Dataset, target: TargetSpec,
                 model: Any) -> dict[str, Any]:
    """Quick figures for one pipeline step: quality against the baseline and a short interleaved latency
    comparison (median of STEP_LATENCY_RUNS calls each; the final evaluation is the thorough one)."""
    session = open_session(path, target)
    out = run_all(session, data.inputs, model.output)
    _, q = quality(base_out, out, data, model.task)
    feeds = latency_feeds(data, target)
    times: dict[str, list[float]] = {"baseline": [], "step": []}
    for sess in (base_session, session):
        for _ in range(3):
            sess.run(None, feeds)
    for _ in range(STEP_LATENCY_RUNS):
        for name, sess in (("baseline", base_session), ("step", session)):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times[name].append(time.perf_counter() - t0)
    p50 = float(np.median(times["step"]))
    return {"quality": q, "latencyP50Seconds": p50, "speedupVsBaseline": float(np.median(times["baseline"])) / p50}


def headline(measured: dict[str, Any]) -> str:
    """One line for progress output: quality and quick speedup of a step."""
    q = measured["quality"]
    parts = []
    if "accuracy" in q:
        parts.append(f"accuracy {q['accuracy']:.4f}")
    parts.append(f"cosine {q['fidelity']['cosineSimilarityMean']:.4f}")
    parts.append(f"speedup {measured['speedupVsBaseline']:.2f}x (quick)")
    return ", ".join(parts)


def node_placement(path: Path, data: Dataset, target: TargetSpec) -> dict[str, Any]:
    """Which execution provider ran each node, from one profiled latency-batch run. On a GPU target, ops
    without CUDA kernels (dynamic INT8's MatMulInteger, say) fall back to the CPU, with a copy across the
    bus at every boundary: measured on an H200, fused dynamic-INT8 MiniLM ran 49 nodes on the CPU and took
    4.0 ms at batch 1 where FP32 on the GPU took 1.2 ms."""
    import onnxruntime as ort

    feeds = latency_feeds(data, target)
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(target.threads or available_threads())
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "placement")
        session = ort.InferenceSession(str(path), options, providers=providers_for(target.device))
        session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_provider: dict[str, int] = {}
    cpu_ops: dict[str, int] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        provider = event["args"].get("provider", "unknown")
        by_provider[provider] = by_provider.get(provider, 0) + 1
        if provider == "CPUExecutionProvider":
            op = event["args"].get("op_name", "?")
            cpu_ops[op] = cpu_ops.get(op, 0) + 1
    return {"nodesByProvider": by_provider, "cpuOps": dict(sorted(cpu_ops.items(), key=lambda kv: -kv[1]))}
