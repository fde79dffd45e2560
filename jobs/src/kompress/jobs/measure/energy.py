"""Energy measurement, always labelled with its method.

- nvml: NVIDIA's total-energy counter of the GPU (millijoules), for GPU targets.
- rapl: the CPU package counters in /sys/class/powercap, where readable (they include everything the
  package did meanwhile, so measurements run one variant at a time).
- estimate: this process's CPU time x a configured power per busy core; a model, not a meter.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

POWERCAP = Path("/sys/class/powercap")


class Meter(Protocol):
    method: str
    block_seconds: float
    """0: the counter is fine enough to read around each call. Above 0: it advances in coarse steps, so
    energy is read around blocks of back-to-back calls at least this long."""

    def read_joules(self) -> float: ...


@dataclass
class EstimateMeter:
    watts_per_core: float
    method: str = "estimate-cpu-time"
    block_seconds: float = 0.0

    def read_joules(self) -> float:
        # process_time() reads every thread's CPU time in nanoseconds (os.times() ticks every 10 ms, coarser
        # than a block of small-model calls); children count too: the peak-memory probes are part of a run
        t = os.times()
        return (time.process_time() + t.children_user + t.children_system) * self.watts_per_core


class RaplMeter:
    method = "rapl"
    block_seconds = 0.0

    def __init__(self, root: Path = POWERCAP) -> None:
        # Package-level domains only (intel-rapl:N, not their sub-zones) to avoid double counting.
        self.zones = [z for z in sorted(root.glob("intel-rapl:*")) if z.name.count(":") == 1]
        if not self.zones:
            raise OSError(f"no RAPL package zones under {root}")
        self.max_range = [int((z / "max_energy_range_uj").read_text()) for z in self.zones]
        self.last = [self._raw(z) for z in self.zones]
        self.total_uj = 0.0

    @staticmethod
    def _raw(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def read_joules(self) -> float:
        for i, zone in enumerate(self.zones):
            now = self._raw(zone)
            delta = now - self.last[i]
            if delta < 0:  # the counter wrapped
                delta += self.max_range[i]
            self.total_uj += delta
            self.last[i] = now
        return self.total_uj / 1e6


class NvmlMeter:
    method = "nvml"
    # The counter advances in steps far longer than a millisecond inference (100 ms on an H200, measured):
    # read around single calls it gave MiniLM at batch 1 (1.4 ms a call) 0.96 J per inference, i.e.
    # ~690 W, where the board drew ~150 W. Each block read is off by at most one step; over five 1 s blocks
    # per variant three H200 runs gave FP32 0.161-0.165 J per inference.
    block_seconds = 1.0

    def __init__(self, index: int = 0) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # raises where unsupported

    def read_joules(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0


def open_meter(method: str, device: str, watts_per_core: float, powercap: Path = POWERCAP) -> Meter:
    """The best meter available for ``method`` ('auto' picks NVML on GPU, then RAPL, then the estimate)."""
    order = {"auto": (["nvml"] if device == "gpu" else []) + ["rapl", "estimate"],
             "nvml": ["nvml"], "rapl": ["rapl"], "estimate": ["estimate"]}[method]
    errors = []
    for name in order:
        try:
            if name == "nvml":
                return NvmlMeter()
            if name == "rapl":
                meter = RaplMeter(powercap)
                meter.read_joules()
                return meter
            return EstimateMeter(watts_per_core)
        except Exception as err:  # OSError, ImportError, ValueError, pynvml.NVMLError, ...: try the next one
            errors.append(f"{name}: {err}")
    from kompress.jobs.errors import InvalidInputError

    raise InvalidInputError(f"energy method {method!r} is not available here ({'; '.join(errors)})",
                            field="target.energy.method")


class Stopwatch:
    """Energy and wall time over a span of work."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.joules = 0.0
        self.seconds = 0.0
        self._j0 = self._t0 = 0.0

    def __enter__(self) -> Stopwatch:
        self._j0, self._t0 = self.meter.read_joules(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.joules += self.meter.read_joules() - self._j0
        self.seconds += time.perf_counter() - self._t0
