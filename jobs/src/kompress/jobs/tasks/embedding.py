"""embedding: one vector per sample (token outputs mean-pooled over the attention mask), compared by cosine
similarity; Hugging Face folders are exported with mean pooling (+ normalization when the folder says so)."""

from __future__ import annotations

import numpy as np

from kompress.jobs.io.data import Dataset
from kompress.jobs.measure import agreement
from kompress.jobs.measure.confidence import Figure
from kompress.jobs.tasks.base import QUALITY_GATES, Task


class Embedding(Task):
    name = "embedding"
    summary = ("outputs are compared by cosine similarity (Hugging Face models are exported with mean "
               "pooling)")
    hf_head = "pooled"
    embeddings = True
    top1_agreement = False
    gates = QUALITY_GATES | {"minNeighborAgreement", "minRankCorrelation"}

    def sample_vectors(self, outputs: np.ndarray, data: Dataset) -> np.ndarray:
        mask = data.inputs.get("attention_mask")
        if outputs.ndim == 3 and mask is not None:
            weights = mask[..., None].astype(np.float32)
            return (outputs * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)  # type: ignore[no-any-return]
        return super().sample_vectors(outputs, data)

    def extra_figures(self, b: np.ndarray, o: np.ndarray, data: Dataset) -> list[Figure]:
        """Retrieval: does each sample keep its nearest neighbour, and the order of the others."""
        if len(b) < 3:
            return []
        return [agreement.neighbour_agreement(b, o), agreement.rank_correlation(b, o)]


TASK = Embedding()
