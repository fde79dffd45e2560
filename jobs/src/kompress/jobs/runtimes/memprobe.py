"""Child process for peak-memory measurement: prints the resident-set growth caused by loading and running
a model (VmHWM after, minus VmRSS before), so each variant is measured in a clean address space. On a GPU
target it also prints the GPU memory the model took (NVML's used memory after the runs minus before the
session; ONNX Runtime's CUDA arena keeps what it reserved, so after is the peak), where NVML is available."""

from __future__ import annotations

import json
import sys


def _status_kb(field: str) -> int:
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
    import numpy as np
    import onnxruntime as ort

    model, feeds_path, threads, device, *served = argv  # served: "openvino" and its precision
    with np.load(feeds_path, allow_pickle=False) as npz:
        feeds = {k: npz[k] for k in npz.files}
    if served and served[0] == "openvino":
        import openvino as ov

        from kompress.jobs.runtimes.openvino import cpu_config

        core = ov.Core()  # loaded before the baseline reading: the runtime's own libraries are not the model's
        before = _status_kb("VmRSS")
        request = core.compile_model(model, "CPU", cpu_config(int(threads), served[1])).create_infer_request()
        for _ in range(3):
            request.infer(feeds)
        print(json.dumps({"peakBytes": (_status_kb("VmHWM") - before) * 1024}))
        return
    gpu_before = _gpu_used_bytes() if device == "gpu" else None
    before = _status_kb("VmRSS")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(model, options, providers=providers)
    for _ in range(3):
        session.run(None, feeds)
    result = {"peakBytes": (_status_kb("VmHWM") - before) * 1024}
    gpu_after = _gpu_used_bytes() if gpu_before is not None else None
    if gpu_before is not None and gpu_after is not None:
        result["gpuBytes"] = max(0, gpu_after - gpu_before)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
