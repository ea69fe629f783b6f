"""The FAT2019 layout on disk: CSVs of labelled clips, audio folders, and the curated validation split.

Everything here validates what a user handed us and fails with one line naming the file, the line
and what was expected, so a typo in a 20k-row CSV is found in seconds, not after an hour of training.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from trainer.labels import load_labels

# The share of unreadable clips in one split that we skip with a warning; above it we stop, because
# that many broken files means a bad download or the wrong folder, not a few corrupt clips.
MAX_UNREADABLE_FRACTION = 0.01


class DataError(ValueError):
    """The data folder does not hold what the FAT2019 layout promises; the message says where."""


@dataclass(frozen=True)
class ClipTable:
    """Labelled clips of one split: ``targets[i]`` is the 80-wide multi-hot vector of ``paths[i]``."""

    name: str
    paths: tuple[Path, ...]
    targets: np.ndarray  # (N, 80) float32

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> "ClipTable":
        return ClipTable(self.name, tuple(self.paths[i] for i in indices), self.targets[indices])


def read_labelled_csv(csv_path: Path, audio_dir: Path) -> ClipTable:
    """Read a ``fname,labels`` CSV (labels comma-joined in one quoted field) against its audio folder."""
    vocab = {label: i for i, label in enumerate(load_labels())}
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: file not found (expected a CSV with columns fname,labels)")
    if not audio_dir.is_dir():
        raise DataError(f"{audio_dir}: folder not found (expected the .wav files listed in {csv_path.name})")
    try:
        return _read_labelled_rows(csv_path, audio_dir, vocab)
    except UnicodeDecodeError:
        raise DataError(f"{csv_path}: not UTF-8 text; FAT2019's CSVs are UTF-8 (re-save or re-download it)") from None


def _read_labelled_rows(csv_path: Path, audio_dir: Path, vocab: dict[str, int]) -> ClipTable:
    paths: list[Path] = []
    rows: list[list[int]] = []
    seen: dict[str, int] = {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip().lstrip("\ufeff") for h in header[:2]] != ["fname", "labels"]:
            raise DataError(f"{csv_path}:1: expected the header 'fname,labels', found {','.join(header or [])!r}")
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != 2:
                raise DataError(f"{csv_path}:{line}: expected 2 fields (fname,labels; quote labels that contain "
                                f"commas), found {len(row)}")
            fname, labels_field = row[0].strip(), row[1]
            _check_fname(fname, csv_path, line)
            if fname in seen:
                raise DataError(f"{csv_path}:{line}: fname {fname!r} already listed on line {seen[fname]}")
            seen[fname] = line
            labels = [label.strip() for label in labels_field.split(",") if label.strip()]
            if not labels:
                raise DataError(f"{csv_path}:{line}: {fname} has no labels (expected at least one)")
            for label in labels:
                if label not in vocab:
                    raise DataError(f"{csv_path}:{line}: label {label!r} is not one of the 80 FAT2019 labels "
                                    f"(see trainer/labels.txt)")
            paths.append(audio_dir / fname)
            rows.append([vocab[label] for label in labels])
    targets = np.zeros((len(rows), len(vocab)), dtype=np.float32)
    for i, row_labels in enumerate(rows):
        targets[i, row_labels] = 1.0
    return ClipTable(csv_path.stem, tuple(paths), targets)


def read_test_fnames(sample_submission: Path) -> list[str]:
    """The fnames of ``sample_submission.csv`` in order, after checking its columns are the vocabulary."""
    if not sample_submission.is_file():
        raise DataError(f"{sample_submission}: file not found (expected fname + the 80 label columns)")
    with open(sample_submission, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
        expected = ["fname", *load_labels()]
        if header != expected:
            raise DataError(f"{sample_submission}:1: expected the header fname + the 80 FAT2019 labels in "
                            f"vocabulary order, found {len(header)} columns starting {header[:3]}")
        fnames = []
        for row in reader:
            if row:
                _check_fname(row[0].strip(), sample_submission, reader.line_num)
                fnames.append(row[0].strip())
    return fnames


def _check_fname(fname: str, csv_path: Path, line: int) -> None:
    if not fname:
        raise DataError(f"{csv_path}:{line}: empty fname")
    posix, windows = PurePosixPath(fname), PureWindowsPath(fname)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or len(posix.parts) != 1 \
            or len(windows.parts) != 1 or fname in (".", ".."):
        raise DataError(f"{csv_path}:{line}: fname {fname!r} must be a plain file name inside the audio "
                        f"folder (no directories, '..' or absolute paths)")


def load_splits(data_dir: Path, *, use_noisy: bool) -> tuple[ClipTable, ClipTable | None]:
    """Read train_curated (and train_noisy when asked) of a FAT2019 data folder."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found (expected the FAT2019 layout: train_curated.csv, "
                        f"train_curated/, train_noisy.csv, train_noisy/, test/, sample_submission.csv)")
    curated = read_labelled_csv(data_dir / "train_curated.csv", data_dir / "train_curated")
    if not len(curated):
        raise DataError(f"{data_dir / 'train_curated.csv'}: no clips (only a header); expected one 'fname,labels' row "
                        f"per clip of train_curated/, at least two to train and validate on")
    noisy = read_labelled_csv(data_dir / "train_noisy.csv", data_dir / "train_noisy") if use_noisy else None
    return curated, noisy


def check_unreadable(split: str, total: int, failed: list[tuple[Path, str]]) -> None:
    """Warn once about unreadable clips of a split; stop when more than 1% of it is unreadable."""
    if not failed:
        return
    listing = "; ".join(f"{path.name} ({reason})" for path, reason in failed[:20])
    more = f"; and {len(failed) - 20} more" if len(failed) > 20 else ""
    if len(failed) > MAX_UNREADABLE_FRACTION * total:
        raise DataError(f"{split}: {len(failed)} of {total} clips are unreadable (more than "
                        f"{MAX_UNREADABLE_FRACTION:.0%}): {listing}{more}")
    # one plain line: a Python warning would print its source line after it, on every first use
    print(f"warning: {split}: skipping {len(failed)} unreadable clip(s) of {total}: {listing}{more}", file=sys.stderr,
          flush=True)


def split_curated(targets: np.ndarray, *, val_fraction: float, seed: int,
                  n_folds: int | None = None, val_fold: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hold out part of curated for validation, stratified over all 80 labels at once.

    Iterative stratification (Sechidis et al. 2011) from the maintained ``iterative-stratification``
    package: every label lands in both parts where it can. With ``n_folds`` the clips are dealt into
    that many folds and ``val_fold`` is held out. Deterministic for a given ``seed``.
    """
    # Imported here: the Kaggle kernel imports this package but never splits, and lacks iterstrat.
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit

    n = len(targets)
    labels = (targets > 0).astype(int)
    placeholder = np.zeros((n, 1))
    if n_folds is not None and n_folds > n:
        raise DataError(f"train_curated: {n} clips cannot be dealt into {n_folds} folds (data.n_folds, or a study's "
                        f"[study] folds): every fold needs clips to hold out; use at most {n}")
    try:
        if n_folds is not None:
            folds = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            train, val = list(folds.split(placeholder, labels))[val_fold]
        else:
            splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
            train, val = next(splitter.split(placeholder, labels))
    except ValueError as exc:  # e.g. more folds than clips
        raise DataError(f"train_curated: {n} clips cannot be split ({exc})") from None
    if len(val) == 0 or len(train) == 0:
        raise DataError(f"train_curated: {n} clips cannot be split with val_fraction={val_fraction} "
                        f"(one part would be empty)")
    return np.sort(train), np.sort(val)
