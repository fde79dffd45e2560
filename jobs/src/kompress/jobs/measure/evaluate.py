"""The measuring instruments: model outputs on the data, quality against the baseline, interleaved timing
(latency, throughput, energy), peak memory in a fresh process, node placement. `measure.measure_variant`
composes them; nothing else measures a variant."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.errors import InvalidInputError, RuntimeFailure
from kompress.jobs.io.data import Dataset
from kompress.jobs.measure.energy import Meter
from kompress.jobs.progress import Progress
from kompress.jobs.report.model import Energy, Fidelity, Latency, Placement, Quality
from kompress.jobs.runtimes.base import Serving
from kompress.jobs.runtimes.onnxruntime import available_threads, batch_axis_fixed, open_session
from kompress.jobs.spec.document import TargetSpec

QUALITY_BATCH = 32
ROUNDS = 5
MAX_BLOCK_CALLS = 10
MIN_BLOCK_SECONDS = 0.02
MAX_FAST_BLOCK_CALLS = 1000


def latency_feeds(data: Dataset, target: TargetSpec) -> dict[str, np.ndarray]:
    """The first latency batch of the data (target.batchSize rows, or all of them when there are fewer), as
    the model's feeds (data.inputs: batch axes moved, constants added)."""
    return data.feeds(0, min(target.batch_size, data.size))


def run_all(session: Any, data: Dataset | dict[str, np.ndarray], output: str | None,
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


def _sample_vectors(out: np.ndarray, task: str, attention_mask: np.ndarray | None) -> np.ndarray:
    """One vector per sample: token outputs of an embedding model are mean-pooled over the mask."""
    if task == "embedding" and out.ndim == 3 and attention_mask is not None:
        mask = attention_mask[..., None].astype(np.float32)
        return (out * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return out.reshape(len(out), -1)


def quality(baseline: np.ndarray, optimized: np.ndarray, data: Dataset, task: str) -> tuple[Quality, Quality]:
    """Quality of each variant: accuracy when labels exist, and fidelity of optimized vs baseline."""
    mask = data.inputs.get("attention_mask")
    b = _sample_vectors(baseline, task, mask)
    o = _sample_vectors(optimized, task, mask)
    # one number per sample (a probability, a score): the cosine of a single value is always +-1, so compare
    # the column of all samples instead (its shape across the rows)
    cb, co = (b.T, o.T) if b.shape[1] == 1 else (b, o)
    cos = (cb * co).sum(1) / np.maximum(np.linalg.norm(cb, axis=1) * np.linalg.norm(co, axis=1), 1e-12)
    top1 = None
    if (b.shape[1] > 1 and task in ("classification", "generic")) or data.labels is not None:
        top1 = float((b.argmax(1) == o.argmax(1)).mean())
    fidelity = Fidelity(cosine_similarity_mean=float(cos.mean()), cosine_similarity_min=float(cos.min()),
                        max_abs_error=float(np.abs(baseline - optimized).max()), top1_agreement=top1)
    if data.labels is None:
        return Quality(), Quality(fidelity=fidelity)
    return (Quality(accuracy=float((b.argmax(1) == data.labels).mean())),
            Quality(accuracy=float((o.argmax(1) == data.labels).mean()), fidelity=fidelity))


@dataclass(frozen=True)
class TimingPlan:
    """How long and what to time: a pipeline step gets a quick latency ratio, a search trial a short full
    measurement, the result the full one."""

    iterations: int
    warmup: int
    throughput: bool = True
    energy: bool = True


@dataclass
class Speed:
    latency: Latency
    round_medians: list[float] = field(default_factory=list)
    """Median latency of each round's block (their ratios between variants give the noise)."""
    throughput_per_second: float | None = None
    throughput_batch_size: int | None = None
    energy: Energy | None = None


@dataclass
class _Timing:
    latencies: list[float]
    round_medians: list[float] = field(default_factory=list)
    joules: float = 0.0
    runs: int = 0
    throughput_seconds: float = 0.0
    throughput_runs: int = 0


def block_calls(iterations: int, call_seconds: float = 0.0) -> int:
    """Consecutive timed calls per variant in one latency block: about 8-10 rounds whatever the iterations, so
    the per-round ratios give a spread, and at most 10 calls a block - but at least MIN_BLOCK_SECONDS of
    calls, so a fast model's block is not one scheduler tick (30 us digits-CNN calls gave a spread of +-0.35
    on the speedup in blocks of 10 calls)."""
    calls = max(1, min(MAX_BLOCK_CALLS, iterations // 8))
    if call_seconds > 0:
        calls = max(calls, min(MAX_FAST_BLOCK_CALLS, int(np.ceil(MIN_BLOCK_SECONDS / call_seconds))))
    return calls


def measure_speed(sessions: dict[str, Any], data: Dataset, target: TargetSpec, plan: TimingPlan,
                  meter: Meter | None, progress: Progress | None = None) -> dict[str, Speed]:
    """Latency percentiles, and (as the plan says) throughput and energy per inference of each session.

    Measured as served: a server runs one model back to back, so latency is timed in blocks of consecutive
    calls per variant (one untimed call first: the other variant just evicted this one's weights from the
    caches), variants alternating block by block so load from neighbours lands on both alike. Per-call
    alternation understated MiniLM INT8's speedup (1.94x vs 2.7x on an AMX Xeon, same two files). Each
    round's medians are kept: their ratios give the measurement's own noise. Throughput runs alternate in
    ROUNDS blocks of large batches."""
    lat_batch = min(target.batch_size, data.size)
    lat_feeds = latency_feeds(data, target)
    timings = {name: _Timing([]) for name in sessions}
    call_seconds = max(_warm_up(sess, lat_feeds, plan.warmup) for sess in sessions.values())
    rounds = -(-plan.iterations // block_calls(plan.iterations))  # 8-10 rounds: the spread needs them
    block = block_calls(plan.iterations, call_seconds)  # a fast model's blocks hold more calls
    bar = progress.bar(total=rounds + (ROUNDS if plan.throughput else 0), desc="latency and throughput",
                       unit="round") if progress else None
    energy_per_block = plan.energy and meter is not None and meter.block_seconds <= 0
    for _ in range(rounds):
        for name, sess in sessions.items():
            _latency_block(sess, lat_feeds, block, timings[name], meter if energy_per_block else None, lat_batch)
        if bar:
            bar.update(1)
    if plan.energy and not energy_per_block:
        _energy_in_blocks(sessions, lat_feeds, lat_batch, meter, timings)
    thr_batch = min(target.throughput_batch_size, data.size)
    if plan.throughput:
        _throughput_rounds(sessions, data.feeds(0, thr_batch), thr_batch, timings, bar)
    if bar:
        bar.close()
    method = (f"{rounds} rounds of {block} consecutive calls per variant (after one untimed call), variants "
              "alternating block by block")
    over = (f"latency blocks of {block} consecutive calls" if energy_per_block
            else f"{ROUNDS} alternating blocks of {meter.block_seconds:g} s per variant" if plan.energy else "")
    return {name: _speed(t, lat_batch, method, thr_batch if plan.throughput else None,
                         meter if plan.energy else None, over) for name, t in timings.items()}


def _warm_up(sess: Any, feeds: dict[str, np.ndarray], calls: int) -> float:
    """Run the warm-up calls (at least one) and return the median call time, which sizes the blocks."""
    times = []
    for _ in range(max(1, calls)):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _latency_block(sess: Any, feeds: dict[str, np.ndarray], calls: int, t: _Timing, meter: Meter | None,
                   batch: int) -> None:
    """One block: an untimed call (caches refilled), then `calls` timed back-to-back calls; the block's
    median joins the round medians, and with a meter its energy is read around the timed calls."""
    sess.run(None, feeds)
    j0 = meter.read_joules() if meter else 0.0
    block = []
    for _ in range(calls):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        block.append(time.perf_counter() - t0)
    if meter:
        t.joules += meter.read_joules() - j0
        t.runs += calls * batch
    t.latencies += block
    t.round_medians.append(float(np.median(block)))


def _speed(t: _Timing, lat_batch: int, method: str, thr_batch: int | None, meter: Meter | None,
           energy_over: str) -> Speed:
    lat = np.asarray(t.latencies)
    speed = Speed(Latency(p50=float(np.percentile(lat, 50)), p95=float(np.percentile(lat, 95)),
                          p99=float(np.percentile(lat, 99)), mean=float(lat.mean()), samples=len(lat),
                          batch_size=lat_batch, method=method), round_medians=t.round_medians)
    if thr_batch is not None:
        speed.throughput_per_second = t.throughput_runs / t.throughput_seconds
        speed.throughput_batch_size = thr_batch
    if meter is not None:
        speed.energy = Energy(joules_per_inference=t.joules / t.runs, method=meter.method, inferences=t.runs,
                              measured_over=energy_over)
    return speed


def _throughput_rounds(sessions: dict[str, Any], feeds: dict[str, np.ndarray], batch: int,
                       timings: dict[str, _Timing], bar: Any) -> None:
    """ROUNDS rounds of up to 0.2 s of back-to-back large batches per variant, alternating variants."""
    for _ in range(ROUNDS):
        for name, sess in sessions.items():
            t = timings[name]
            t0 = time.perf_counter()
            calls = 0
            while calls < 1 or (time.perf_counter() - t0 < 0.2 and calls < 20):
                sess.run(None, feeds)
                calls += 1
            t.throughput_seconds += time.perf_counter() - t0
            t.throughput_runs += calls * batch
        if bar:
            bar.update(1)


def _energy_in_blocks(sessions: dict[str, Any], feeds: dict[str, np.ndarray], batch: int, meter: Meter,
                      timings: dict[str, _Timing]) -> None:
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


def peak_memory(path: Path, data: Dataset, target: TargetSpec, serving: Serving | None = None) -> tuple[int, str]:
    """Peak memory to load the model and run one latency batch, in a fresh process, and whose memory it is:
    the GPU's on a GPU target (where NVML reads it), else the host's resident set."""
    feeds = latency_feeds(data, target)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "feeds.npz"
        np.savez(npz, **feeds)
        cmd = [sys.executable, "-m", "kompress.jobs.runtimes.memprobe", str(path), str(npz),
               str(target.threads or available_threads()), target.device,
               *((serving.runtime, serving.precision or "f32") if serving and serving.runtime == "openvino" else ())]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeFailure(f"memory probe failed for {path.name}: {proc.stderr.strip().splitlines()[-1:]}")
    probe = json.loads(proc.stdout)
    if "gpuBytes" in probe:
        return int(probe["gpuBytes"]), "gpu"
    return int(probe["peakBytes"]), "host"


def node_placement(path: Path, data: Dataset, target: TargetSpec) -> Placement:
    """Which execution provider ran each node, from one profiled latency-batch run. On a GPU target, ops
    without CUDA kernels (dynamic INT8's MatMulInteger, say) fall back to the CPU, with a copy across the
    bus at every boundary: measured on an H200, fused dynamic-INT8 MiniLM ran 49 nodes on the CPU and took
    4.0 ms at batch 1 where FP32 on the GPU took 1.2 ms."""

    feeds = latency_feeds(data, target)
    with tempfile.TemporaryDirectory() as tmp:
        session = open_session(path, target, profile_prefix=str(Path(tmp) / "placement"))
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
    return Placement(nodes_by_provider=by_provider, cpu_ops=dict(sorted(cpu_ops.items(), key=lambda kv: -kv[1])))
