"""Cross-validated trials in the record: the files of fold k, and the out-of-fold (OOF) predictions pooled over
the folds a trial has finished.

A trial of a spec with ``[study] folds = K`` trains its config once per curated fold. Fold k keeps its own
``last.pth``, ``best.pth`` and ``val_predictions.npz`` as ``fold{k}-last.pth`` ... in the artifact store. After
each fold the trial's ``val_predictions.npz`` is rewritten with the pooled OOF predictions of the folds done, in
the same format as a one-split trial's (probs, fnames, split, epoch, lwlrap), so everything that combines trials'
validation predictions (the ensemble, the ensemble report) works on all curated clips once every fold is done.

The trial's value is the lwlrap of the pooled OOF predictions, not the mean of the per-fold scores: the pooled
number ranks each label over every curated clip, as the folds' models pooled in the kernel are ranked on the test
clips; the mean of K per-fold numbers is kept beside it (``fold_mean``) with the spread of the folds.
"""
from __future__ import annotations

import functools
import io
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from trainer import DataError, atomic_write_bytes, lwlrap, read_labelled_csv, split_identity

FOLD_FILES = ("last.pth", "best.pth", "val_predictions.npz")
_FOLD_FILE = re.compile(r"^fold(\d+)-(" + "|".join(re.escape(n) for n in FOLD_FILES) + r")$")
OOF_EPOCH = -1  # the ``epoch`` of pooled OOF predictions: they come from K models' best epochs


def fold_file(fold: int, name: str) -> str:
    """The artifact name of fold ``fold``'s ``name`` (``fold2-best.pth``)."""
    if name not in FOLD_FILES:
        raise ValueError(f"{name!r} is not a fold file; expected one of {', '.join(FOLD_FILES)}")
    return f"fold{fold}-{name}"


def parse_fold_file(name: str) -> tuple[int, str] | None:
    """``fold2-best.pth`` -> (2, "best.pth"); None for any other name."""
    match = _FOLD_FILE.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


def curated_targets(data_dir: Path) -> dict[str, np.ndarray]:
    """Each curated clip's multi-hot labels by file name, from the data folder's train_curated.csv."""
    table = read_labelled_csv(data_dir / "train_curated.csv", data_dir / "train_curated")
    return {path.name: row for path, row in zip(table.paths, table.targets)}


@dataclass(frozen=True)
class OutOfFold:
    """The pooled validation predictions of a trial's finished folds: clip k is ``fnames[k]``, held out by fold
    ``fold_of[k]``, with ``probs[k]`` from that fold's best epoch."""

    probs: np.ndarray
    fnames: list[str]
    targets: np.ndarray
    fold_of: np.ndarray
    fold_lwlrap: list[float]  # each fold's own validation lwlrap, in fold order

    @functools.cached_property
    def lwlrap(self) -> float:
        """The trial's value: lwlrap of the predictions pooled over the folds done (computed once)."""
        return lwlrap(self.targets, self.probs.astype(np.float64))

    @property
    def fold_mean(self) -> float:
        return statistics.fmean(self.fold_lwlrap)

    @property
    def fold_spread(self) -> float:
        """Standard deviation of the per-fold lwlraps (0 with one fold)."""
        return statistics.pstdev(self.fold_lwlrap) if len(self.fold_lwlrap) > 1 else 0.0

    @property
    def split(self) -> str:
        return split_identity(self.fnames, self.targets)

    def save(self, path: Path) -> None:
        """Write as a trial's val_predictions.npz (atomically), with the fold of every clip."""
        buffer = io.BytesIO()
        np.savez(buffer, probs=self.probs.astype(np.float16), fnames=np.array(self.fnames), split=np.array(self.split),
                 epoch=np.array(OOF_EPOCH), lwlrap=np.array(self.lwlrap), fold=self.fold_of.astype(np.int16),
                 fold_lwlrap=np.array(self.fold_lwlrap))
        atomic_write_bytes(path, buffer.getvalue())


def pool_folds(prediction_files: Sequence[Path], targets: Mapping[str, np.ndarray]) -> OutOfFold:
    """Pool the val_predictions.npz of folds 0, 1, ... (in that order) with the clips' labels ``targets``."""
    probs, fnames, fold_of, scores = [], [], [], []
    for fold, path in enumerate(prediction_files):
        with np.load(path) as stored:
            names = [str(f) for f in stored["fnames"]]
            probs.append(stored["probs"])
            scores.append(float(stored["lwlrap"]))
        fnames += names
        fold_of += [fold] * len(names)
    if len(set(fnames)) != len(fnames):
        raise DataError(f"the folds' validation clips overlap ({len(fnames) - len(set(fnames))} clips held out twice): "
                        f"the fold files do not come from one K-fold split")
    missing = [f for f in fnames if f not in targets]
    if missing:
        raise DataError(f"train_curated.csv lacks validation clip(s) {', '.join(missing[:3])} of the folds")
    return OutOfFold(np.concatenate(probs), fnames, np.stack([targets[f] for f in fnames]).astype(np.float64),
                     np.array(fold_of), scores)


def trial_folds(attrs: Mapping[str, object]) -> int | None:
    """K of a cross-validated trial (its user attrs), whatever it finished; None for a one-split trial."""
    folds = attrs.get("folds")
    return folds if isinstance(folds, int) and folds >= 2 else None


def finished_folds(attrs: Mapping[str, object]) -> int | None:
    """K for a trial (its user attrs) that cross-validated all its K folds, else None (one split, or cut early)."""
    folds = trial_folds(attrs)
    return folds if folds is not None and attrs.get("folds_done") == folds else None


def fold_position(attrs: Mapping[str, object], epochs: int) -> tuple[int, int, int] | None:
    """(fold, epoch within it, folds) of a cross-validated trial, 1-based, from its user attrs (``epochs_run``
    counts the epochs of all its folds); None for a one-split trial."""
    folds, done = trial_folds(attrs), attrs.get("epochs_run", 0)
    if folds is None or epochs <= 0:
        return None
    done = int(done) if isinstance(done, (int, float)) else 0
    fold = min(done // epochs, folds - 1) if done < epochs * folds else folds - 1
    return fold + 1, done - fold * epochs, folds


def progress_text(attrs: Mapping[str, object], epochs: int | None) -> str:
    """``9/30`` for a one-split trial, ``f2/5 9/30`` for fold 2 of 5 of a cross-validated one."""
    done = attrs.get("epochs_run", attrs.get("resumed_from_epoch", 0))
    done = int(done) if isinstance(done, (int, float)) else 0
    position = fold_position(attrs, epochs) if epochs else None
    if position is None:
        return f"{done}/{epochs or '?'}"
    fold, epoch, folds = position
    return f"f{fold}/{folds} {epoch}/{epochs}"


def cv_summary(attrs: Mapping[str, object]) -> str | None:
    """``out-of-fold lwlrap 0.7123 over 3/5 folds (per fold 0.70 0.72 0.69, spread 0.012)``; None for a one-split
    trial or before its first fold ends."""
    folds, done, scores = attrs.get("folds"), attrs.get("folds_done"), attrs.get("fold_lwlrap")
    oof = attrs.get("oof_lwlrap")
    if not isinstance(folds, int) or not isinstance(done, int) or not done or not isinstance(oof, (int, float)):
        return None
    per_fold = " ".join(f"{s:.3f}" for s in scores) if isinstance(scores, list) else "?"
    spread = statistics.pstdev(scores) if isinstance(scores, list) and len(scores) > 1 else 0.0
    return f"out-of-fold lwlrap {oof:.4f} over {done}/{folds} folds (per fold {per_fold}, spread {spread:.3f})"


def weight_files(attrs: Mapping[str, object]) -> list[str]:
    """The stored files that hold a trial's weights (its user attrs): best.pth, or a cross-validated trial's K fold
    models."""
    folds = finished_folds(attrs)
    return ["best.pth"] if folds is None else [fold_file(k, "best.pth") for k in range(folds)]
