"""One attempt at a trial (``TrialRun``: per-epoch hand-off to the artifact store, kernel-budget check, final
record) and its thread choice. The worker (``search.worker.lifecycle``) owns the loop around them."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna

from search.spec import Kernel
from search.study.artifacts import REGISTERED_FILES, TrialFiles
from search.study.folds import OutOfFold, fold_file, pool_folds
from search.study.record import KERNEL_CONSTRAINT
from search.worker.console import Console
from search.worker.threads import threads_now
from trainer import VAL_PREDICTIONS, Result, TrainConfig


def choose_threads(explicit: int | None, *, panes_on_host: int) -> int:
    """torch CPU threads for the next trial or epoch: ``--threads``, else this box's cores shared by the panes on
    it and cut to what other processes leave free now (search.worker.threads: a busy box is not oversubscribed)."""
    return explicit if explicit is not None else threads_now(panes_on_host)


# -- one attempt at a trial --------------------------------------------------------------------------
class RecordedTrial:
    """The attempt's trial as the attempt writes it: each user attr goes to the storage and stays in ``attrs``
    (with the ones the trial was queued with), so the trial's note is built from what the attempt recorded."""

    def __init__(self, live: optuna.Trial, queued: Mapping[str, Any] | None = None) -> None:
        self.live = live
        self.number = live.number
        self.attrs: dict[str, Any] = dict(live.user_attrs if queued is None else queued)

    def set_user_attr(self, key: str, value: Any) -> None:
        self.live.set_user_attr(key, value)
        self.attrs[key] = value

    def set_constraint(self, name: str, violation: float) -> None:
        self.live.set_constraint(name, violation)


@dataclass
class TrialRun:
    """One attempt at a trial: its folder, per-epoch hand-off to the artifact store and the final record."""

    trial: RecordedTrial
    config: TrainConfig
    workdir: Path
    threads: int
    files: TrialFiles
    console: Console
    kernel: Kernel | None  # the spec's [kernel] budget
    epoch_threads: Callable[[], int] | None = None  # asked at each epoch's start for its threads (None: ``threads``)
    resumed_from_epoch: int = 0  # epochs a predecessor trained (of all folds, for a cross-validated trial)
    best_seen: float = float("-inf")
    started: float = field(default_factory=time.perf_counter)
    costs: list[float] = field(default_factory=list)
    folds: int | None = None  # [study] folds: the trial cross-validates this many folds, one after the other
    fold: int = 0  # the fold being trained (0 for a one-split trial)

    @property
    def train_dir(self) -> Path:
        """Where the trainer works: the trial's folder, or the fold's ``fold-K/`` in it (its own TensorBoard run)."""
        return self.workdir if self.folds is None else self.fold_dir(self.fold)

    def fold_dir(self, fold: int) -> Path:
        return self.workdir / f"fold-{fold}"

    def stored_name(self, name: str) -> str:
        """A file's name in the artifact store: as it is, or the fold's (``fold2-best.pth``)."""
        return name if self.folds is None else fold_file(self.fold, name)

    def begin_fold(self, fold: int) -> None:
        """Train ``fold`` next: its own folder and its own running best."""
        self.fold, self.best_seen = fold, float("-inf")
        self.train_dir.mkdir(parents=True, exist_ok=True)

    def epoch_done(self, epoch: int, metrics: dict[str, Any]) -> None:
        """After the trainer saved this epoch: hand its checkpoints to the store, then show the epoch."""
        files, here = self.files, self.train_dir
        if self.folds is None and not self.costs and (here / "config.json").exists():  # the attempt's first epoch:
            files.push(self.trial.number, here / "config.json")  # its resume needs it (written at epoch 0 only)
        files.push(self.trial.number, here / "last.pth", self.stored_name("last.pth"))
        if metrics["best_lwlrap"] > self.best_seen:
            self.best_seen = metrics["best_lwlrap"]
            for name in ("best.pth", "val_predictions.npz"):
                if (here / name).exists():
                    files.push(self.trial.number, here / name, self.stored_name(name))
        epochs = self.config.optim.epochs
        # progress survives a kill -9 of this worker; a cross-validated trial counts the epochs of all its folds
        self.trial.set_user_attr("epochs_run", self.fold * epochs + epoch)
        self.costs.append(float(metrics["inference_cost"]))
        self.console.epoch(self.trial.number, epoch, epochs, metrics,
                           fold=None if self.folds is None else (self.fold + 1, self.folds))

    def fold_finished(self, targets: Mapping[str, Any]) -> OutOfFold:
        """After fold ``self.fold``: its best weights and predictions stored under this trial, and the trial's
        val_predictions.npz rewritten as the out-of-fold predictions of the folds done (the trial's value)."""
        assert self.folds is not None  # the fold's best.pth and predictions are stored already (epoch_done, resume)
        oof = pool_folds([self.fold_dir(k) / VAL_PREDICTIONS for k in range(self.fold + 1)], targets)
        oof.save(self.workdir / VAL_PREDICTIONS)
        self.files.push(self.trial.number, self.workdir / VAL_PREDICTIONS)
        self.record_folds(oof)
        return oof

    def record_folds(self, oof: OutOfFold) -> None:
        for key, value in {"folds": self.folds, "folds_done": len(oof.fold_lwlrap), "fold_lwlrap": oof.fold_lwlrap,
                           "oof_lwlrap": oof.lwlrap, "fold_mean": oof.fold_mean,
                           "fold_spread": oof.fold_spread}.items():
            self.trial.set_user_attr(key, value)

    @property
    def epochs_done(self) -> int:
        """Epochs completed so far, resumed ones included (one cost is measured per epoch handed off)."""
        return self.resumed_from_epoch + len(self.costs)

    def status(self, line: str) -> None:
        """Progress of the data preparation (cache fill, bank packing, where the banks went), in the pane."""
        self.console.message(f"  #{self.trial.number} {line}")

    def kernel_budget_refusal(self, metrics: dict[str, Any]) -> str | None:
        """At the attempt's first epoch: why the measured inference cost already breaks the kernel budget (it
        does not depend on training), which the objective prunes the trial with; None while it fits."""
        kernel = self.kernel
        if kernel is None or len(self.costs) != 1:  # epoch_done has handed off this attempt's first epoch alone
            return None
        if kernel.violation(self.models * metrics["inference_cost"]) <= 0:
            return None
        self._record_cost(metrics["inference_cost"], metrics.get("inference_cost_method"))
        models = f"{self.models} fold models: " if self.models > 1 else ""
        return (f"over the kernel budget: projected {models}"
                f"{kernel.projected_s(self.models * metrics['inference_cost']):,.0f} s > "
                f"{kernel.budget_s * kernel.safety:,.0f} s")

    @property
    def models(self) -> int:
        """The models the kernel runs for this trial as it ships: its K fold models when cross-validated."""
        return self.folds or 1

    def finish(self, result: Result | None) -> None:
        """The trial's final record: epochs, best epoch, inference cost (the least of the epochs measured:
        what the box's other work adds to a CPU-time cost through shared caches only ever raises it) and, with a kernel
        budget, its feasibility constraint. ``result`` None: a cross-validated attempt that found every fold done."""
        if result is None:
            self.trial.set_user_attr("epochs_run", self.resumed_from_epoch)
            return
        if self.folds is None:
            self.trial.set_user_attr("epochs_run", result.epochs_run)
            self.trial.set_user_attr("best_epoch", result.best_epoch)
        else:
            self.trial.set_user_attr("epochs_run", self.folds * self.config.optim.epochs)
        self.trial.set_user_attr("feature_cost", result.feature_cost)
        self.trial.set_user_attr("model_cost", result.model_cost)
        self._record_cost(min(self.costs) if self.costs else result.inference_cost,
                          result.inference_cost_method)

    def _record_cost(self, cost: float, method: str | None) -> None:
        """The cost and how it was timed (``inference_cost_method``: cpu-time-1-thread on CPU, which other
        processes' load barely changes; wall-time on a GPU; absent from trials recorded before it was said)."""
        self.trial.set_user_attr("inference_cost", cost)
        if method is not None:
            self.trial.set_user_attr("inference_cost_method", method)
        kernel = self.kernel
        if kernel is not None:  # kernel_time_s is one model's; feasibility counts the models the trial ships
            self.trial.set_user_attr("kernel_time_s", round(kernel.projected_s(cost), 1))
            if self.models > 1:
                self.trial.set_user_attr("kernel_models", self.models)
            self.trial.set_user_attr("feasible", bool(kernel.violation(self.models * cost) <= 0))
            self.trial.set_constraint(KERNEL_CONSTRAINT, kernel.violation(self.models * cost))

    def register_files(self) -> None:
        for name in REGISTERED_FILES:
            if (self.workdir / name).exists():
                self.files.register(self.trial.live, self.workdir / name)
