"""Per-sample agreement of a variant's outputs with the baseline's, as bootstrap figures (measure/confidence):
what the tasks build their quality figures from. Each function returns the figure; its value is the mean
(or a function of means) of per-sample columns, so every figure gets a paired interval."""

from __future__ import annotations

import numpy as np

from kompress.jobs.measure.confidence import Figure, mean_of

NEIGHBOURHOOD = 2048
"""Samples a set's neighbours are searched among (the first ones): n^2 similarities are computed."""
RANK_REFERENCES = 512
"""Other samples a sample's similarity ranking is compared over (the first ones)."""
MIN_CLASS_SAMPLES = 10
"""A class with fewer evaluation samples has no per-class drop of its own (its figure would be noise)."""
MAX_CLASSES = 200
"""The most frequent classes the worst-class drop is taken over."""


def cosines(b: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays."""
    norms = np.maximum(np.linalg.norm(b, axis=1) * np.linalg.norm(o, axis=1), 1e-12)
    return (b * o).sum(1) / norms  # type: ignore[no-any-return]


def cosine_figure(b: np.ndarray, o: np.ndarray) -> tuple[Figure, np.ndarray, np.ndarray]:
    """Mean cosine similarity of the samples' vectors; the cosines its minimum is taken over; and how far
    each sample's output moved (1 - its cosine). One value per sample (a score, a probability): the cosine of
    a single value is always +-1, so the figure is the cosine of the whole column across samples (three means:
    sum b*o, sum b^2, sum o^2), and a sample moved by its absolute change relative to the column's largest
    value."""
    if b.shape[1] == 1:
        cols = np.stack([b[:, 0] * o[:, 0], b[:, 0] ** 2, o[:, 0] ** 2], axis=1).astype(np.float64)
        fig = Figure("cosine_similarity", cols,
                     lambda m: m[..., 0] / np.sqrt(np.maximum(m[..., 1] * m[..., 2], 1e-24)))
        moved = np.abs(b[:, 0] - o[:, 0]) / np.maximum(np.abs(b[:, 0]).max(), 1e-12)
        return fig, np.atleast_1d(fig.combine(cols.mean(0))), moved
    per_sample = cosines(b, o)
    return mean_of("cosine_similarity", per_sample), per_sample, 1.0 - per_sample


def _similarities(b: np.ndarray, o: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each variant's cosine similarities of every sample to the set's first m samples (n x m)."""
    def unit(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # type: ignore[no-any-return]

    bn, on = unit(b), unit(o)
    return bn @ bn[:m].T, on @ on[:m].T


def neighbour_agreement(b: np.ndarray, o: np.ndarray) -> Figure:
    """Retrieval as a user sees it: the share of samples whose nearest other sample (by cosine, among the
    set's first NEIGHBOURHOOD samples) is the same for both variants."""
    m = min(len(b), NEIGHBOURHOOD)
    sb, so = _similarities(b, o, m)
    idx = np.arange(min(len(b), m))
    sb[idx, idx] = so[idx, idx] = -np.inf  # a sample is not its own neighbour
    return mean_of("neighbor_agreement", (sb.argmax(1) == so.argmax(1)).astype(np.float64))


def rank_correlation(b: np.ndarray, o: np.ndarray) -> Figure:
    """Spearman correlation, per sample, of its similarities to the set's first RANK_REFERENCES other samples
    under the two variants (does the optimized model still order the others the same way); the figure is the
    mean over samples."""
    m = min(len(b), RANK_REFERENCES)
    sb, so = _similarities(b, o, m)
    keep = ~np.eye(len(b), m, dtype=bool)  # drop each sample's similarity to itself
    rows = [_spearman(sb[i][keep[i]], so[i][keep[i]]) for i in range(len(b))]
    return mean_of("rank_correlation", np.asarray(rows, np.float64))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3:
        return 1.0
    rx, ry = np.argsort(np.argsort(x)).astype(np.float64), np.argsort(np.argsort(y)).astype(np.float64)
    rx -= rx.mean()
    ry -= ry.mean()
    denominator = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denominator) if denominator > 0 else 1.0


def worst_class_drop(classes: np.ndarray, drop: np.ndarray) -> tuple[Figure, str] | None:
    """The largest per-class mean of `drop` (per sample: baseline correct - optimized correct with labels, or
    1 - top-1 agreement), over the MAX_CLASSES most frequent classes with at least MIN_CLASS_SAMPLES samples,
    and the class it is (on all samples; a resample may find another class worst)."""
    values, counts = np.unique(classes, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:MAX_CLASSES]
    chosen = [v for v, c in zip(values[order], counts[order], strict=True) if c >= MIN_CLASS_SAMPLES]
    if len(chosen) < 2:
        return None
    member = np.stack([classes == c for c in chosen], axis=1).astype(np.float64)  # n x C
    cols = np.concatenate([member * drop[:, None], member], axis=1)
    k = len(chosen)

    def combine(m: np.ndarray) -> np.ndarray:
        return (m[..., :k] / np.maximum(m[..., k:], 1e-12)).max(axis=-1)  # type: ignore[no-any-return]

    per_class = cols[:, :k].sum(0) / cols[:, k:].sum(0)
    return Figure("class_accuracy_drop", cols, combine), str(chosen[int(per_class.argmax())])
