"""Child process for peak-memory measurement: prints the resident-set growth caused by loading and running
a model (VmHWM after, minus VmRSS before), so each variant is measured in a clean address space. On a GPU
target it also prints the GPU memory the model took (NVML's used memory after the runs minus before the
session; ONNX Runtime's CUDA arena keeps what it reserved, so after is the peak), where NVML is available.

Usage: python -m kompress.jobs.runtimes.memprobe MODEL FEEDS.npz THREADS DEVICE RUNTIME [PRECISION]"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _gpu_used_bytes() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
    except Exception:  # no NVML here: the host figure stands alone
        return None


def main(argv: list[str]) -> None:
    import importlib

    import numpy as np

    from kompress.jobs.runtimes.base import SessionTarget
    from kompress.jobs.runtimes.registry import get

    model, feeds_path, threads, device, runtime_name, *precision = argv
    with np.load(feeds_path, allow_pickle=False) as npz:
        feeds = {k: npz[k] for k in npz.files}
    runtime = get(runtime_name)
    if runtime.modules:  # the runtime's own library is loaded before the baseline reading: it is not the model's
        importlib.import_module(runtime.modules[0])
    gpu_before = _gpu_used_bytes() if device == "gpu" else None
    before = status_kb("VmRSS")
    runtime.probe_memory(Path(model), feeds, SessionTarget(device, int(threads), precision[0] if precision else None))
    result = {"peakBytes": (status_kb("VmHWM") - before) * 1024}
    gpu_after = _gpu_used_bytes() if gpu_before is not None else None
    if gpu_before is not None and gpu_after is not None:
        result["gpuBytes"] = max(0, gpu_after - gpu_before)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
