"""Child process for a generative model's peak memory: prints the resident-set growth (VmHWM after, minus
VmRSS before, with the runtime's library already loaded) caused by loading the model and generating, so each
variant is measured in a clean address space.

Usage: python -m kompress.jobs.measure.genprobe RUNTIME MODEL_DIR THREADS PRECISION|- PROMPT.npy NEW_TOKENS"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    import numpy as np

    from kompress.jobs.runtimes import genai_registry
    from kompress.jobs.runtimes.memprobe import status_kb

    runtime_name, model_dir, threads, precision, prompt_file, new_tokens = argv
    runtime = genai_registry.get(runtime_name)
    for module in runtime.modules:  # the libraries are not the model's memory
        importlib.import_module(module)
    prompt = np.load(prompt_file)
    before = status_kb("VmRSS")
    session = runtime.open(Path(model_dir), int(threads), None if precision == "-" else precision)
    session.generate(prompt, int(new_tokens))
    print(json.dumps({"peakBytes": (status_kb("VmHWM") - before) * 1024}))


if __name__ == "__main__":
    main(sys.argv[1:])
