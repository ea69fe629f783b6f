"""python -m search.quickstart: what this tool is for, on a laptop CPU, with no data to download.

Runs a small study of the built-in demo data (no download) with one worker, exports its best trial and its
baseline with their own weights, runs each generated Kaggle kernel as Kaggle would (a separate process, the
project not importable) on the demo's held-out test clips, and prints baseline vs best on validation and on
clips the search never saw, what pruning saved, and the commands for the next steps. Run it again to continue
the same study (``--trials`` is the study's total).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from optuna.trial import FrozenTrial, TrialState

from search._cli import UserError, run_command
from search.kaggle.export import run_kernel
from search.kaggle.score import score_submission
from search.kaggle.study_export import ExportOptions, export_trial
from search.study.folds import finished_folds
from search.study.locate import locate
from search.study.record import FINISHED, baseline_trial, best_trial, pruning_saved, resolve_data
from search.study.storage import studies_dir
from search.views.format import format_duration
from search.views.tunnel import tunnel_line

STUDY = "quickstart"
DEFAULT_TRIALS = 12


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.quickstart", description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="the study's total of finished trials")
    parser.add_argument("--studies-dir", type=studies_dir, default=studies_dir(), help="where studies/quickstart.toml is")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: the free cores)")
    args = parser.parse_args(argv)
    return run_command(lambda: _quickstart(args), writes={"--studies-dir": args.studies_dir})


def _quickstart(args: argparse.Namespace) -> int:
    started = time.monotonic()
    worker_args = ["--study", STUDY, "--studies-dir", str(args.studies_dir), "--trials", str(args.trials),
                   "--device", "cpu", *(["--threads", str(args.threads)] if args.threads else [])]
    location = locate(STUDY, args.studies_dir, spec_required=True)
    spec = location.spec
    print(f"1/3 searching: a {args.trials}-trial study of the {spec.data} data (one worker, trials of up to "
          f"{spec.epochs} epochs)", flush=True)
    status = _run_worker(worker_args)
    if status != 0:
        return status
    handle = location.open()
    study = handle.study
    files = location.trial_files(handle.uid())
    data_dir = resolve_data(spec, None)
    best, baseline = best_trial(study), baseline_trial(study.get_trials(deepcopy=False))
    if best is None or baseline is None or baseline.state != TrialState.COMPLETE:
        raise UserError("the study has no complete baseline or best trial yet; run the command again")

    models = (f"their {spec.folds} fold models each, as trained" if spec.folds else "their own weights")
    print(f"2/3 exporting the best trial and the baseline ({models}) as Kaggle kernels", flush=True)
    exports = {"best": (best, location.folder / "export")}
    if baseline.number != best.number:
        exports["baseline"] = (baseline, location.folder / "export-baseline")
    for trial, out in exports.values():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            export_trial(study, trial, data_dir, out, ExportOptions(reuse_checkpoints=True, time_kernel=False), spec=spec, files=files)
    print("3/3 running each kernel on the demo's held-out test clips (never seen by the search)", flush=True)
    test_scores = {}
    for label, (_, out) in exports.items():
        with tempfile.TemporaryDirectory() as tmp:
            submission = Path(tmp) / "submission.csv"
            run_kernel(out, data_dir / "test", data_dir / "sample_submission.csv", submission, device="cpu")
            test_scores[label] = score_submission(submission, data_dir / "test_labels.csv").lwlrap
    test_scores.setdefault("baseline", test_scores["best"])
    print()
    print(summary(study.study_name, best, baseline, test_scores, study.get_trials(deepcopy=False), spec.epochs,
                  time.monotonic() - started, args.studies_dir))
    return 0


def _run_worker(worker_args: list[str]) -> int:
    """``python -m search.run`` in this terminal, as the user would start it in a pane."""
    worker = subprocess.Popen([sys.executable, "-m", "search.run", *worker_args])
    try:
        return worker.wait()
    except KeyboardInterrupt:  # the worker got the same Ctrl-C: let it re-queue its trial and exit
        return worker.wait()


def summary(name: str, best: FrozenTrial, baseline: FrozenTrial, test: dict[str, float],
            trials: list[FrozenTrial], epochs: int, seconds: float, studies: Path) -> str:
    """The table and the next commands."""
    finished = [t for t in trials if t.state in FINISHED]
    complete = sum(t.state == TrialState.COMPLETE for t in finished)
    saved = pruning_saved(trials, epochs)
    pruning = f"; pruning saved {saved:.0%} of the training epochs" if saved is not None else ""
    same = best.number == baseline.number
    rows = [("", f"baseline (#{baseline.number})", f"best (#{best.number})", "gain"),
            (f"{'out-of-fold' if finished_folds(best.user_attrs) else 'validation'} lwlrap", f"{baseline.value:.4f}",
             f"{best.value:.4f}", f"{best.value - baseline.value:+.4f}"),
            ("held-out test lwlrap", f"{test['baseline']:.4f}", f"{test['best']:.4f}",
             f"{test['best'] - test['baseline']:+.4f}")]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    table = "\n".join("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)
    verdict = ("the search has not beaten its baseline yet: run again with more --trials" if same else
               "the tuned config beats the baseline on clips it never saw" if test["best"] > test["baseline"] else
               "better on validation, not on held-out clips: validation was noise at this size; run more --trials")
    return f"""study {name}: {len(finished)} trials ({complete} complete, {len(finished) - complete} pruned) in {format_duration(seconds)}\
{pruning}

{table}

{verdict}.

next:
  python -m search.dashboard --study {name} --studies-dir {studies}   # then on your laptop: {tunnel_line(8080)}
  python -m search.report --study {name} --studies-dir {studies}      # report.md + pictures
  python -m search.best --study {name} --studies-dir {studies} --ensemble 8   # a budgeted ensemble of the study
  python -m search.run --study fat2019 --trials 50 --data /data/fat2019 --device cuda   # the real data, one per pane
"""


if __name__ == "__main__":
    sys.exit(main())
