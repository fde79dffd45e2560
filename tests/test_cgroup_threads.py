"""Thread pools sized to the pod's CPU limit, read from the cgroup as a node mounts it: v2 (`cpu.max`) and v1
(`cpu,cpuacct/cpu.cfs_quota_us`; this repository's test node runs cgroup v1)."""

from __future__ import annotations

from pathlib import Path

from kompress.jobs.cpu import cgroup_cpu_quota


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    hierarchy = tmp_path / "cpu,cpuacct"
    hierarchy.mkdir()
    (hierarchy / "cpu.cfs_quota_us").write_text("100000\n")
    (hierarchy / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.0
    (hierarchy / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_no_cgroup_files(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None
