"""Which value of a cross-validated trial ranks configs as held-out audio does: the out-of-fold lwlrap pooled over
the curated clips (the study's value), or the mean of the K per-fold lwlraps?

    python -m benchmarks.bench_cv_value --out bench-quality

Reads the cross-validated studies ``benchmarks.bench_search_quality`` left in ``--out`` (records/, studies/), exports
every trial that finished all its folds as ``search.best --export`` does by default (its fold models as trained:
nothing retrained), runs the kernel on the set's held-out test clips and scores it (cached in ``--out/exports``, as
the search-quality benchmark caches its exports). Per study it prints Kendall's tau of each value against the test
lwlrap over those trials, and the test lwlrap of the trial each value would have picked as the best. Writes the
records to ``--out/cv-value.json``. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from benchmarks.bench_search_quality import export_and_score
from benchmarks.harness import REPO
from benchmarks.quality_strategies import Run
from search.study.record import load_study
from trainer import atomic_write_text, ensure_builtin

VALUES = ("pooled", "mean")  # trial.value (out-of-fold lwlrap, pooled) and user_attrs["fold_mean"]


def kendall_tau(xs: list[float], ys: list[float]) -> float:
    """Kendall's tau-b of two equally long sequences (ties in either count in neither direction)."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denominator if denominator else 0.0


def record_run(record: dict) -> Run:
    return Run(record["data"], record["strategy"], record["repeat"], record["folds"], record.get("epochs_override"))


def study_trials(record: dict, out: Path) -> list[dict]:
    """Every trial of the record's study that finished all its folds: its pooled and mean values and the held-out
    test lwlrap of its fold models."""
    run = record_run(record)
    studies = out / "studies"
    data_dir = ensure_builtin(record["data"], scale=record["scale"])
    study = load_study(run.name, None, studies).study
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        change = {"trial": trial.number, "recipe": "cv-folds", "export_epochs": 0}
        test = export_and_score(run, studies, change, data_dir, out)["test"]
        rows.append({"trial": trial.number, "pooled": trial.value, "mean": trial.user_attrs["fold_mean"],
                     "test": test})
    return rows


def summarize(study: str, rows: list[dict]) -> dict:
    """Per value: Kendall's tau against test, and the test lwlrap of the trial it ranks first."""
    tests = [r["test"] for r in rows]
    summary = {"study": study, "trials": len(rows), "best_test": max(tests)}
    for value in VALUES:
        summary[f"tau_{value}"] = kendall_tau([r[value] for r in rows], tests)
        summary[f"picked_{value}"] = max(rows, key=lambda r: r[value])["test"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench-quality")
    parser.add_argument("--min-trials", type=int, default=3, help="studies with fewer complete trials are left out")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    records = [json.loads(p.read_text()) for p in sorted((args.out / "records").glob("*.json"))]
    records = [r for r in records if r.get("folds")]
    if not records:
        sys.exit(f"error: {args.out / 'records'}: no cross-validated study (run benchmarks.bench_search_quality first)")
    studies = []
    for record in records:
        rows = study_trials(record, args.out)
        if len(rows) >= args.min_trials:
            studies.append({**summarize(record_run(record).name, rows), "rows": rows})
    print("| study | complete trials | tau pooled | tau mean | test of pooled's pick | test of mean's pick | best test |")
    print("|---|---|---|---|---|---|---|")
    for s in studies:
        print(f"| {s['study']} | {s['trials']} | {s['tau_pooled']:+.3f} | {s['tau_mean']:+.3f} | "
              f"{s['picked_pooled']:.4f} | {s['picked_mean']:.4f} | {s['best_test']:.4f} |")
    if studies:
        print(f"\nmedian tau: pooled {statistics.median(s['tau_pooled'] for s in studies):+.3f}, "
              f"mean {statistics.median(s['tau_mean'] for s in studies):+.3f} over {len(studies)} studies")
    atomic_write_text(args.out / "cv-value.json", json.dumps(studies, indent=1))


if __name__ == "__main__":
    main()
