"""Score a ``submission.csv`` against held-out labels: lwlrap and each class's share of it.

The built-in data sets ship ``test_labels.csv`` (``fname,labels``, as ``train_curated.csv``) for their test clips;
a kernel run by hand on them (``python kernel.py ...``) writes ``submission.csv`` (``fname`` + the 80 label columns,
as ``sample_submission.csv``). ``python -m search.score`` is the command; the quickstart scores with it too.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import DataError, load_labels, per_class_lwlrap, read_labelled_csv


class ScoreError(ValueError):
    """A submission or labels file that cannot be scored; the message names the file, the line and why."""


@dataclass(frozen=True)
class Score:
    """lwlrap of a submission and its per-class terms: ``lwlrap == (per_class * weights).sum()``."""

    clips: int
    labels: tuple[str, ...]  # the vocabulary, in its order
    per_class: np.ndarray  # (labels,) label-ranking precision of each class's true labels (0 where it has none)
    weights: np.ndarray  # (labels,) each class's share of all true labels: its weight in lwlrap
    positives: np.ndarray  # (labels,) how many clips carry each class

    @property
    def lwlrap(self) -> float:
        return float((self.per_class * self.weights).sum())


def score_submission(submission: str | Path, labels: str | Path) -> Score:
    """lwlrap of ``submission`` (fname + the 80 label columns, in any order) against ``labels`` (fname,labels).
    Both must list the same clips; a mistake raises ``ScoreError`` naming the file."""
    submission, labels = Path(submission), Path(labels)
    truth = read_truth(labels)
    fnames, scores = read_submission(submission)
    missing = [name for name in fnames if name not in truth]
    if missing:
        raise ScoreError(f"{submission}: {len(missing)} of its {len(fnames)} fnames have no labels in {labels} "
                         f"(first: {missing[0]}); score a submission against the labels of the same clips")
    listed = set(fnames)
    unscored = [name for name in truth if name not in listed]
    if unscored:
        raise ScoreError(f"{submission}: {len(unscored)} labelled clips of {labels} have no row (first: "
                         f"{unscored[0]}); a submission scores every clip of its labels file")
    targets = np.stack([truth[name] for name in fnames])
    per_class, weights = per_class_lwlrap(targets, scores)  # the pair precisions once: lwlrap is their weighted sum
    return Score(len(fnames), tuple(load_labels()), per_class, weights, targets.sum(axis=0))


def read_truth(labels: Path) -> dict[str, np.ndarray]:
    """fname -> multi-hot target of a ``fname,labels`` CSV (checked as the trainer checks its CSVs)."""
    if not labels.is_file():
        raise ScoreError(f"{labels}: file not found (expected the held-out labels: a CSV with columns fname,labels "
                         f"such as a built-in set's test_labels.csv)")
    try:  # its folder stands in for the audio folder: scoring needs the labels, never the clips
        table = read_labelled_csv(labels, labels.parent)
    except DataError as exc:
        raise ScoreError(str(exc)) from None
    if not len(table):
        raise ScoreError(f"{labels}: no labelled clips (only a header); nothing to score against")
    return {path.name: target for path, target in zip(table.paths, table.targets)}


def read_submission(submission: Path) -> tuple[list[str], np.ndarray]:
    """The fnames and the (clips, 80) scores of a submission, columns put in vocabulary order."""
    if not submission.is_file():
        raise ScoreError(f"{submission}: file not found (expected submission.csv: fname + the 80 label columns)")
    vocabulary = load_labels()
    try:
        with open(submission, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [cell.strip().lstrip("\ufeff") for cell in next(reader, [])]
            columns = _columns(submission, header, vocabulary)
            fnames, rows, seen = [], [], {}
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                line = reader.line_num
                if len(row) != len(header):
                    raise ScoreError(f"{submission}:{line}: {len(row)} fields, expected {len(header)} as in the header")
                fname = row[0].strip()
                if fname in seen:
                    raise ScoreError(f"{submission}:{line}: fname {fname!r} already listed on line {seen[fname]}")
                seen[fname] = line
                fnames.append(fname)
                rows.append([_score(submission, line, header[j], row[j]) for j in columns])
    except UnicodeDecodeError:
        raise ScoreError(f"{submission}: not UTF-8 text (expected a CSV as sample_submission.csv)") from None
    if not fnames:
        raise ScoreError(f"{submission}: no rows after the header; nothing to score")
    return fnames, np.array(rows, dtype=np.float64)


def _columns(submission: Path, header: list[str], vocabulary: list[str]) -> list[int]:
    """Where each vocabulary label's column is in ``header``; refuses a missing, unknown or repeated one."""
    if not header or header[0] != "fname":
        raise ScoreError(f"{submission}:1: expected the header fname + the 80 FAT2019 labels (as "
                         f"sample_submission.csv), found {','.join(header[:3])!r}...")
    position: dict[str, int] = {}
    for j, name in enumerate(header[1:], start=1):
        if name not in vocabulary:
            raise ScoreError(f"{submission}:1: column {name!r} is not one of the 80 FAT2019 labels "
                             f"(see trainer/labels.txt)")
        if name in position:
            raise ScoreError(f"{submission}:1: column {name!r} appears twice")
        position[name] = j
    absent = [name for name in vocabulary if name not in position]
    if absent:
        raise ScoreError(f"{submission}:1: {len(absent)} of the 80 label columns are missing (first: {absent[0]}); "
                         f"expected the header of sample_submission.csv")
    return [position[name] for name in vocabulary]


def _score(submission: Path, line: int, label: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ScoreError(f"{submission}:{line}: {label} = {text.strip()!r}, expected a finite number")
    return value
