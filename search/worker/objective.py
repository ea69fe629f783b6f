"""The Optuna objective: suggest -> TrainConfig -> train_and_evaluate(on_epoch=report/prune) -> best lwlrap.

Everything around a trial (its folder, resuming a retried attempt, heartbeat, interrupts, failure
reasons, retries) is the worker's (``search.worker.lifecycle``): it hands its ``start`` in. This is only the
search idiom.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna

from search.spec import StudySpec
from search.worker.trial_run import TrialRun
from trainer import DEVICE_BANK_SHARE, Result, resolve_device, train_and_evaluate

Trainer = Callable[..., Result]  # train_and_evaluate's signature: (config, data_dir, *, on_epoch, workdir, ...)
# The worker's ``start(trial, config, device=...)``: prepares the attempt (folder, resume, record) around training
Start = Callable[..., AbstractContextManager[TrialRun]]


@dataclass
class Objective:
    """Callable objective for ``study.optimize``; returns the trial's best validation lwlrap."""

    spec: StudySpec
    data_dir: Path
    start: Start
    device: str | None = None  # the worker's (search.run picks a GPU); None: each config's own, resolved
    cache_dir: Path | None = None
    device_bank_share: float = DEVICE_BANK_SHARE  # share of free GPU memory feature banks may take
    train: Trainer = train_and_evaluate  # tests give a scripted one

    def __call__(self, trial: optuna.Trial) -> float:
        config = self.spec.config_for(self.spec.suggest(trial))
        device = self.device or str(resolve_device(config.device))  # what the trial trains on and records
        with self.start(trial, config, device=device) as run:
            def on_epoch(epoch: int, metrics: dict) -> None:
                run.epoch_done(epoch, metrics)
                # The running best: what a pruner compares is what the trial returns, and it never falls.
                trial.report(metrics["best_lwlrap"], epoch)
                refusal = run.kernel_budget_refusal(metrics)
                if refusal:
                    raise optuna.TrialPruned(refusal)
                if epoch < config.optim.epochs and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} (best lwlrap {metrics['best_lwlrap']:.4f})")

            result = self.train(config, self.data_dir, on_epoch=on_epoch, workdir=run.workdir,
                                device=device, threads=run.threads, epoch_threads=run.epoch_threads,
                                progress=False, verbose=False,
                                cache_dir=self.cache_dir, device_bank_share=self.device_bank_share,
                                status=run.status)
            run.finish(result)
        return result.best_lwlrap
