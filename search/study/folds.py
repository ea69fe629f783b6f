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

    @property
    def lwlrap(self) -> float:
        """The trial's value: lwlrap of the predictions pooled over the folds done."""
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


def finished_folds(attrs: Mapping[str, object]) -> int | None:
    """K for a trial (its user attrs) that cross-validated all its K folds, else None (one split, or cut early)."""
    folds, done = attrs.get("folds"), attrs.get("folds_done")
    return folds if isinstance(folds, int) and folds >= 2 and done == folds else None
