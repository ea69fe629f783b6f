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
from search.study.record import KERNEL_CONSTRAINT
from search.worker.console import Console
from search.worker.threads import threads_now
from trainer import Result, TrainConfig


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
    resumed_from_epoch: int = 0
    first_epoch: int = 1
    best_seen: float = float("-inf")
    started: float = field(default_factory=time.perf_counter)
    costs: list[float] = field(default_factory=list)

    def epoch_done(self, epoch: int, metrics: dict[str, Any]) -> None:
        """After the trainer saved this epoch: hand its checkpoints to the store, then show the epoch."""
        files = self.files
        if not self.costs and (self.workdir / "config.json").exists():  # the attempt's first epoch: its resume
            files.push(self.trial.number, self.workdir / "config.json")  # needs it (written at epoch 0 only)
        files.push(self.trial.number, self.workdir / "last.pth")
        if metrics["best_lwlrap"] > self.best_seen:
            self.best_seen = metrics["best_lwlrap"]
            for name in ("best.pth", "val_predictions.npz"):
                if (self.workdir / name).exists():
                    files.push(self.trial.number, self.workdir / name)
        self.trial.set_user_attr("epochs_run", epoch)  # progress survives a kill -9 of this worker
        self.costs.append(float(metrics["inference_cost"]))
        self.console.epoch(self.trial.number, epoch, self.config.optim.epochs, metrics)

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
        if kernel is None or metrics["epoch"] != self.first_epoch:
            return None
        if kernel.violation(metrics["inference_cost"]) <= 0:
            return None
        self._record_cost(metrics["inference_cost"], metrics.get("inference_cost_method"))
        return (f"over the kernel budget: projected {kernel.projected_s(metrics['inference_cost']):,.0f} s > "
                f"{kernel.budget_s * kernel.safety:,.0f} s")

    def finish(self, result: Result) -> None:
        """The trial's final record: epochs, best epoch, inference cost (the least of the epochs measured:
        what the box's other work adds to a CPU-time cost through shared caches only ever raises it) and, with a kernel
        budget, its feasibility constraint."""
        self.trial.set_user_attr("epochs_run", result.epochs_run)
        self.trial.set_user_attr("best_epoch", result.best_epoch)
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
        if kernel is not None:
            self.trial.set_user_attr("kernel_time_s", round(kernel.projected_s(cost), 1))
            self.trial.set_user_attr("feasible", bool(kernel.violation(cost) <= 0))
            self.trial.set_constraint(KERNEL_CONSTRAINT, kernel.violation(cost))

    def register_files(self) -> None:
        for name in REGISTERED_FILES:
            if (self.workdir / name).exists():
                self.files.register(self.trial.live, self.workdir / name)
