"""lwlrap (label-weighted label-ranking average precision), the FAT2019 metric, vectorised in numpy.

For every (clip, true label) pair: precision = (the clip's true labels scored at or above that
label) / (rank of that label among all the clip's scores); lwlrap is the mean over all pairs, so
every true label weighs the same. Clips without a true label contribute no pair and are ignored.
Ties count as "at or above" (rank = number of scores >= the label's), as scikit-learn does.
"""
from __future__ import annotations

import numpy as np


def _pair_precisions(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (precision per (clip, class), truth as bool); precision is 0 where the label is false."""
    truth = np.asarray(truth)
    scores = np.asarray(scores, dtype=np.float64)
    if truth.ndim != 2 or truth.shape != scores.shape:
        raise ValueError(f"lwlrap: truth and scores must both be (clips, classes); got "
                         f"{truth.shape} and {scores.shape}")
    positive = truth > 0
    if not positive.any():
        raise ValueError("lwlrap: truth has no positive label, so the metric is undefined")
    if not np.isfinite(scores).all():
        raise ValueError("lwlrap: scores contain NaN or infinity")
    n_clips, n_classes = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    sorted_true = np.take_along_axis(positive, order, axis=1)
    true_at_or_above = np.cumsum(sorted_true, axis=1)
    # Position of the last member of each tie group, so tied labels share the worst (largest) rank.
    position = np.arange(n_classes)
    group_end = np.empty(sorted_scores.shape, dtype=bool)
    group_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    group_end[:, -1] = True
    end_marks = np.where(group_end, position, n_classes)
    last = np.minimum.accumulate(end_marks[:, ::-1], axis=1)[:, ::-1]
    precision_sorted = np.take_along_axis(true_at_or_above, last, axis=1) / (last + 1.0)
    precision = np.zeros((n_clips, n_classes))
    np.put_along_axis(precision, order, np.where(sorted_true, precision_sorted, 0.0), axis=1)
    return precision, positive


def per_class_lwlrap(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class label-ranking precision and each class's share of all true labels.

    Returns ``(per_class, weights)``, both ``(classes,)``; ``lwlrap == (per_class * weights).sum()``.
    A class with no true label has precision 0 and weight 0.
    """
    precision, positive = _pair_precisions(truth, scores)
    counts = positive.sum(axis=0)
    per_class = precision.sum(axis=0) / np.maximum(counts, 1)
    weights = counts / counts.sum()
    return per_class, weights


def lwlrap(truth: np.ndarray, scores: np.ndarray) -> float:
    """Label-weighted label-ranking average precision of ``scores`` against multi-hot ``truth``.

    Both ``(clips, classes)``; any real-valued scores (only their order within a clip matters).
    """
    precision, positive = _pair_precisions(truth, scores)
    return float(precision.sum() / positive.sum())
