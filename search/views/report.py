"""A study's record as ``report.md`` plus pictures as PNGs (``search.report`` is its command).

The report answers what the tuning playbook asks after a study: how trials ended, the top 10, the best
config as a diff from the baseline, the compute the pruner saved, time per trial, the disk the trials
use, whether the best point sits on the edge of the space, how many trials failed or diverged, and the
command that reproduces the best. "Best" is ``search.study.record.best_trial``: the best COMPLETE trial within
the kernel-time budget, the same trial search.best exports.
"""
from __future__ import annotations

import datetime as dt
import os
import statistics
from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.kaggle.ensemble_report import report_section
from search.spec import StudySpec
from search.study.artifacts import TrialFiles
from search.study.folds import finished_folds, trial_folds
from search.study.inherit import inherited_text
from search.study.record import (
    StudyHandle,
    baseline_trial,
    best_trial,
    config_diff,
    is_feasible,
    ranked_trials,
    redact,
    trial_config,
    trial_seconds,
)
from search.views.checks import check_lines
from search.views.format import format_duration, format_value, param_changes
from search.views.plots import Plot, write_plots
from trainer import atomic_write_text

TOP_N = 10
_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)


def write_report(handle: StudyHandle, out_dir: str | os.PathLike, *, storage_arg: str | None = None,
                 runs_dir: str | os.PathLike | None = None, files: TrialFiles | None = None,
                 spec: StudySpec | None = None) -> Path:
    """Write the PNGs and ``report.md`` for the study into ``out_dir``; returns the path of ``report.md``.

    ``storage_arg`` is the ``--storage`` the user passed (repeated, password masked, in the reproduce
    command); ``runs_dir`` (trial folders, TensorBoard runs) and ``files`` (the artifact store) are
    measured for the disk section.
    """
    study = handle.study
    if len(study.directions) > 1:
        raise ValueError(f"study {study.study_name!r} has {len(study.directions)} objectives; "
                         "the report handles single-objective studies only")
    out_dir = Path(out_dir)
    plots = write_plots(study, out_dir)
    text = render_markdown(handle, plots, out_dir, storage_arg=storage_arg, runs_dir=runs_dir, files=files)
    if files is not None:  # the ensemble a study's stored predictions support, within the kernel budget
        text += "\n".join(report_section(handle.study, files, spec, out_dir)) + "\n"
    path = out_dir / "report.md"
    atomic_write_text(path, text)
    return path


def render_markdown(handle: StudyHandle, plots: Sequence[Plot], out_dir: Path, *, storage_arg: str | None = None,
                    runs_dir: str | os.PathLike | None = None, files: TrialFiles | None = None) -> str:
    """The text of ``report.md`` (plots linked relative to ``out_dir``)."""
    study = handle.study
    trials = study.get_trials(deepcopy=False)
    ranked = ranked_trials(study)
    best = best_trial(study)
    lines = [f"# Study `{study.study_name}`", "",
             f"Generated {dt.datetime.now().isoformat(timespec='seconds')}; objective: validation lwlrap "
             f"(maximised); {len(trials)} trials"
             + (f", {text} (`search.run --from`: trained there, not retrained here)"
                if (text := inherited_text(trials)) else "") + ".", ""]

    lines += ["## Trials by state", "", "| state | trials |", "|---|---|"]
    lines += [f"| {state.name} | {sum(t.state == state for t in trials)} |" for state in _STATES]
    lines.append("")
    if ranked:
        lines += _top_trials(ranked[:TOP_N], baseline_trial(trials))
    if best is None:
        why = ("every COMPLETE trial is over the kernel-time budget" if ranked
               else "no trial has completed yet")
        lines += [f"No best trial: {why}.", ""]
    else:
        lines += _best_section(study, best, trials, storage_arg)
    budget = handle.stored_spec().get("study.epochs")
    lines += _compute_section(trials, budget) + _time_section(trials) + _disk_section(runs_dir, files)
    lines += _checks_section(best, trials, study.study_name)
    lines += ["## Plots", ""]
    for plot in plots:
        if plot.path is None:
            lines.append(f"- {plot.title}: {plot.note}")
        else:
            lines += [f"### {plot.title}", "", f"![{plot.title}]({plot.path.relative_to(out_dir)})", ""]
            if plot.note:
                lines += [f"Note: {plot.note}.", ""]
    lines.append("")
    if runs_dir is not None and Path(runs_dir).is_dir():
        lines += ["## TensorBoard", "", f"Per-trial curves and HParams: `tensorboard --logdir {runs_dir}`.", ""]
    return "\n".join(lines)


def _top_trials(top: Sequence[FrozenTrial], baseline: FrozenTrial | None) -> list[str]:
    """The top trials with the params each changed from the baseline trial's (as the pane lines and search.best
    show them); every param where the study has no baseline trial."""
    what = "differs from the baseline" if baseline is not None else "params"
    folds = any(finished_folds(t.user_attrs) for t in top)  # a cross-validated study: each fold's value and spread
    lines = [f"## Top {len(top)} complete trials", "",
             f"| rank | trial | {'out-of-fold lwlrap' if folds else 'lwlrap'} | "
             + ("per fold | spread | " if folds else "") + f"epochs | time | kernel budget | {what} |",
             "|---|---|---|" + ("---|---|" if folds else "") + "---|---|---|---|"]
    for rank, trial in enumerate(top, start=1):
        if baseline is not None:
            params = param_changes(trial.params, baseline.params)
        else:
            params = ", ".join(f"{k}={format_value(v, 4)}" for k, v in sorted(trial.params.items())) or "(no params)"
        seconds = trial_seconds(trial)
        fits = "fits" if is_feasible(trial) else "**over: not exportable**"
        scores = trial.user_attrs.get("fold_lwlrap")
        per_fold = (f"{' '.join(f'{s:.3f}' for s in scores)} | {trial.user_attrs.get('fold_spread', 0.0):.3f} | "
                    if isinstance(scores, list) else "- | - | ") if folds else ""
        lines.append(f"| {rank} | {trial.number} | {trial.value:.4f} | {per_fold}{trial.user_attrs.get('epochs_run', '?')} "
                     f"| {format_duration(seconds) if seconds is not None else '?'} | {fits} | {params} |")
    return lines + [""]


def _best_section(study: optuna.Study, best: FrozenTrial, trials: Sequence[FrozenTrial],
                  storage_arg: str | None) -> list[str]:
    lines = ["## Best trial", "", f"Trial {best.number}, lwlrap {best.value:.4f} (the best COMPLETE trial within "
             f"the kernel-time budget).", ""]
    baseline = baseline_trial(trials)
    if baseline is None:
        lines += ["No baseline trial to compare with.", ""]
    elif baseline.number == best.number:
        lines += ["The best trial is the baseline itself: the search has not beaten it yet.", ""]
    else:
        diff, source = config_diff(baseline, best)
        score = f"{baseline.value:.4f}" if baseline.value is not None else baseline.state.name
        lines += [f"Difference from the baseline (trial {baseline.number}, lwlrap {score}), by {source}:", ""]
        if diff:
            lines += ["| key | baseline | best |", "|---|---|---|"]
            lines += [f"| {key} | {format_value(old, 4)} | {format_value(new, 4)} |" for key, (old, new) in diff.items()]
        else:
            lines.append("(no difference)")
        lines.append("")
    storage = f" --storage '{redact(storage_arg)}'" if storage_arg else ""
    folds = finished_folds(best.user_attrs)
    how = (f"ships its {folds} fold models as trained, nothing retrained" if folds else "retrains its config")
    lines += [f"Reproduce it ({how}, and writes the Kaggle export):", "", "```",
              f"python -m search.best --study {study.study_name}{storage} --export", "```", ""]
    return lines


def _compute_section(trials: Sequence[FrozenTrial], budget: Any) -> list[str]:
    lines = ["## Compute saved by pruning", ""]
    counted = [t for t in trials if isinstance(t.user_attrs.get("epochs_run"), (int, float))]
    if not counted:
        return lines + ["No trial recorded `epochs_run`.", ""]
    run = sum(t.user_attrs["epochs_run"] - t.user_attrs.get("resumed_from_epoch", 0) for t in counted)
    per_trial = []
    for trial in counted:
        folds = trial_folds(trial.user_attrs) or 1  # a cross-validated trial's budget: every fold's epochs
        if isinstance(budget, int):
            per_trial.append(budget * folds)
        else:
            try:
                per_trial.append(trial_config(trial).optim.epochs * folds)
            except (LookupError, ValueError):
                per_trial.append(None)
    finished = [b for t, b in zip(counted, per_trial) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if any(b is None for b in finished):
        return lines + [f"{run} epochs trained over {len(counted)} trials; the full budget per trial is unknown.", ""]
    full = sum(finished)
    done = sum(t.user_attrs["epochs_run"] for t in counted if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    saved = 1.0 - done / full if full else 0.0
    return lines + [f"{run} epochs trained over {len(counted)} trial attempts. The {len(finished)} finished trials "
                    f"reached {done} epochs; every one of them at its full budget would take {full}: the pruner "
                    f"saved {saved:.0%} of the training compute.", ""]


def _time_section(trials: Sequence[FrozenTrial]) -> list[str]:
    lines = ["## Time per trial", ""]
    rows = []
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        seconds = [s for t in trials if t.state == state and (s := trial_seconds(t)) is not None]
        if seconds:
            rows.append(f"| {state.name} | {len(seconds)} | {format_duration(statistics.mean(seconds))} | "
                        f"{format_duration(statistics.median(seconds))} | {format_duration(max(seconds))} | "
                        f"{format_duration(sum(seconds))} |")
    if not rows:
        return lines + ["No finished trial has a recorded time.", ""]
    return lines + ["| state | trials | mean | median | max | total |", "|---|---|---|---|---|---|"] + rows + [""]


def _disk_section(runs_dir: str | os.PathLike | None, files: TrialFiles | None) -> list[str]:
    """Disk the study's trials take: their folders (TensorBoard runs, checkpoints while training) and the
    artifact store (weights kept by the retention setting, predictions, configs)."""
    rows = []
    if runs_dir is not None and Path(runs_dir).is_dir():
        rows.append(("trial folders", str(runs_dir), _folder_bytes(Path(runs_dir))))
    stored = files.disk_bytes() if files is not None else None
    if stored is not None:
        rows.append(("artifact store", "checkpoints, weights, predictions", stored))
    if not rows:
        return []
    lines = ["## Disk", "", "| what | where | size |", "|---|---|---|"]
    lines += [f"| {what} | {where} | {size / 1e6:,.1f} MB |" for what, where, size in rows]
    return lines + ["", "`[study] keep_weights` in the spec sets how many top trials keep their weights; "
                        "`last.pth` is removed when a trial finishes.", ""]


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _checks_section(best: FrozenTrial | None, trials: Sequence[FrozenTrial], study_name: str) -> list[str]:
    return ["## Checks after the study", ""] + check_lines(best, trials, study_name) + [""]
