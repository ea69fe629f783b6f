"""Output for a tmux pane: one line per finished trial, one self-overwriting epoch line, a summary at exit."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def format_duration(seconds: float) -> str:
    """``4.2s``, ``42s``, ``3m05s``, ``2h07m``: short enough for a narrow pane."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def param_changes(params: Mapping[str, Any], baseline: Mapping[str, Any]) -> str:
    """``lr=0.0012 head=mlp loss=lsoft``: params that differ from the baseline, by their last key part
    (``loss.name`` shows as ``loss``)."""
    changed = [f"{_short(key)}={format_value(value)}" for key, value in params.items() if baseline.get(key) != value]
    return " ".join(changed) if changed else "(baseline)"


def _short(key: str) -> str:
    section, _, leaf = key.rpartition(".")
    return section.rsplit(".", 1)[-1] if leaf == "name" and section else leaf


@dataclass
class Console:
    """Prints a worker's progress; epoch lines overwrite each other on a terminal."""

    baseline: Mapping[str, Any]
    worker_id: str
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    started: float = field(default_factory=time.monotonic)
    states: dict[str, int] = field(default_factory=dict)
    _open_line: bool = False

    def _print(self, text: str) -> None:
        if self._open_line:
            self.stream.write("\r\033[K")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        self._print(text)

    def epoch(self, number: int, epoch: int, epochs: int, metrics: Mapping[str, Any]) -> None:
        text = (f"  #{number} epoch {epoch}/{epochs}  lwlrap {metrics['lwlrap']:.4f} "
                f"(best {metrics['best_lwlrap']:.4f})  loss {metrics['train_loss']:.4f}  "
                f"{format_duration(metrics['epoch_time'])}/epoch")
        if self.stream.isatty():
            self.stream.write(("\r\033[K" if self._open_line else "") + text)
            self.stream.flush()
            self._open_line = True
        else:
            self._print(text)

    def trial_done(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback: ``#7 COMPLETE lwlrap 0.6123  best 0.6301 (#3)  10 ep  5m03s  lr=0.0012 ...``."""
        state = trial.state.name
        self.states[state] = self.states.get(state, 0) + 1
        value = f"lwlrap {trial.value:.4f}" if trial.value is not None else "lwlrap   -   "
        best = _best(study)
        best_text = f"best {best.value:.4f} (#{best.number})" if best is not None else "best -"
        duration = trial.duration.total_seconds() if trial.duration else trial.user_attrs.get("wall_time", 0.0)
        reason = trial.user_attrs.get("reason")
        extra = f"  [{reason}]" if reason else ""
        self._print(f"#{trial.number} {state:<8} {value}  {best_text}  {trial.user_attrs.get('epochs_run', 0)} ep  "
                    f"{format_duration(duration)}  {param_changes(trial.params, self.baseline)}{extra}")

    def summary(self, study: optuna.Study, exit_reason: str) -> None:
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        mine = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.states.items())) or "no trials"
        best = _best(study)
        best_text = (f"best #{best.number} lwlrap {best.value:.4f}  {param_changes(best.params, self.baseline)}"
                     if best is not None else "no completed trial yet")
        self._print(f"worker {self.worker_id} {exit_reason} after {format_duration(time.monotonic() - self.started)}: "
                    f"ran {mine}; study {study.study_name} has {finished} finished of {len(trials)} trials; {best_text}")


def _best(study: optuna.Study) -> FrozenTrial | None:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return max(complete, key=lambda t: t.value) if complete else None
