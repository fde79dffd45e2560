"""The task protocol: what the evaluator, the gates, the exporter and the training losses ask of a task.
The defaults suit raw outputs compared by cosine similarity; a task overrides what differs."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

from kompress.jobs.io.data import Dataset
from kompress.jobs.report.model import Fidelity, Quality, VariantMetrics

HfHead = Literal["pooled", "logits", "sequence"]

QUALITY_GATES = frozenset({"maxAccuracyDrop", "minCosineSimilarity"})
"""The quality gates every output-comparing task accepts (the drop is measured on its quality metric)."""


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

    def quality(self, baseline: np.ndarray, optimized: np.ndarray, data: Dataset) -> tuple[Quality, Quality]:
        """Quality of each variant: accuracy when labels exist, and fidelity of optimized vs baseline."""
        b = self.sample_vectors(baseline, data)
        o = self.sample_vectors(optimized, data)
        # one number per sample (a probability, a score): the cosine of a single value is always +-1, so compare
        # the column of all samples instead (its shape across the rows)
        cb, co = (b.T, o.T) if b.shape[1] == 1 else (b, o)
        cos = (cb * co).sum(1) / np.maximum(np.linalg.norm(cb, axis=1) * np.linalg.norm(co, axis=1), 1e-12)
        top1 = None
        if (b.shape[1] > 1 and self.top1_agreement) or data.labels is not None:
            top1 = float((b.argmax(1) == o.argmax(1)).mean())
        fidelity = Fidelity(cosine_similarity_mean=float(cos.mean()), cosine_similarity_min=float(cos.min()),
                            max_abs_error=float(np.abs(baseline - optimized).max()), top1_agreement=top1)
        if data.labels is None:
            return Quality(), Quality(fidelity=fidelity)
        return (Quality(accuracy=float((b.argmax(1) == data.labels).mean())),
                Quality(accuracy=float((o.argmax(1) == data.labels).mean()), fidelity=fidelity))

    def quality_drop(self, baseline: VariantMetrics, optimized: VariantMetrics) -> tuple[str, float]:
        """The metric a drop is measured on, and the drop: accuracy with labels, else 1 - mean cosine."""
        fidelity = optimized.quality.fidelity
        if optimized.quality.accuracy is not None and baseline.quality.accuracy is not None:
            return "accuracy", baseline.quality.accuracy - optimized.quality.accuracy
        return "cosineSimilarityMean", 1.0 - (fidelity.cosine_similarity_mean if fidelity else 1.0)
