"""Interleaved timing of variants as a server runs them: latency percentiles in blocks of consecutive calls,
variants alternating block by block (the spread of the per-round ratios is the measurement's noise),
throughput at a large batch, and energy per inference read around the same calls."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kompress.jobs.io.data import Dataset
from kompress.jobs.measure.energy import Meter
from kompress.jobs.measure.evaluate import latency_feeds
from kompress.jobs.progress import Progress
from kompress.jobs.report.model import Energy, Latency
from kompress.jobs.spec.sections import TargetSpec

ROUNDS = 5
MAX_BLOCK_CALLS = 10
MIN_BLOCK_SECONDS = 0.02
MAX_FAST_BLOCK_CALLS = 1000


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
    if plan.energy and not energy_per_block and meter is not None:
        _energy_in_blocks(sessions, lat_feeds, lat_batch, meter, timings)
    thr_batch = min(target.throughput_batch_size, data.size)
    if plan.throughput:
        _throughput_rounds(sessions, data.feeds(0, thr_batch), thr_batch, timings, bar)
    if bar:
        bar.close()
    method = (f"{rounds} rounds of {block} consecutive calls per variant (after one untimed call), variants "
              "alternating block by block")
    over = (f"latency blocks of {block} consecutive calls" if energy_per_block
            else f"{ROUNDS} alternating blocks of {meter.block_seconds:g} s per variant" if plan.energy and meter
            else "")
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
