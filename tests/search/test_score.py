"""python -m search.score: lwlrap of a submission against held-out labels, per class, and one line per mistake."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from search.kaggle.score import ScoreError, score_submission
from search.score import main
from trainer import load_labels, lwlrap

LABELS = load_labels()


def write_labels(path: Path, rows: dict[str, list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fname", "labels"])
        writer.writerows([fname, ",".join(labels)] for fname, labels in rows.items())
    return path


def write_submission(path: Path, scores: dict[str, np.ndarray], columns: list[str] = LABELS) -> Path:
    order = [LABELS.index(c) if c in LABELS else 0 for c in columns]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fname", *columns])
        writer.writerows([fname, *(f"{row[j]:.6f}" for j in order)] for fname, row in scores.items())
    return path


@pytest.fixture()
def files(tmp_path):
    """Three clips: a (Accordion), b (Bark + Bass_drum), c (Accordion); scores that rank b's Bass_drum third."""
    truth = {"a.wav": ["Accordion"], "b.wav": ["Bark", "Bass_drum"], "c.wav": ["Accordion"]}
    rng = np.random.default_rng(0)
    scores = {name: rng.uniform(0, 0.1, len(LABELS)) for name in truth}
    scores["a.wav"][LABELS.index("Accordion")] = 0.9
    scores["b.wav"][LABELS.index("Bark")] = 0.8
    scores["b.wav"][LABELS.index("Bass_drum")] = 0.5
    scores["b.wav"][LABELS.index("Cheering")] = 0.7  # ranks above Bass_drum: its precision is 2/3
    scores["c.wav"][LABELS.index("Accordion")] = 0.95
    return write_submission(tmp_path / "submission.csv", scores), write_labels(tmp_path / "test_labels.csv", truth)


def test_lwlrap_and_the_per_class_terms_that_make_it(files):
    score = score_submission(*files)
    assert score.clips == 3 and score.lwlrap == pytest.approx((1 + 1 + 2 / 3 + 1) / 4)
    i = LABELS.index
    assert score.per_class[i("Accordion")] == 1.0 and score.per_class[i("Bass_drum")] == pytest.approx(2 / 3)
    assert score.positives[i("Accordion")] == 2 and score.positives.sum() == 4
    targets = np.zeros((3, len(LABELS)))
    for row, names in enumerate([["Accordion"], ["Bark", "Bass_drum"], ["Accordion"]]):
        targets[row, [i(n) for n in names]] = 1
    submitted = np.loadtxt(files[0], delimiter=",", skiprows=1, usecols=range(1, len(LABELS) + 1))
    assert score.lwlrap == pytest.approx(lwlrap(targets, submitted))  # the trainer's metric, computed apart


def test_columns_in_another_order_score_the_same(files, tmp_path):
    submission, labels = files
    rows = list(csv.reader(open(submission, encoding="utf-8")))
    scores = {row[0]: np.array([float(v) for v in row[1:]]) for row in rows[1:]}
    shuffled = write_submission(tmp_path / "shuffled.csv", scores, LABELS[::-1])
    assert score_submission(shuffled, labels).lwlrap == score_submission(submission, labels).lwlrap


def test_the_command_prints_the_total_and_every_class(files, capsys):
    assert main([str(f) for f in files]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"lwlrap {(1 + 1 + 2 / 3 + 1) / 4:.4f} over 3 clips, 4 true labels"
    rows = {line.split()[0]: line.split()[1:] for line in out[3:]}
    assert len(rows) == len(LABELS)
    assert rows["Bass_drum"] == ["0.6667", "0.2500", "1"] and rows["Cheering"] == ["-", "0.0000", "0"]


def test_it_agrees_with_the_trainers_lwlrap(files):
    submission, labels = files
    rows = list(csv.reader(open(submission, encoding="utf-8")))[1:]
    truth = {"a.wav": ["Accordion"], "b.wav": ["Bark", "Bass_drum"], "c.wav": ["Accordion"]}
    targets = np.array([[float(label in truth[row[0]]) for label in LABELS] for row in rows])
    assert score_submission(submission, labels).lwlrap == pytest.approx(
        lwlrap(targets, np.array([[float(v) for v in row[1:]] for row in rows])))


def _break(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text(encoding="utf-8").replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize("mistake, line", [
    ("missing submission", "submission.csv: file not found (expected submission.csv: fname + the 80 label columns)"),
    ("missing labels", "test_labels.csv: file not found (expected the held-out labels"),
    ("extra fname", "submission.csv: 1 of its 4 fnames have no labels in"),
    ("missing fname", "submission.csv: 1 labelled clips of"),
    ("unknown column", "submission.csv:1: column 'Accordeon' is not one of the 80 FAT2019 labels"),
    ("missing column", f"submission.csv:1: 1 of the 80 label columns are missing (first: {LABELS[0]})"),
    ("not a number", f"submission.csv:2: {LABELS[0]} = 'high', expected a finite number"),
    ("header only labels", "test_labels.csv: no labelled clips (only a header)"),
    ("unknown label", "test_labels.csv:2: label 'Acordion' is not one of the 80 FAT2019 labels"),
])
def test_each_mistake_is_one_line_naming_the_file(files, capsys, mistake, line):
    submission, labels = files
    if mistake == "missing submission":
        submission.unlink()
    elif mistake == "missing labels":
        labels.unlink()
    elif mistake == "extra fname":
        submission.write_text(submission.read_text() + "d.wav" + ",0.5" * len(LABELS) + "\n")
    elif mistake == "missing fname":
        submission.write_text("\n".join(submission.read_text().splitlines()[:-1]) + "\n")
    elif mistake == "unknown column":
        _break(submission, "Accordion", "Accordeon")
    elif mistake == "missing column":
        text = submission.read_text().splitlines()
        submission.write_text("\n".join(",".join(row.split(",")[:1] + row.split(",")[2:]) for row in text) + "\n")
    elif mistake == "not a number":
        lines = submission.read_text().splitlines()
        cells = lines[1].split(",")
        lines[1] = ",".join([cells[0], "high", *cells[2:]])
        submission.write_text("\n".join(lines) + "\n")
    elif mistake == "header only labels":
        labels.write_text("fname,labels\n")
    elif mistake == "unknown label":
        _break(labels, "Accordion", "Acordion")
    assert main([str(submission), str(labels)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and line in err
    with pytest.raises(ScoreError):
        score_submission(submission, labels)
