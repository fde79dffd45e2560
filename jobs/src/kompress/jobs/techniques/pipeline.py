"""Apply a list of technique steps to the source model: the fixed pipeline of `spec.techniques`, and each
trial of a search. Torch steps (the ones that train) run first on a TorchModel; the model is exported to
ONNX before the first ONNX step and at the end. Each step can be evaluated on its own (quality against the
baseline and a quick latency comparison), so a report shows what every step bought."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.errors import InvalidInputError, KompressError, RuntimeFailure, require_torch
from kompress.jobs.io import model_files, onnx_utils, torch_model
from kompress.jobs.io.checkpoints import Checkpoints, fingerprint
from kompress.jobs.io.data import Dataset
from kompress.jobs.io.models import SourceModel
from kompress.jobs.io.torch_model import TorchModel
from kompress.jobs.measure.variant import Baseline, MeasurePlan, measure_variant
from kompress.jobs.progress import Progress
from kompress.jobs.report.model import StepReport
from kompress.jobs.runtimes.registry import Serving
from kompress.jobs.spec.base import SpecModel
from kompress.jobs.spec.document import OptimizationSpec
from kompress.jobs.techniques import catalog as techmod
from kompress.jobs.techniques.context import StepContext


@dataclass
class Workspace:
    """Everything a pipeline needs that does not change between pipelines of one run."""

    spec: OptimizationSpec
    source: SourceModel
    model_local: Path
    calibration: Dataset
    evaluation: Dataset
    train: dict[str, np.ndarray] | None
    baseline: Baseline
    checkpoints: Checkpoints
    lineage: list[Any]
    progress: Progress
    work: Path
    seed: int
    op_share: dict[str, float] = field(default_factory=dict)
    """Share of the baseline's time per op type (a search's profile; empty otherwise)."""
    keep_torch_source: bool = False
    """Keep the trainable source model between pipelines (a search's trials) instead of reloading it."""
    _torch_source: TorchModel | None = None

    def drop_torch_source(self) -> None:
        """Free the kept trainable model (before the final measurement: its memory is the host's)."""
        self._torch_source = None

    def trainable_source(self) -> TorchModel:
        """The source model as trainable PyTorch modules: loaded once, cloned for each pipeline when kept."""
        if not self.calibration.feed_plan.is_batch_first:
            raise InvalidInputError("techniques that train in PyTorch read every input batch-first from the .npz; "
                                    "this spec gives batch axes or constants in data.inputs, which they do not "
                                    "support (use ONNX techniques)", field="data.inputs")
        if self._torch_source is not None:
            import torch

            torch.manual_seed(self.seed)  # as a fresh load would: each pipeline starts from the same state
            return self._torch_source.clone()
        # example rows fix the traced shapes only (nothing is learned from them): calibration rows, or evaluation
        # rows when data.uri left none for calibration
        examples = self.calibration if self.calibration.size else self.evaluation
        model = torch_model.load(self.source.graph_format, self.model_local, self.source.onnx_path,
                                 self.spec.model.task, {k: v[:8] for k, v in examples.inputs.items()})
        if self.keep_torch_source:
            self._torch_source = model
            return model.clone()
        return model


@dataclass
class PipelineResult:
    model: Path
    steps: list[StepReport]


def apply(ws: Workspace, steps: list[tuple[str, SpecModel]], label: str, *, evaluate_steps: bool,
          step_lines: bool, serving: Serving | None = None) -> PipelineResult:
    """Run ``steps`` from the source model; ``label`` keeps scratch folders and checkpoints of different
    pipelines apart. ``step_lines``: announce each step as a numbered progress step (else an info line).
    ``serving``: the runtime the result is served by (default: the target's)."""
    serving = serving or ws.baseline.serving
    lineage = list(ws.lineage)
    reports: list[StepReport] = []
    current: Path | TorchModel = ws.source.onnx_path
    exported: Path | None = None  # the ONNX export of `current` when it is a TorchModel already exported
    for i, (name, config) in enumerate(steps):
        tech = techmod.get(name)
        stage = tech.stage_of(config)
        announce = f"technique {name} {config.model_dump(by_alias=True, exclude_defaults=True) or ''}"
        if step_lines:
            ws.progress.step(announce)
        else:
            ws.progress.info(f"{label}: {announce}")
        lineage.append([name, config.model_dump(mode="json", by_alias=True)])
        step_dir = ws.work / label / f"step{i}-{name}"
        if stage == "torch" and isinstance(current, Path):
            # torch steps come first (the spec checks), so `current` is still the source model here
            require_torch(f"technique '{name}'")  # the slim image: a search records this trial as an error
            current = ws.trainable_source()
        elif stage == "onnx" and isinstance(current, TorchModel):
            current = exported or current.export(step_dir / "input" / "model.onnx")
        t0 = time.perf_counter()
        result = _run_step(ws, tech, current, config, _context(ws, stage, name, step_dir,
                                                              f"step{i}-{name}-{fingerprint(*lineage)}", serving))
        current, exported = result.model_path, None
        entry = StepReport(technique=name, stage=stage, config=config.model_dump(mode="json", by_alias=True),
                           duration_seconds=round(time.perf_counter() - t0, 2), details=result.details)
        if evaluate_steps or i == len(steps) - 1:
            if isinstance(current, TorchModel):
                exported = current.export(step_dir / "eval" / "model.onnx")
            _describe_step(ws, entry, exported or current, serving, measure=evaluate_steps)  # type: ignore[arg-type]
        reports.append(entry)
    # the last step was always evaluated, so a final TorchModel is already exported
    return PipelineResult(exported or current, reports)  # type: ignore[arg-type]


def _context(ws: Workspace, stage: str, name: str, step_dir: Path, scope: str, serving: Serving) -> StepContext:
    if stage == "torch" and ws.train is None:
        raise InvalidInputError(
            f"{name} trains, but every row of data.uri is also used for evaluation; set data.trainUri to "
            "training or transfer rows, or lower data.evaluationSamples below the number of rows",
            field="data.trainUri")
    spec = ws.spec
    return StepContext(workdir=step_dir, calibration=ws.calibration.inputs, labels=ws.calibration.labels,
                       metadata=dict(ws.source.metadata), device=spec.target.device, progress=ws.progress,
                       task=spec.model.task, train=ws.train, seed=ws.seed, checkpoints=ws.checkpoints.scope(scope),
                       input_plan=ws.calibration.plan, runtime=serving.runtime)


def _run_step(ws: Workspace, tech: Any, model: Path | TorchModel, config: SpecModel, ctx: StepContext) -> Any:
    """The technique's own run; a library's exception becomes one line naming the technique."""
    try:
        return tech.apply(model, config, ctx)
    except KompressError:
        raise
    except Exception as err:
        raise RuntimeFailure(f"technique {tech.name} failed: {type(err).__name__}: "
                             f"{str(err).splitlines()[0][:300] if str(err) else ''}") from err


def _describe_step(ws: Workspace, entry: StepReport, model: Path, serving: Serving, *, measure: bool) -> None:
    """Size and parameters of the step's model; with `measure`, what it bought (quick, against the baseline)."""
    entry.size_bytes = model_files.size_bytes(model)
    entry.parameters = onnx_utils.parameter_count(model)
    if not measure:
        return
    measured = measure_variant(ws.baseline, model, MeasurePlan.step(), serving=serving)
    entry.quality = measured.candidate.quality
    entry.latency_p50_seconds = measured.candidate.latency_seconds.p50  # type: ignore[union-attr]
    entry.speedup_vs_baseline = measured.comparison.speedup
    ws.progress.info(f"{entry.technique}: {entry.size_bytes / 1e6:.1f} MB, {measured.headline()} (quick) "
                     f"in {entry.duration_seconds:.1f}s")
