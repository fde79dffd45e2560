"""The task protocol: what the evaluator, the gates, the exporter and the training losses ask of a task.
The defaults suit raw outputs compared by cosine similarity; a task overrides what differs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from kompress.jobs.io.data import Dataset
from kompress.jobs.measure import agreement, confidence
from kompress.jobs.measure.confidence import Estimate, Figure, mean_of
from kompress.jobs.report.model import MAIN_SET, Fidelity, Quality, SliceQuality, VariantMetrics

HfHead = Literal["pooled", "logits", "sequence"]

QUALITY_GATES = frozenset({"maxAccuracyDrop", "minCosineSimilarity"})
"""The quality gates every output-comparing task accepts (the drop is measured on its quality metric)."""


@dataclass
class JudgedSet:
    """One evaluation set judged: its figures (report shape), their estimates, and per sample the cosine, how
    much the output changed and the two variants' answers (for the worst cases)."""

    slice: SliceQuality
    estimates: dict[str, Estimate]
    cosines: np.ndarray
    """What the minimum cosine is taken over (per sample; the column's cosine for one-value outputs)."""
    change: np.ndarray
    answers: list[tuple[str, str]]
    worst_class: str | None


def _value(est: dict[str, Estimate], name: str) -> float | None:
    return est[name].value if name in est else None


class Task:
    name: ClassVar[str]
    summary: ClassVar[str]
    """One line for the spec's description of model.task."""
    hf_head: ClassVar[HfHead] = "sequence"
    """What a Hugging Face folder is exported with: mean-pooled sentence embeddings, class logits, or the
    last hidden state per token."""
    logits: ClassVar[bool] = False
    """Outputs are class logits: distillation matches softened distributions and may use labels."""
    embeddings: ClassVar[bool] = False
    """Outputs are embeddings (labels do not index them)."""
    top1_agreement: ClassVar[bool] = True
    """Top-1 agreement with the original means something for multi-column outputs."""
    gates: ClassVar[frozenset[str]] = QUALITY_GATES
    """The quality gates this task accepts."""
    generative: ClassVar[bool] = False
    """A causal language model: exported, quantized, measured and served by a generative runtime
    (`runtimes/generative.py`) instead of the ONNX pipeline."""

    def sample_vectors(self, outputs: np.ndarray, data: Dataset) -> np.ndarray:
        """One vector per sample."""
        return outputs.reshape(len(outputs), -1)

    def quality(self, baseline: np.ndarray, optimized: np.ndarray, data: Dataset,
                level: float = confidence.LEVEL) -> tuple[Quality, Quality]:
        """Quality of each variant on one set: accuracy when labels exist, and fidelity of optimized vs
        baseline, with the figures' paired bootstrap intervals at `level`."""
        return self.qualities(self.judge_set(baseline, optimized, data, MAIN_SET, level), baseline, optimized,
                              data, level)

    def qualities(self, judged: JudgedSet, baseline: np.ndarray, optimized: np.ndarray, data: Dataset,
                  level: float) -> tuple[Quality, Quality]:
        """The two variants' Quality from the main set's judged figures."""
        est = judged.estimates
        fidelity = Fidelity(cosine_similarity_mean=est["cosine_similarity"].value,
                            cosine_similarity_min=float(judged.cosines.min()),
                            max_abs_error=float(np.abs(baseline - optimized).max()),
                            top1_agreement=_value(est, "top1_agreement"),
                            neighbor_agreement=_value(est, "neighbor_agreement"),
                            rank_correlation=_value(est, "rank_correlation"),
                            class_accuracy_drop=_value(est, "class_accuracy_drop"), worst_class=judged.worst_class)
        intervals = judged.slice.intervals
        if data.labels is None:
            return Quality(), Quality(fidelity=fidelity, intervals=intervals, interval_level=level)
        return (Quality(accuracy=est["baseline_accuracy"].value),
                Quality(accuracy=est["accuracy"].value, fidelity=fidelity, intervals=intervals, interval_level=level))

    def drop_metric(self, labels: bool) -> str:
        """The metric a drop is measured on: accuracy with labels, else mean cosine (quality_drop's default)."""
        return "accuracy" if labels else "cosineSimilarityMean"

    def extra_figures(self, b: np.ndarray, o: np.ndarray, data: Dataset) -> list[Figure]:
        """Figures of the task's own beyond cosine, top-1 and accuracy (embedding: retrieval agreement)."""
        return []

    def judge_set(self, baseline: np.ndarray, optimized: np.ndarray, data: Dataset, name: str,
                  level: float = confidence.LEVEL) -> JudgedSet:
        """Every quality figure of the optimized outputs against the baseline's on one evaluation set, with
        paired bootstrap intervals, and how much each sample changed (the worst cases)."""
        b = self.sample_vectors(baseline, data)
        o = self.sample_vectors(optimized, data)
        cosine, cosines, moved = agreement.cosine_figure(b, o)
        figures = [cosine]
        has_top1 = (b.shape[1] > 1 and self.top1_agreement) or data.labels is not None
        b_top, o_top = b.argmax(1), o.argmax(1)
        agree = (b_top == o_top).astype(np.float64)
        if has_top1:
            figures.append(mean_of("top1_agreement", agree))
        if data.labels is not None:
            b_right, o_right = (b_top == data.labels).astype(np.float64), (o_top == data.labels).astype(np.float64)
            figures += [mean_of("accuracy", o_right), mean_of("baseline_accuracy", b_right)]
        metric = self.drop_metric(data.labels is not None)
        if metric == "accuracy" and data.labels is not None:
            figures.append(mean_of("accuracy_drop", b_right - o_right))
        elif metric == "top1Agreement" and has_top1:
            figures.append(mean_of("accuracy_drop", 1.0 - agree))
        elif metric == "cosineSimilarityMean":
            figures.append(Figure("accuracy_drop", cosine.columns, lambda m: 1.0 - cosine.combine(m)))
        worst_class = None
        if self.logits and b.shape[1] > 1:
            classes = data.labels if data.labels is not None else b_top
            drop = (b_right - o_right) if data.labels is not None else 1.0 - agree
            found = agreement.worst_class_drop(classes, drop)
            if found is not None:
                figures.append(found[0])
                worst_class = found[1]
        figures += self.extra_figures(b, o, data)
        est = confidence.estimate(figures, level)
        fields, intervals = confidence.report_form(est)
        judged = SliceQuality(name=name, samples=len(b), quality_metric=metric if "accuracy_drop" in fields else None,
                              worst_class=worst_class, intervals=intervals,
                              **{k: v for k, v in fields.items() if k in SliceQuality.model_fields})
        change = moved + (1.0 - agree if has_top1 else 0.0)
        if has_top1:
            answers = [(f"class {x}", f"class {y}") for x, y in zip(b_top, o_top, strict=True)]
        elif b.shape[1] == 1:  # a score per sample: the two scores
            answers = [(f"{x:.4g}", f"{y:.4g}") for x, y in zip(b[:, 0], o[:, 0], strict=True)]
        else:
            answers = [("", f"cosine {c:.4f}") for c in cosines]
        return JudgedSet(judged, est, cosines, change, answers, worst_class)

    def quality_drop(self, baseline: VariantMetrics, optimized: VariantMetrics) -> tuple[str, float]:
        """The metric a drop is measured on, and the drop: accuracy with labels, else 1 - mean cosine."""
        fidelity = optimized.quality.fidelity
        if optimized.quality.accuracy is not None and baseline.quality.accuracy is not None:
            return "accuracy", baseline.quality.accuracy - optimized.quality.accuracy
        return "cosineSimilarityMean", 1.0 - (fidelity.cosine_similarity_mean if fidelity else 1.0)
