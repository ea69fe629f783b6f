"""Output for a tmux pane: a start line with an ETA, one line per finished trial, one self-overwriting epoch
line, and one end line that says what this pane did and where the study stands."""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study.inherit import inherited, inherited_text
from search.study.record import FINISHED, baseline_trial, best_trial, last_reported, trial_seconds
from search.views.format import format_duration, param_changes

NUMBER_WIDTH = 4  # "#12 " and "#123" keep the columns of later lines aligned


def _tag(number: int) -> str:
    return f"#{number}".ljust(NUMBER_WIDTH)


def _states(trials: list[FrozenTrial]) -> str:
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    return ", ".join(f"{n} {s.name.lower()}" for s, n in counts.items() if n) or "no trials"


def eta_line(study: optuna.Study, trials: int | None, workers: int | None) -> str:
    """``38 more to reach 50; ~22s per trial at 3 panes: ETA ~4m40s`` from the study's measured trial times.
    ``--trials`` counts the study's own trials (not those inherited with ``--from``); ``workers`` None: the pane
    count is not known (a worker starting alone cannot tell how many panes will share the study)."""
    finished = [t for t in study.get_trials(deepcopy=False, states=FINISHED)]
    own = [t for t in finished if not inherited(t)]
    if trials is None:
        return f"{len(own)} finished so far"
    remaining = max(0, trials - len(own))
    if remaining == 0:
        return f"the study already has its {trials} finished trials: nothing to run"
    seconds = [s for t in finished if (s := trial_seconds(t)) is not None]
    if not seconds:
        return f"{remaining} more to reach {trials}; ETA after the first finished trial"
    per_trial = statistics.mean(seconds)
    if workers is None:
        return (f"{remaining} more to reach {trials}; ~{format_duration(per_trial)} per trial: ETA "
                f"~{format_duration(remaining * per_trial)} for one pane, less with more")
    return (f"{remaining} more to reach {trials}; ~{format_duration(per_trial)} per trial at {workers} "
            f"pane{'s' if workers != 1 else ''}: ETA ~{format_duration(remaining * per_trial / max(1, workers))}")


@dataclass
class Console:
    """Prints a worker's progress; epoch lines overwrite each other on a terminal."""

    baseline: Mapping[str, Any]
    worker_id: str
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    started: float = field(default_factory=time.monotonic)
    states: dict[str, int] = field(default_factory=dict)
    _open_line: bool = False

    def _print(self, text: str, stream: TextIO | None = None) -> None:
        if self._open_line:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._open_line = False
        out = stream or self.stream
        out.write(text + "\n")
        out.flush()

    def message(self, text: str) -> None:
        self._print(text)

    def error(self, text: str) -> None:
        self._print(f"error: {text}", sys.stderr)

    def epoch(self, number: int, epoch: int, epochs: int, metrics: Mapping[str, Any], *,
              fold: tuple[int, int] | None = None) -> None:
        """``#7   epoch 9/30  lwlrap ...``; ``fold 2/5 epoch 9/30`` in a cross-validated trial (``fold``: 1-based)."""
        where = f"fold {fold[0]}/{fold[1]} " if fold is not None else ""
        text = (f"  {_tag(number)} {where}epoch {epoch}/{epochs}  lwlrap {metrics['lwlrap']:.4f} "
                f"(best {metrics['best_lwlrap']:.4f})  loss {metrics['train_loss']:.4f}  "
                f"{format_duration(metrics['epoch_time'])}/epoch")
        if self.stream.isatty():
            self.stream.write(("\r\033[K" if self._open_line else "") + text)
            self.stream.flush()
            self._open_line = True
        else:
            self._print(text)

    def trial_done(self, study: optuna.Study, trial: FrozenTrial, trials: Sequence[FrozenTrial] | None = None) -> None:
        """``#7   COMPLETE lwlrap 0.6123  best 0.6301 (#3)  10 ep  5m03s  lr=0.0012 ...  [reason]`` (``trials``: the
        study's, as the caller just read them)."""
        state = trial.state.name
        self.states[state] = self.states.get(state, 0) + 1
        value = f"lwlrap {trial.value:.4f}" if trial.value is not None else "lwlrap   -   "
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            value = f"lwlrap {last_reported(trial):.4f}"
        best = best_trial(study, trials)
        best_text = f"best {best.value:.4f} ({_tag(best.number).strip()})" if best is not None else "best -"
        duration = trial_seconds(trial) or 0.0
        reason = trial.user_attrs.get("reason")
        extra = f"  [{reason}]" if reason and trial.state != TrialState.COMPLETE else ""
        infeasible = "  [over the kernel budget]" if trial.constraints and any(
            v > 0 for v in trial.constraints.values()) and not extra else ""
        self._print(f"{_tag(trial.number)} {state:<8} {value}  {best_text}  "
                    f"{trial.user_attrs.get('epochs_run', 0):>2} ep  {format_duration(duration):>6}  "
                    f"{param_changes(trial.params, self.baseline)}{extra}{infeasible}")

    def summary(self, study: optuna.Study, exit_reason: str) -> None:
        """One end line: why this pane stopped, what it ran, where the study stands, best vs baseline."""
        trials = study.get_trials(deepcopy=False)
        mine = sum(self.states.values())
        mine_text = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.states.items()))
        best = best_trial(study)
        baseline = baseline_trial(trials)
        if best is None:
            best_text = "no feasible complete trial yet"
        else:
            best_text = f"best #{best.number} lwlrap {best.value:.4f}"
            if baseline is not None and baseline.number != best.number and baseline.value is not None:
                best_text += f" vs baseline #{baseline.number} {baseline.value:.4f} ({best.value - baseline.value:+.4f})"
            elif baseline is not None and baseline.number == best.number:
                best_text += " (the baseline)"
        pane = f"this pane ran {mine} trial{'s' if mine != 1 else ''}" + (f" ({mine_text})" if mine else "")
        self._print(f"worker {self.worker_id} {exit_reason} after {format_duration(time.monotonic() - self.started)}: "
                    f"{pane}; study {study.study_name}: {_states(trials)}"
                    + (f" ({text})" if (text := inherited_text(trials)) else "") + f"; {best_text}")
