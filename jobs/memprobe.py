"""Child process for peak-memory measurement: prints the resident-set growth caused by loading and running
a model (VmHWM after, minus VmRSS before), so each variant is measured in a clean address space."""

from __future__ import annotations

import json
import sys


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main(argv: list[str]) -> None:
    import numpy as np
    import onnxruntime as ort

    model, feeds_path, threads, device = argv
    with np.load(feeds_path, allow_pickle=False) as npz:
        feeds = {k: npz[k] for k in npz.files}
    before = _status_kb("VmRSS")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(model, options, providers=providers)
    for _ in range(3):
        session.run(None, feeds)
    print(json.dumps({"peakBytes": (_status_kb("VmHWM") - before) * 1024}))


if __name__ == "__main__":
    main(sys.argv[1:])
