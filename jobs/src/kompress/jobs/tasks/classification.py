"""classification: outputs are logits; without labels a drop is measured on top-1 agreement with the
original (a changed prediction is what its user sees: 1 - cosine of logits hid 1% of flipped top-1 answers
at a 0.0002 "drop")."""

from __future__ import annotations

from kompress.jobs.report.model import VariantMetrics
from kompress.jobs.tasks.base import QUALITY_GATES, Task


class Classification(Task):
    name = "classification"
    summary = "outputs are logits, compared by top-1"
    hf_head = "logits"
    logits = True
    gates = QUALITY_GATES | {"minTop1Agreement", "maxClassAccuracyDrop"}

    def drop_metric(self, labels: bool) -> str:
        return "accuracy" if labels else "top1Agreement"

    def quality_drop(self, baseline: VariantMetrics, optimized: VariantMetrics) -> tuple[str, float]:
        fidelity = optimized.quality.fidelity
        has_accuracy = optimized.quality.accuracy is not None and baseline.quality.accuracy is not None
        if not has_accuracy and fidelity and fidelity.top1_agreement is not None:
            return "top1Agreement", 1.0 - fidelity.top1_agreement
        return super().quality_drop(baseline, optimized)


TASK = Classification()
