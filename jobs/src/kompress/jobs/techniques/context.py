"""What a technique may use while it runs: a scratch folder, the data, the model's metadata and a logger."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kompress.jobs.runtimes import registry as runtimes
from kompress.jobs.runtimes.generative import ExportLimits, GenerativeRuntime

if TYPE_CHECKING:
    from kompress.jobs.io.checkpoints import Checkpoints
    from kompress.jobs.io.data import InputPlan
    from kompress.jobs.progress import Progress


@dataclass
class StepContext:
    workdir: Path
    """Scratch folder for this step's outputs."""
    calibration: dict[str, np.ndarray]
    """Calibration inputs, one array per model input (first axis = samples)."""
    labels: np.ndarray | None
    """Labels aligned with the calibration rows, when the data has them."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Facts recorded when the model was loaded (e.g. Hugging Face architecture: heads, hidden size)."""
    device: str = "cpu"
    progress: Progress | None = None
    task: str = "generic"
    """model.task, a registered task's name (what distillation losses match: `tasks.registry.get(task)`)."""
    train: dict[str, np.ndarray] | None = None
    """Training/transfer rows for techniques that train (inputs, plus `labels` when the data has them)."""
    checkpoints: Checkpoints | None = None
    """Where this step keeps resumable state (None: nothing is kept)."""
    seed: int = 0
    runtime: str = field(default_factory=lambda: runtimes.reference().name)
    """The runtime that will serve the result (what `quantize`'s backend auto picks from)."""
    input_plan: InputPlan | None = None
    """How calibration rows become the model's feeds (data.inputs: batch axes, constants); None: every input
    is batch-first in `calibration`."""

    def out_path(self, name: str) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self.workdir / name

    def require_calibration(self, what: str, field: str) -> int:
        """The number of calibration rows; none (data.uri holds only evaluation rows) is a clear error."""
        count = len(next(iter(self.calibration.values()))) if self.calibration else 0
        if count == 0:
            from kompress.jobs.errors import InvalidInputError

            raise InvalidInputError(
                f"{what} calibrates on rows that are not evaluation rows, and data.uri has none left beside "
                "data.evaluationSamples: lower data.evaluationSamples, give more rows, or set "
                "data.allowCalibrationOverlap: true to calibrate on evaluation rows (the result is then scored on "
                "rows it was calibrated on)", field=field)
        return count


@dataclass
class GenerationContext:
    """What a generation step (text-generation's weightOnly) may use: the runtime that serves it, the float
    model (Hugging Face folder and the runtime's float export), calibration token sequences (never evaluation
    text) and a scratch folder."""

    runtime: GenerativeRuntime
    hf_dir: Path
    float_dir: Path
    workdir: Path
    limits: ExportLimits
    calibration: list[np.ndarray]
    progress: Progress | None = None
    sensitivity: dict[str, float] = field(default_factory=dict)
    """Measured sensitivity per linear layer (filled once per run, on first use)."""
