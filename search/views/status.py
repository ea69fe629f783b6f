"""A study as one screen of text for a tmux pane over SSH (``python -m search.status`` is its command).

The screen: the trials by state; each running trial's epoch, latest lwlrap, ETA, device and worker; the best
trial against the baseline and what it changed; the last trials to end with their reasons; what pruning
saved. Every line fits an 80-column pane; one redraw reads the trials once (and Optuna's best trial).
"""
from __future__ import annotations

import datetime as dt
import textwrap
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TextIO

from optuna.trial import FrozenTrial, TrialState

from search.spec import StudySpec
from search.study.folds import progress_text
from search.study.inherit import inherited_text
from search.study.record import (
    StudyHandle,
    baseline_trial,
    best_trial,
    last_reported,
    pruning_saved,
    redact,
    trial_config,
)
from search.views.format import format_duration, param_changes

WIDTH = 80  # a tmux pane split in two on a laptop screen
CLEAR = "\x1b[H\x1b[2J"  # cursor home, then erase the screen: a redraw in place
ELLIPSIS = "..."  # ASCII: a pane over SSH with LANG=C cannot print a unicode one
COUNTED = ((TrialState.COMPLETE, "complete"), (TrialState.PRUNED, "pruned"), (TrialState.FAIL, "failed"),
           (TrialState.RUNNING, "running"), (TrialState.WAITING, "waiting"))
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
DEFAULT_RECENT = 5

# Running-trial columns: "  #12   3/30   0.4123  12m05s  cuda:0    host:pid"; the worker takes what is left.
_TAG, _EPOCH, _LWLRAP, _ETA, _DEVICE = 6, 10, 8, 8, 10  # epoch: 9/30, or f2/5 9/30 in fold 2 of 5
_RUNNING_HEAD = f"  {'trial':<{_TAG}}{'epoch':<{_EPOCH}}{'lwlrap':<{_LWLRAP}}{'ETA':<{_ETA}}{'device':<{_DEVICE}}worker"
# Ended-trial columns: "  #11   PRUNED   0.4719   3 ep  <reason, or what it changed>".
_STATE, _VALUE, _EPOCHS = 9, 9, 7


def fit(text: str, width: int = WIDTH) -> str:
    """``text`` on one line of at most ``width`` columns (whitespace runs, newlines included, become one space)."""
    return clip(" ".join(text.split()), width)


def fit_tail(text: str, width: int = WIDTH) -> str:
    """``text`` cut to ``width`` columns from the front: of a long path the file name tells two studies apart."""
    return text if len(text) <= width else ELLIPSIS + text[len(text) - width + len(ELLIPSIS):]


def wrapped(label: str, text: str, width: int = WIDTH) -> list[str]:
    """``label`` then ``text`` over as many lines as it needs, later lines indented under the first word."""
    return textwrap.wrap(" ".join(text.split()), width, initial_indent=label, subsequent_indent=" " * len(label),
                         break_on_hyphens=False) or [label.rstrip()]


def fit_middle(text: str, width: int = WIDTH) -> str:
    """Like ``fit``, but keeps both ends: a worker is ``host:pid``, and the pid tells two panes apart."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    head = (width - len(ELLIPSIS)) // 2
    return text[:head] + ELLIPSIS + text[len(text) - (width - len(ELLIPSIS) - head):]


def clip(line: str, width: int = WIDTH) -> str:
    """``line`` cut to ``width`` columns, its spacing kept (the columns of a table line)."""
    return line if len(line) <= width else line[:max(0, width - len(ELLIPSIS))] + ELLIPSIS


def fold_epochs(trial: FrozenTrial, spec: StudySpec | None) -> int | None:
    """``config.optim.epochs`` of the trial's recorded config (else the spec's): one fold's; None when unknown."""
    try:
        return trial_config(trial, spec).optim.epochs
    except (LookupError, ValueError):  # no config recorded, or one this version cannot read
        return None


def epoch_budget(trial: FrozenTrial, spec: StudySpec | None) -> int | None:
    """The epochs the trial trains if nothing cuts it: one fold's, times its folds when cross-validated."""
    epochs = fold_epochs(trial, spec)
    folds = trial.user_attrs.get("folds")
    return epochs * folds if epochs is not None and isinstance(folds, int) and folds > 1 else epochs


def epochs_done(trial: FrozenTrial) -> int:
    """Epochs finished so far, resumed ones included (``epochs_run`` is written after every epoch)."""
    done = trial.user_attrs.get("epochs_run", trial.user_attrs.get("resumed_from_epoch", 0))
    return int(done) if isinstance(done, (int, float)) else 0


def eta_seconds(trial: FrozenTrial, epochs: int | None, now: dt.datetime) -> float | None:
    """Time left of a running trial: its seconds per epoch since this attempt started (epochs it resumed after
    cost it nothing) times the epochs left; None before its first epoch or without a budget."""
    if epochs is None or trial.datetime_start is None:
        return None
    trained = epochs_done(trial) - int(trial.user_attrs.get("resumed_from_epoch", 0) or 0)
    if trained <= 0:
        return None
    per_epoch = max(0.0, (now - trial.datetime_start).total_seconds()) / trained
    return max(0, epochs - epochs_done(trial)) * per_epoch


@dataclass(frozen=True)
class StatusView:
    """What a redraw needs besides the trials, read once: the study, its spec (None when read from another
    machine's storage), the baseline's params and the study's epoch budget."""

    handle: StudyHandle
    spec: StudySpec | None
    baseline_params: Mapping[str, Any] | None  # None: compare with the baseline trial's own params
    epochs: int | None
    recent: int = DEFAULT_RECENT

    @classmethod
    def of(cls, handle: StudyHandle, spec: StudySpec | None, *, recent: int = DEFAULT_RECENT) -> "StatusView":
        if len(handle.study.directions) > 1:
            raise ValueError(f"study {handle.name!r} has {len(handle.study.directions)} objectives; "
                             "the status view handles single-objective studies only")
        stored = handle.stored_spec()  # what the study was started with wins over the file
        if isinstance(stored.get("study.epochs"), int):
            epochs, folds = stored["study.epochs"], stored.get("study.folds")
        else:
            epochs, folds = (spec.epochs, spec.folds) if spec is not None else (None, None)
        if epochs is not None and isinstance(folds, int) and folds > 1:
            epochs *= folds  # a cross-validated trial's budget is every fold's epochs
        return cls(handle, spec, spec.baseline_params() if spec is not None else None, epochs, recent)

    def lines(self, now: dt.datetime | None = None) -> list[str]:
        """The screen as it stands ``now`` (default: the local clock, as Optuna's trial times)."""
        now = now or dt.datetime.now()
        trials = self.handle.study.get_trials(deepcopy=False)
        baseline = baseline_trial(trials)
        reference = self.baseline_params if self.baseline_params is not None else (
            baseline.params if baseline is not None else {})
        sections = (self._header(trials, now), self._running(trials, now), self._best(baseline, reference),
                    self._ended(trials, reference), self._pruning(trials))
        lines = [line for section in sections for line in [*section, ""]][:-1]
        return [clip(line) for line in lines]  # a last guard: every section already fits

    def _header(self, trials: Sequence[FrozenTrial], now: dt.datetime) -> list[str]:
        counts = ", ".join(f"{sum(t.state == state for t in trials)} {name}" for state, name in COUNTED)
        return [clip(f"study {self.handle.name}   {now:%Y-%m-%d %H:%M:%S}"),
                "storage " + fit_tail(redact(self.handle.url), WIDTH - len("storage ")),
                *wrapped("trials   ", f"{counts} ({len(trials)} in all"
                         + (f"; {text}" if (text := inherited_text(trials)) else "") + ")")]

    def _running(self, trials: Sequence[FrozenTrial], now: dt.datetime) -> list[str]:
        running = sorted((t for t in trials if t.state == TrialState.RUNNING), key=lambda t: t.number)
        if not running:
            return ["running: none"]
        return [f"running ({len(running)})", _RUNNING_HEAD, *(self._running_line(t, now) for t in running)]

    def _running_line(self, trial: FrozenTrial, now: dt.datetime) -> str:
        epochs = epoch_budget(trial, self.spec)
        value = last_reported(trial)
        eta = eta_seconds(trial, epochs, now)
        cells = (fit(f"#{trial.number}", _TAG - 1), fit(progress_text(trial.user_attrs, fold_epochs(trial, self.spec)),
                                                        _EPOCH - 1),
                 f"{value:.4f}" if value is not None else "-", format_duration(eta) if eta is not None else "-",
                 fit(str(trial.user_attrs.get("device") or "-"), _DEVICE - 1))
        widths = (_TAG, _EPOCH, _LWLRAP, _ETA, _DEVICE)
        text = "  " + "".join(f"{cell:<{width}}" for cell, width in zip(cells, widths))
        return text + fit_middle(str(trial.user_attrs.get("worker_id") or "-"), WIDTH - len(text))

    def _best(self, baseline: FrozenTrial | None, reference: Mapping[str, Any]) -> list[str]:
        best = best_trial(self.handle.study)  # the service's one definition of "best" (feasible, COMPLETE)
        baseline_text = "none" if baseline is None else f"#{baseline.number} " + (
            f"lwlrap {baseline.value:.4f}" if baseline.value is not None else baseline.state.name)
        if best is None:
            return ["best      none yet (no complete trial within the constraints)", f"baseline  {baseline_text}"]
        if baseline is not None and baseline.number == best.number:
            return [f"best      #{best.number} lwlrap {best.value:.4f}: the baseline itself, not beaten yet"]
        delta = (f" ({best.value - baseline.value:+.4f} vs the baseline)"
                 if baseline is not None and baseline.value is not None else "")
        return [clip(f"best      #{best.number} lwlrap {best.value:.4f}{delta}"), f"baseline  {baseline_text}",
                *wrapped("changed   ", param_changes(best.params, reference))]

    def _ended(self, trials: Sequence[FrozenTrial], reference: Mapping[str, Any]) -> list[str]:
        if not self.recent:
            return []
        ended = [t for t in trials if t.state in ENDED]
        if not ended:
            return ["ended: none yet"]
        last = sorted(ended, key=lambda t: (t.datetime_complete or dt.datetime.min, t.number))[-self.recent:]
        return [f"last {len(last)} to end", *(self._ended_line(t, reference) for t in reversed(last))]

    def _ended_line(self, trial: FrozenTrial, reference: Mapping[str, Any]) -> str:
        value = {TrialState.COMPLETE: trial.value, TrialState.PRUNED: last_reported(trial)}.get(trial.state)
        reason = trial.user_attrs.get("reason")
        # a trial that did not complete: why; one that did: what it tried (as the worker's pane line does)
        detail = str(reason) if reason and trial.state != TrialState.COMPLETE else param_changes(trial.params,
                                                                                                   reference)
        text = (f"  {fit(f'#{trial.number}', _TAG - 1):<{_TAG}}{trial.state.name:<{_STATE}}"
                f"{f'{value:.4f}' if value is not None else '-':<{_VALUE}}{f'{epochs_done(trial)} ep':<{_EPOCHS}}")
        return text + fit(detail, WIDTH - len(text))

    def _pruning(self, trials: Sequence[FrozenTrial]) -> list[str]:
        if self.epochs is None:
            return ["pruning saved: unknown (no epoch budget: none stored, no spec file here)"]
        saved = pruning_saved(trials, self.epochs)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        if saved is None:
            return ["pruning saved: nothing to count yet (no finished trial with its epochs_run)"]
        return [fit(f"pruning saved {saved:.0%} of the epochs of {finished} finished trials "
                    f"(budget {self.epochs} each)")]


def watch(frame: Callable[[], Sequence[str]], interval: float, out: TextIO, *, max_frames: int | None = None) -> int:
    """Print ``frame()`` every ``interval`` seconds: in place on a terminal, else as blocks separated by a blank
    line (a log file or a pipe keeps every frame). Runs until Ctrl-C (the caller's to catch) or ``max_frames``
    frames; returns the number printed (``interval`` > 0: search.status checks it)."""
    frames = 0
    while max_frames is None or frames < max_frames:
        text = "\n".join(frame()) + "\n"
        # one write per frame, cleared first: a half-drawn screen never shows
        out.write(CLEAR + text if out.isatty() else ("\n" if frames else "") + text)
        out.flush()
        frames += 1
        if max_frames is None or frames < max_frames:
            time.sleep(interval)
    return frames
