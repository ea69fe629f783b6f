"""Held-out test gain of an exported study ensemble over the single best trial, measured through the kernels.

    python -m benchmarks.bench_ensemble --study demo [--studies-dir studies] [--storage URL] [--artifacts DIR]
        [--ensemble 8] [--bags 1] [--pooling mean] [--max-kernel-s S] [--reuse-checkpoints] [--data DIR] [--out DIR]

Given a finished study, exports the single best trial (``search.best --export``) and the K-round greedy
ensemble (``search.best --ensemble K --export``), runs each generated kernel.py as a separate process where
the project is not importable on the data's test clips, scores both submissions against ``test_labels.csv``
(the demo set and the benchmark sets have one) and prints one markdown row: study, K, members, validation
lwlrap single/ensemble (the ensemble's is optimistic: chosen on that split), test lwlrap single/ensemble,
projected kernel seconds of the ensemble against its budget, and each kernel's measured wall time.
Without ``--reuse-checkpoints`` every member is retrained with its trial's exact config and thread count.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from search.kaggle.ensemble import select_from_study
from search.kaggle.export import run_kernel
from search.kaggle.kernel_main import POOLINGS
from search.kaggle.score import score_submission
from search.kaggle.study_export import ExportOptions, choose_trial, export_ensemble, export_trial
from search.study.locate import locate_args
from search.study.record import resolve_data
from search.study.storage import add_study_arguments

HEADER = ("| study | K | members | val lwlrap single | val lwlrap ensemble | test lwlrap single | test lwlrap ensemble "
          "| projected kernel s (budget) | kernel wall s single / ensemble |\n|---|---|---|---|---|---|---|---|---|")


def run_and_score(export_dir: Path, data_dir: Path, device: str) -> tuple[float, float]:
    """(test lwlrap, wall seconds) of the export's kernel run as Kaggle would."""
    started = time.perf_counter()
    run_kernel(export_dir, data_dir / "test", data_dir / "sample_submission.csv", export_dir / "submission.csv",
               device=device)
    score = score_submission(export_dir / "submission.csv", data_dir / "test_labels.csv").lwlrap
    return score, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_study_arguments(parser)
    parser.add_argument("--ensemble", type=int, default=8, metavar="K", help="greedy selection rounds")
    parser.add_argument("--bags", type=int, default=1)
    parser.add_argument("--pooling", choices=POOLINGS, default="mean")
    parser.add_argument("--max-kernel-s", type=float)
    parser.add_argument("--reuse-checkpoints", action="store_true", help="the trials' own weights, no retraining")
    parser.add_argument("--data", help="data folder (default: the study spec's)")
    parser.add_argument("--device", default="auto", help="device of the kernels")
    parser.add_argument("--out", help="folder for both exports (default <studies-dir>/<study>/bench-ensemble)")
    args = parser.parse_args(argv)

    location = locate_args(args)
    spec = location.spec
    handle = location.open()
    files = location.reader_files(handle)
    data_dir = resolve_data(spec, args.data)
    if not (data_dir / "test_labels.csv").is_file():
        print(f"error: {data_dir / 'test_labels.csv'}: not found; the benchmark needs labelled test clips", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else location.folder / "bench-ensemble"
    options = ExportOptions(pooling=args.pooling, reuse_checkpoints=args.reuse_checkpoints)

    selection = select_from_study(handle.study, files, data_dir, spec=spec, rounds=args.ensemble,
                                  max_kernel_s=args.max_kernel_s, pooling=args.pooling, bags=args.bags,
                                  require_weights=args.reuse_checkpoints)
    single = choose_trial(handle.study)
    export_trial(handle.study, single, data_dir, out / "single", options, spec=spec, files=files)
    export_ensemble(handle.study, selection, data_dir, out / f"ensemble-{args.ensemble}", options, files=files)
    test_single, wall_single = run_and_score(out / "single", data_dir, args.device)
    test_ensemble, wall_ensemble = run_and_score(out / f"ensemble-{args.ensemble}", data_dir, args.device)

    members = ", ".join(f"#{n} x{w:.2f}" for n, w in selection.weights.items())
    budget = "none" if selection.budget.limit_s is None else f"{selection.budget.limit_s:,.0f}"
    projected = "?" if selection.projected_s is None else f"{selection.projected_s:,.0f}"
    print(HEADER)
    print(f"| {location.name} | {args.ensemble} | {members} | {selection.single_lwlrap:.4f} (#{selection.single}) | "
          f"{selection.lwlrap:.4f} | {test_single:.4f} | {test_ensemble:.4f} | {projected} ({budget}) | "
          f"{wall_single:.1f} / {wall_ensemble:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
