"""The CPU this process runs on: the cores it may use (affinity capped by the cgroup's quota) and the
instruction-set flags that decide which kernels are fast (VNNI and AMX for INT8, AMX/AVX512-BF16 for bf16).
A leaf: runtimes, techniques and the report read it; it imports nothing of kompress."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
NOTABLE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
                 "avx512_fp16")
"""The flags that explain why a ratio differs between CPUs (int8 dot products, bf16, AMX tiles)."""


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


def _field(name: str, cpuinfo: Path) -> str | None:
    with contextlib.suppress(OSError):
        return next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                     if line.startswith(name)), None)
    return None


def cpu_model(cpuinfo: Path = CPUINFO) -> str | None:
    """The CPU's model name (not enough to compare timings by: read the flags too)."""
    return _field("model name", cpuinfo)


def cpu_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """All of the first core's flags."""
    return (_field("flags", cpuinfo) or "").split()


def notable_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """The flags that change which kernels are fast, in NOTABLE_FLAGS order."""
    flags = set(cpu_flags(cpuinfo))
    return [f for f in NOTABLE_FLAGS if f in flags]


def cpu_has_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """True when the CPU computes in bfloat16 natively (AMX or AVX512-BF16), where a bf16 precision is a
    speedup; elsewhere a runtime emulates it or falls back to f32, and a bf16 candidate is not worth a trial."""
    flags = set(cpu_flags(cpuinfo))
    return "amx_bf16" in flags or "avx512_bf16" in flags


def gpu_model() -> str | None:
    """The visible NVIDIA GPUs' names and driver (nvidia-smi), or None: timings on a GPU hold for that GPU."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = [line.strip() for line in out.splitlines() if line.strip()]
    return "; ".join(dict.fromkeys(gpus)) + (f" (x{len(gpus)})" if len(gpus) > 1 else "") if gpus else None
