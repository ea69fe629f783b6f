"""Which training clips one epoch visits, and in what order.

Items are indexed over the concatenation ``[curated..., noisy...]`` of the arrays passed in (the
training part of curated; validation clips are never passed here). Per epoch:

- curated: ``Nc`` draws from the curated pool;
- noisy (only with ``data.use_noisy`` and a non-empty noisy pool): ``min(Nn, round(Nc / curated_noisy_ratio))``
  draws from the noisy pool, i.e. ``curated_noisy_ratio`` curated clips per noisy clip, capped at the
  noisy pool's size (so every noisy clip is at most once per epoch under "shuffle");
- the two parts are drawn separately (so the ratio holds exactly), concatenated and shuffled.

Samplers draw within one pool: "shuffle" takes a random subset without replacement (all of it when
the count equals the pool); "class_balanced" draws with replacement, clip weight = mean over its labels
of 1 / (label's clip count in that pool), so every label is drawn about equally often.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from trainer.config import ConfigError, DataConfig


def _shuffle(labels: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(len(labels))[:n_draws]


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-clip sampling probabilities: mean over the clip's labels of 1 / label frequency, normalised.

    A clip with no positive label (none in FAT2019, but possible in a hand-made table) gets the mean
    weight of the others rather than zero or NaN.
    """
    positive = labels > 0
    counts = positive.sum(axis=0)
    inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    n_labels = positive.sum(axis=1)
    weights = (positive @ inv) / np.maximum(n_labels, 1)
    if (n_labels == 0).any():
        weights[n_labels == 0] = weights[n_labels > 0].mean() if (n_labels > 0).any() else 1.0
    return weights / weights.sum()


def _class_balanced(labels: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(len(labels), size=n_draws, replace=True, p=class_balanced_weights(labels))


SAMPLERS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "shuffle": _shuffle,
    "class_balanced": _class_balanced,
}


def noisy_per_epoch(cfg: DataConfig, n_curated: int, n_noisy: int) -> int:
    """How many noisy clips one epoch draws (0 unless ``cfg.use_noisy``)."""
    if not cfg.use_noisy or n_noisy == 0:
        return 0
    return min(n_noisy, round(n_curated / cfg.curated_noisy_ratio))


def epoch_indices(cfg: DataConfig, curated_labels: np.ndarray, noisy_labels: np.ndarray | None,
                  rng: np.random.Generator) -> np.ndarray:
    """The training order for one epoch: int64 indices into ``[curated..., noisy...]`` (see module doc)."""
    if cfg.sampler not in SAMPLERS:
        raise ConfigError(f"data.sampler={cfg.sampler!r} is not registered; "
                          f"expected one of: {', '.join(SAMPLERS)}")
    if curated_labels.ndim != 2:
        raise ValueError(f"curated labels must be (clips, labels), got shape {curated_labels.shape}")
    n_classes = curated_labels.shape[1]
    if noisy_labels is not None and (noisy_labels.ndim != 2 or noisy_labels.shape[1] != n_classes):
        raise ValueError(f"noisy labels shape {noisy_labels.shape} does not match curated "
                         f"(clips, {n_classes})")
    sample = SAMPLERS[cfg.sampler]
    n_curated = len(curated_labels)
    n_noisy = noisy_per_epoch(cfg, n_curated, 0 if noisy_labels is None else len(noisy_labels))
    parts = [sample(curated_labels, n_curated, rng)]
    if n_noisy > 0:
        parts.append(n_curated + sample(noisy_labels, n_noisy, rng))
    order = np.concatenate(parts).astype(np.int64)
    return order if len(parts) == 1 else order[rng.permutation(len(order))]
