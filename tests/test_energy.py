"""Energy meters: RAPL (on a powercap tree laid out like the kernel's), the CPU-time estimate, and fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from kompress.jobs import energy
from kompress.jobs.errors import InvalidInputError


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
