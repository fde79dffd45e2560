"""Energy meters: RAPL (on a powercap tree laid out like the kernel's), the CPU-time estimate, and fallback."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.measure import energy


def make_zone(root: Path, name: str, energy_uj: int, max_uj: int) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


def test_rapl_sums_packages_skips_subzones_and_handles_wraparound(tmp_path: Path) -> None:
    p0 = make_zone(tmp_path, "intel-rapl:0", 1_000_000, 10_000_000)
    p1 = make_zone(tmp_path, "intel-rapl:1", 5_000_000, 10_000_000)
    make_zone(tmp_path, "intel-rapl:0:0", 7_000_000, 10_000_000)  # core sub-zone: already in package 0
    meter = energy.RaplMeter(tmp_path)
    assert meter.read_joules() == 0.0
    (p0 / "energy_uj").write_text("3000000")  # +2 J
    (p1 / "energy_uj").write_text("1000000")  # wrapped: +6 J
    assert meter.read_joules() == pytest.approx(8.0)
    with energy.Stopwatch(meter) as watch:
        (p0 / "energy_uj").write_text("3500000")
    assert watch.joules == pytest.approx(0.5) and watch.seconds >= 0


def test_estimate_scales_with_cpu_time() -> None:
    meter = energy.EstimateMeter(watts_per_core=10.0)
    with energy.Stopwatch(meter) as watch:
        x = 0
        for i in range(3_000_000):
            x += i * i
    assert watch.joules > 0
    assert meter.method == "estimate-cpu-time"


def test_auto_falls_back_and_explicit_methods_fail_clearly(tmp_path: Path) -> None:
    assert energy.open_meter("auto", "cpu", 5.0, powercap=tmp_path).method == "estimate-cpu-time"
    make_zone(tmp_path / "pc", "intel-rapl:0", 1, 100)
    assert energy.open_meter("auto", "cpu", 5.0, powercap=tmp_path / "pc").method == "rapl"
    with pytest.raises(InvalidInputError, match="energy method 'rapl' is not available") as info:
        energy.open_meter("rapl", "cpu", 5.0, powercap=tmp_path / "empty")
    assert info.value.field == "target.energy.method"


class SteppedCounter:
    """A counter like NVML's: it advances only every `step` seconds, by what `watts` drew meanwhile."""

    method = "stepped"

    def __init__(self, watts: float, step: float, block_seconds: float) -> None:
        self.watts, self.step, self.block_seconds = watts, step, block_seconds
        self.start = time.perf_counter()

    def read_joules(self) -> float:
        steps = (time.perf_counter() - self.start) // self.step
        return steps * self.step * self.watts


class BusySession:
    """Stands in for an inference session: each call is `seconds` of wall time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run(self, outputs: object, feeds: object) -> None:
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass


@pytest.mark.parametrize("block_seconds", [0.0, 0.1])
def test_coarse_counters_are_read_around_blocks_not_single_calls(block_seconds: float) -> None:
    """A 20 ms-step counter read around 1 ms calls attributes whole steps to whichever call a step lands
    in; read around blocks of back-to-back calls it gives power x time per call."""
    from kompress.jobs.io.data import Dataset
    from kompress.jobs.measure.timing import TimingPlan, measure_speed
    from kompress.jobs.spec.sections import TargetSpec

    meter = SteppedCounter(watts=100.0, step=0.02, block_seconds=block_seconds)
    sessions = {"slow": BusySession(0.002), "fast": BusySession(0.001)}
    data = Dataset({"x": np.zeros((4, 3), np.float32)}, None, "", Path("d.npz"))
    # three warm-up calls: their median sizes the blocks, so one preempted call on a busy machine does not
    target = TargetSpec(iterations=40, warmup_iterations=3, throughput_batch_size=2)
    out = measure_speed(sessions, data, target, TimingPlan(target.iterations, target.warmup_iterations), meter)
    energy = {name: out[name].energy for name in sessions}
    per_call = {name: e.joules_per_inference for name, e in energy.items() if e}
    if block_seconds:
        assert energy["slow"].measured_over.endswith("of 0.1 s per variant")
        # 100 W x (2 ms, 1 ms) per call, within the counter's step over 0.5 s of blocks per variant
        assert per_call["slow"] == pytest.approx(0.2, rel=0.4) and per_call["fast"] == pytest.approx(0.1, rel=0.4)
        assert per_call["slow"] > per_call["fast"]
    else:
        # blocks of at least 20 ms of calls (10 of the 2 ms ones), 8 rounds: energy read around each block
        assert energy["slow"].measured_over == "latency blocks of 10 consecutive calls"
        assert energy["slow"].inferences == out["slow"].latency.samples == 80
