"""The Optuna objective: suggest -> TrainConfig -> train_and_evaluate(on_epoch=report/prune) -> best lwlrap.

Per-trial user attrs: ``config`` (the full TrainConfig JSON), ``run_dir``, ``host``, ``worker_id``, ``feature_cache_key``, ``epochs_run``,
``wall_time``, ``best_epoch``, ``inference_cost``, ``resumed_from_epoch`` (retries), ``kernel_time_s`` and
``feasible`` (with a ``[kernel]`` budget), ``reason`` (pruned for NaN, failed for OOM / interrupt / bad
config). A retried trial starts from its predecessor's ``last.pth`` rather than epoch 0.
"""
from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.trial import FrozenTrial

from trainer import NonFiniteLossError, train_and_evaluate
from trainer.config import ConfigError
from trainer.feature_cache import feature_cache_key

from search.spec import StudySpec

KERNEL_CONSTRAINT = "kernel_time"  # the name of the Optuna constraint a [kernel] budget sets
_CHECKPOINTS = ("last.pth", "best.pth", "config.json")

EpochLine = Callable[[int, int, int, dict], None]  # (trial number, epoch, of epochs, metrics)


class TrialFailed(Exception):
    """A trial failed for a known reason (out of memory, impossible config); the worker goes on."""


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether a finished trial met every constraint (the kernel-time budget); trials without any do."""
    if trial.constraints:
        return all(value <= 0 for value in trial.constraints.values())
    return bool(trial.user_attrs.get("feasible", True))


def trial_dir(trials_dir: Path, number: int) -> Path:
    """Where trial ``number`` keeps its checkpoints: ``studies/<study>/trials/<number>/``."""
    return trials_dir / str(number)


@dataclass
class Objective:
    """Callable objective for ``study.optimize``; returns the trial's best validation lwlrap."""

    spec: StudySpec
    data_dir: Path | None  # None = the built-in demo set
    trials_dir: Path
    tensorboard_dir: Path
    device: str | None = None
    threads: int | None = None
    cache_dir: Path | None = None
    worker_id: str = field(default_factory=lambda: socket.gethostname())
    on_epoch_line: EpochLine | None = None
    interrupted: Callable[[], bool] | None = None  # the worker's Ctrl-C flag, checked after every epoch

    def __call__(self, trial: optuna.Trial) -> float:
        params = self.spec.suggest(trial)
        try:
            config = self.spec.config_for(params)
        except ConfigError as exc:
            trial.set_user_attr("reason", f"config: {exc}")
            raise TrialFailed(f"trial {trial.number}: impossible config: {exc}") from None

        workdir = trial_dir(self.trials_dir, trial.number)
        trial.set_user_attr("config", config.to_json())  # the exact run, for search.best on any machine
        trial.set_user_attr("run_dir", str(workdir))
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("worker_id", self.worker_id)
        trial.set_user_attr("feature_cache_key", feature_cache_key(config.features))
        _resume_from_predecessor(trial, self.trials_dir, workdir)

        reporter = _PruningReporter(trial, config.optim.epochs, self.on_epoch_line, self.interrupted)
        started = time.perf_counter()
        try:
            result = train_and_evaluate(
                config, self.data_dir, on_epoch=reporter, workdir=workdir,
                tensorboard_dir=self.tensorboard_dir / f"trial-{trial.number}", device=self.device,
                threads=self.threads, progress=False, verbose=False, cache_dir=self.cache_dir)
        except NonFiniteLossError:
            trial.set_user_attr("reason", "nan")
            raise optuna.TrialPruned("training loss became NaN/inf") from None
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            trial.set_user_attr("reason", f"out of memory: {str(exc).splitlines()[0][:200]}")
            raise TrialFailed(f"trial {trial.number}: out of memory") from None
        except KeyboardInterrupt:
            trial.set_user_attr("reason", "interrupted")
            raise
        finally:
            trial.set_user_attr("wall_time", round(time.perf_counter() - started, 3))
            trial.set_user_attr("epochs_run", reporter.last_epoch)
            if reporter.resumed_from is not None:
                trial.set_user_attr("resumed_from_epoch", reporter.resumed_from)

        # A worker killed between writing last.pth and reporting leaves an epoch unreported; the
        # resumed run's history (from the checkpoint) fills it in.
        if result.epochs_run > reporter.calls:
            reported = _reported_steps(trial)
            for metrics in result.history:
                if metrics["epoch"] not in reported:
                    trial.report(metrics["lwlrap"], step=metrics["epoch"])
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("inference_cost", result.inference_cost)
        if reporter.resumed_from is None and result.epochs_run > reporter.calls:
            trial.set_user_attr("resumed_from_epoch", result.epochs_run - reporter.calls)
        if self.spec.kernel is not None:
            kernel_time = self.spec.kernel.projected_s(result.inference_cost)
            trial.set_user_attr("kernel_time_s", round(kernel_time, 1))
            trial.set_user_attr("feasible", bool(self.spec.kernel.violation(result.inference_cost) <= 0))
            trial.set_constraint(KERNEL_CONSTRAINT, self.spec.kernel.violation(result.inference_cost))
        return result.best_lwlrap


class _PruningReporter:
    """The on_epoch hook: report lwlrap at step = epoch, raise TrialPruned when the pruner says so."""

    def __init__(self, trial: optuna.Trial, epochs: int, line: EpochLine | None,
                 interrupted: Callable[[], bool] | None) -> None:
        self.trial, self.epochs, self.line, self.interrupted = trial, epochs, line, interrupted
        self.calls, self.last_epoch = 0, 0
        self.resumed_from: int | None = None

    def __call__(self, epoch: int, metrics: dict[str, Any]) -> None:
        if self.calls == 0 and epoch > 1:
            self.resumed_from = epoch - 1
        self.calls, self.last_epoch = self.calls + 1, epoch
        if self.line is not None:
            self.line(self.trial.number, epoch, self.epochs, metrics)
        self.trial.report(metrics["lwlrap"], step=epoch)
        if self.interrupted is not None and self.interrupted():
            raise KeyboardInterrupt
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (lwlrap {metrics['lwlrap']:.4f})")


def _reported_steps(trial: optuna.Trial) -> set[int]:
    return set(trial.study.get_trials(deepcopy=False)[trial.number].intermediate_values)


def _resume_from_predecessor(trial: optuna.Trial, trials_dir: Path, workdir: Path) -> None:
    """For a retried trial: copy the newest earlier attempt's checkpoints and re-report its epochs.

    ``retry_history`` (Optuna's system attr) lists the earlier attempts, oldest first; an attempt that
    died before its first epoch has no last.pth, so the search walks back to one that has.
    """
    trials = trial.study.get_trials(deepcopy=False)
    history = trials[trial.number].system_attrs.get("retry_history") or []
    if workdir.exists():
        # Trial numbers are unique in a study, so this folder is left over from a deleted study of the
        # same name; the trainer must not resume it. Kept aside rather than deleted.
        workdir.rename(workdir.with_name(f"{workdir.name}.stale-{int(time.time())}"))
    if not history:
        return
    for number in reversed(history):
        source = trial_dir(trials_dir, number)
        if (source / "last.pth").exists():
            workdir.mkdir(parents=True, exist_ok=True)
            for name in _CHECKPOINTS:
                if (source / name).exists():
                    shutil.copy2(source / name, workdir / name)
            trial.set_user_attr("resumed_from_trial", number)
            break
    reported = _reported_steps(trial)
    for number in reversed(history):
        for step, value in sorted(trials[number].intermediate_values.items()):
            if step not in reported:
                trial.report(value, step)
                reported.add(step)
