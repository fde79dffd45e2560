"""What every technique implementation shares: the result it returns and the rows it trains on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kompress.jobs.errors import RuntimeFailure

if TYPE_CHECKING:
    import numpy as np

    from kompress.jobs.io.torch_model import TorchModel
    from kompress.jobs.techniques.context import StepContext


@dataclass(frozen=True)
class StepResult:
    """What one technique produced: the new model (an ONNX file, or a TorchModel for torch steps) and facts
    for the report."""

    model_path: Path | TorchModel
    details: dict[str, Any]


def training_rows(ctx: StepContext, technique: str) -> dict[str, np.ndarray]:
    """The rows a torch step trains on (data.trainUri, or calibration rows that are not evaluation rows, plus
    `labels` when the data has them). The pipeline refuses a torch step when there are none, so a missing
    `ctx.train` here is a bug in the caller, not a user error."""
    if ctx.train is None:
        raise RuntimeFailure(f"technique {technique} trains but was given no training rows (StepContext.train "
                             "is None; the pipeline sets it for every torch step)")
    return ctx.train
