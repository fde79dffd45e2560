"""spec.export format ort: the ONNX Runtime format model for ONNX Runtime Mobile and minimal builds, written
by ONNX Runtime's own converter, with the reduced-operator config a minimal build is compiled from, checked
against the ONNX model's outputs and ONNX Runtime's mobile usability check."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from kompress.jobs.errors import RuntimeFailure
from kompress.jobs.report.model import ExportReport

ORT_FILES = ("model.ort", "model.required_operators.config")
_USABILITY_LINES = ("should perform well", "can be considered", "is recommended", "recommended to")


def export_ort(model: Path, out_dir: Path, feeds: dict[str, np.ndarray]) -> ExportReport:
    """Write `out_dir`/model.ort and model.required_operators.config from `model` (an ONNX file); the .ort
    model must give the ONNX model's outputs on `feeds` (one batch), or this fails."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="kompress-ort-") as tmp:
        src = Path(tmp) / "model.onnx"
        shutil.copyfile(model, src)
        if model.with_name(model.name + ".data").exists():
            raise RuntimeFailure("export ort: a model with external data (over 2 GB) has no ORT format")
        proc = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src),
                               "--output_dir", str(Path(tmp) / "out")], capture_output=True, text=True,
                              timeout=1800, check=False)
        if proc.returncode != 0:
            raise RuntimeFailure("export ort: ONNX Runtime's converter failed: "
                                 + (proc.stderr.strip().splitlines() or ["no message"])[-1][:300])
        out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for name in ORT_FILES:
            shutil.copyfile(Path(tmp) / "out" / name, out_dir / name)
            files.append(out_dir / name)
        check = subprocess.run([sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability",
                                str(src)], capture_output=True, text=True, timeout=600, check=False)
    usability = [line.split("INFO:", 1)[-1].strip() for line in (check.stdout + check.stderr).splitlines()
                 if any(key in line for key in _USABILITY_LINES)]
    reference = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)
    exported = ort.InferenceSession(str(out_dir / "model.ort"), providers=["CPUExecutionProvider"]).run(None, feeds)
    diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0))
               for a, b in zip(reference, exported, strict=True))
    scale = max(float(np.max(np.abs(np.asarray(a, np.float64)), initial=0.0)) for a in reference)
    # the converter applies ONNX Runtime's graph optimizations (fusions): float rounding differs a little
    return ExportReport(format="ort", files=[str(f) for f in files], matches_onnx=diff <= 1e-4 * max(1.0, scale),
                        max_abs_difference=diff, mobile_usability=usability)
