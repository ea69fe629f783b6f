"""The study's story where people look: notes in optuna-dashboard, written by the workers as trials end.

- each trial's note: how it ended and why (pruned at which epoch, failed for what, over the kernel
  budget), its epochs and time, and what it changed relative to the baseline;
- the study's note, rewritten after every trial: best vs baseline, the best config as a diff, the checks
  after the study and the command that exports the best.

Notes are written with optuna-dashboard's ``save_note``; they live in the study's system attrs, so
``optuna studies`` and the user attrs stay small.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Mapping, Sequence

import optuna
import optuna_dashboard
from optuna.trial import FrozenTrial, TrialState

from search.study.folds import cv_summary, finished_folds
from search.study.inherit import inherited_text
from search.study.record import baseline_trial, best_trial, config_diff, pruning_saved, ranked_trials, trial_seconds
from search.views.checks import check_lines
from search.views.format import format_duration, format_value
from trainer import TrainConfig

_log = logging.getLogger(__name__)
# How a trial's inference cost was timed (its ``inference_cost_method``), as its note says it
TIMED_BY = {"cpu-time-1-thread": "timed by one CPU thread's compute time: a busy box does not inflate it",
            "wall-time": "timed by wall time on the GPU",
            "": "timed by wall time (recorded before the cost was timed by CPU time: a busy box inflates it)"}


def trial_note(number: int, outcome: str, config: TrainConfig | None, base: TrainConfig,
               attrs: Mapping[str, Any]) -> str:
    """Markdown for a trial that is ending: ``outcome`` is e.g. "COMPLETE, lwlrap 0.6123"."""
    lines = [f"### Trial {number}: {outcome}", ""]
    if attrs.get("baseline"):
        lines.append("The study's **baseline** (the spec's `[base]`).")
    elif config is not None:
        changed = config.diff(base)
        old = base.flat()
        lines.append("Differs from the baseline in: " + (", ".join(
            f"`{key}` {format_value(old[key], 4)} → {format_value(value, 4)}" for key, value in changed.items()) or "nothing"))
    if attrs.get("startup"):
        lines.append(f"A startup trial near the baseline (changed: {attrs['startup']}).")
    if attrs.get("retry_of") is not None:
        lines.append(f"Retry of trial {attrs['retry_of']} ({attrs.get('retry_reason', '?')}), resumed after epoch "
                     f"{attrs.get('resumed_from_epoch', 0)}.")
    if attrs.get("resume_note"):
        lines.append(str(attrs["resume_note"]))
    lines.append("")
    total = config.optim.epochs if config is not None else "?"
    folds = attrs.get("folds")
    if isinstance(folds, int) and folds > 1 and config is not None:
        total = f"{config.optim.epochs * folds} ({folds} folds of {config.optim.epochs})"
    facts = [f"epochs: {attrs.get('epochs_run', 0)} of {total}"]
    if attrs.get("best_epoch"):
        facts.append(f"best at epoch {attrs['best_epoch']}")
    if isinstance(attrs.get("wall_time"), (int, float)):
        facts.append(f"time: {format_duration(attrs['wall_time'])}")
    if attrs.get("worker_id"):
        facts.append(f"worker {attrs['worker_id']} ({attrs.get('threads', '?')} threads)")
    lines.append("- " + "; ".join(facts))
    if (cv := cv_summary(attrs)) is not None:
        lines.append(f"- Cross-validation: {cv}")
    if "kernel_time_s" in attrs:
        fits = "fits the budget" if attrs.get("feasible") else "**over the budget: never exported by default**"
        models = attrs.get("kernel_models", 1)
        each = f" per model, {models} fold models" if isinstance(models, int) and models > 1 else ""
        timed = TIMED_BY.get(str(attrs.get("inference_cost_method")), TIMED_BY[""])
        lines.append(f"- Kaggle kernel: projected {attrs['kernel_time_s']:,.0f} s for the test set{each}, {fits} "
                     f"(inference {timed})")
    if attrs.get("reason"):
        lines.append(f"- Why: {attrs['reason']}")
    return "\n".join(lines) + "\n"


def study_note(study: optuna.Study, *, spec_epochs: int | None = None,
               trials: Sequence[FrozenTrial] | None = None) -> str:
    """Markdown summary of the study as it stands now (``trials``: as the caller just read them)."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    state_text = ", ".join(f"{n} {s.name.lower()}" for s, n in counts.items() if n)
    inherited = inherited_text(trials)
    lines = [f"## Study {study.study_name}", "", f"{len(trials)} trials: {state_text or 'none yet'}"
             + (f"; {inherited} (`search.run --from`)" if inherited else "") + ".", ""]
    best, baseline = best_trial(study, trials), baseline_trial(trials)
    if best is None:
        ranked = ranked_trials(study, trials)
        lines.append("No best trial yet: " + ("every COMPLETE trial is over the kernel budget."
                                              if ranked else "no trial has completed."))
    else:
        measure = (f"out-of-fold lwlrap over {best.user_attrs['folds']} folds"
                   if finished_folds(best.user_attrs) else "validation lwlrap")
        lines.append(f"**Best: trial {best.number}, {measure} {best.value:.4f}** "
                     f"({best.user_attrs.get('epochs_run', '?')} epochs"
                     + (f", {format_duration(s)}" if (s := trial_seconds(best)) is not None else "") + ").")
        if baseline is not None and baseline.value is not None and baseline.number != best.number:
            lines.append(f"Baseline: trial {baseline.number}, {baseline.value:.4f}; the best is "
                         f"{best.value - baseline.value:+.4f} on validation (the clips that also chose it: check "
                         f"held-out clips before trusting a small gain).")
            diff, _ = config_diff(baseline, best)
            if diff:
                lines += ["", "| key | baseline | best |", "|---|---|---|"]
                lines += [f"| {key} | {format_value(old, 4)} | {format_value(new, 4)} |" for key, (old, new) in diff.items()]
        elif baseline is not None and baseline.number == best.number:
            lines.append("The best is the baseline itself: the search has not beaten it yet.")
    saved = pruning_saved(trials, spec_epochs) if spec_epochs else None
    if saved is not None:
        lines += ["", f"Pruning saved {saved:.0%} of the training epochs of the finished trials."]
    lines += ["", "### Checks after the study", "", *check_lines(best, trials, study.study_name), "", "### Next",
              "", f"- export the best for Kaggle: `python -m search.best --study {study.study_name} --export`",
              f"- the full report: `python -m search.report --study {study.study_name}`",
              "", f"_updated {dt.datetime.now().isoformat(timespec='seconds')}_"]
    return "\n".join(lines) + "\n"


def save(study_or_trial: optuna.Study | optuna.Trial, body: str) -> None:
    """Write a note; a failure is logged, never fatal: a note must not cost a trial."""
    try:
        optuna_dashboard.save_note(study_or_trial, body)
    except Exception as exc:  # the note is a report, not the record: the trial's state is what matters
        _log.warning("could not write the dashboard note: %s", exc)
