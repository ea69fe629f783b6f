"""``python -m search.score SUBMISSION LABELS``: lwlrap of a ``submission.csv`` against held-out labels, and per class.

    python kernel.py --test DATA/test --sample-submission DATA/sample_submission.csv --out submission.csv
    python -m search.score submission.csv DATA/test_labels.csv

LABELS is a ``fname,labels`` CSV as ``train_curated.csv`` (the built-in sets' ``test_labels.csv``); SUBMISSION has
``fname`` and the 80 label columns (as ``sample_submission.csv``), one row for each labelled clip. Per class it
prints the label-ranking precision of that class's true labels and its weight (its share of all true labels):
lwlrap is their weighted sum (what it computes: ``search.kaggle.score``).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from search._cli import run_command
from search.kaggle.score import Score, score_submission


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search.score", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("submission", help="submission.csv: fname + the 80 label columns")
    parser.add_argument("labels", help="the held-out labels: fname,labels (e.g. a built-in set's test_labels.csv)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: _score(args), reads={"SUBMISSION": args.submission, "LABELS": args.labels})


def _score(args: argparse.Namespace) -> int:
    print("\n".join(score_lines(score_submission(args.submission, args.labels))))
    return 0


def score_lines(score: Score) -> list[str]:
    """The total, then one row per class in vocabulary order (classes without a true label show ``-``)."""
    width = max(len(label) for label in score.labels)
    lines = [f"lwlrap {score.lwlrap:.4f} over {score.clips} clips, {int(score.positives.sum())} true labels", "",
             f"{'class':<{width}}  {'lwlrap':>6}  {'weight':>6}  {'clips':>5}"]
    for label, precision, weight, clips in zip(score.labels, score.per_class, score.weights, score.positives):
        shown = f"{precision:.4f}" if clips else "-"
        lines.append(f"{label:<{width}}  {shown:>6}  {weight:>6.4f}  {int(clips):>5}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
