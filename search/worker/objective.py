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
from search.study.folds import curated_targets, pool_folds
from search.worker.trial_run import TrialRun
from trainer import DEVICE_BANK_SHARE, VAL_PREDICTIONS, Result, TrainConfig, resolve_device, train_and_evaluate

Trainer = Callable[..., Result]  # train_and_evaluate's signature: (config, data_dir, *, on_epoch, workdir, ...)
# The worker's ``start(trial, config, device=...)``: prepares the attempt (folder, resume, record) around training
Start = Callable[..., AbstractContextManager[TrialRun]]


@dataclass
class Objective:
    """Callable objective for ``study.optimize``; returns the trial's best validation lwlrap, or with ``[study]
    folds`` the out-of-fold lwlrap of its cross-validation."""

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
            if self.spec.folds is not None:
                return self._cross_validate(trial, config, run, device)

            def on_epoch(epoch: int, metrics: dict) -> None:
                run.epoch_done(epoch, metrics)
                # The running best: what a pruner compares is what the trial returns, and it never falls.
                trial.report(metrics["best_lwlrap"], epoch)
                refusal = run.kernel_budget_refusal(metrics)
                if refusal:
                    raise optuna.TrialPruned(refusal)
                if epoch < config.optim.epochs and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} (best lwlrap {metrics['best_lwlrap']:.4f})")

            result = self._train(config, run, device, on_epoch)
            run.finish(result)
        return result.best_lwlrap

    def _cross_validate(self, trial: optuna.Trial, config: TrainConfig, run: TrialRun, device: str) -> float:
        """The K folds one after the other (from where a predecessor stopped). Fold 0 reports its epochs as a one-split
        trial does (the epoch pruner judges them); the end of fold k reports the out-of-fold lwlrap of folds 0..k at
        step (k + 1) x epochs, where the pruner races the trials that got there. Returns the K folds' OOF lwlrap."""
        folds, epochs = self.spec.folds, config.optim.epochs
        targets = curated_targets(self.data_dir)
        result, oof = None, None
        if run.fold:  # a predecessor finished folds: the trial's record and predictions start from them
            oof = pool_folds([run.fold_dir(k) / VAL_PREDICTIONS for k in range(run.fold)], targets)
            run.record_folds(oof)
        for fold in range(run.fold, folds):
            run.begin_fold(fold)

            def on_epoch(epoch: int, metrics: dict) -> None:
                run.epoch_done(epoch, metrics)
                refusal = run.kernel_budget_refusal(metrics)
                if refusal:
                    raise optuna.TrialPruned(refusal)
                if fold == 0:  # within fold 0 the curve is the running best, as on one split
                    trial.report(metrics["best_lwlrap"], epoch)
                    if epoch < epochs and trial.should_prune():
                        raise optuna.TrialPruned(f"pruned at epoch {epoch} of fold 1/{folds} "
                                                 f"(best lwlrap {metrics['best_lwlrap']:.4f})")

            result = self._train(self.spec.fold_config(config, fold), run, device, on_epoch)
            oof = run.fold_finished(targets)
            if fold > 0:  # fold 0's end is already reported: its best lwlrap is its out-of-fold lwlrap
                trial.report(oof.lwlrap, (fold + 1) * epochs)
            if fold + 1 < folds and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {fold + 1}/{folds} (out-of-fold lwlrap {oof.lwlrap:.4f})")
        run.finish(result)
        assert oof is not None
        return oof.lwlrap

    def _train(self, config: TrainConfig, run: TrialRun, device: str, on_epoch: Callable[[int, dict], None]) -> Result:
        return self.train(config, self.data_dir, on_epoch=on_epoch, workdir=run.train_dir,
                          device=device, threads=run.threads, epoch_threads=run.epoch_threads,
                          progress=False, verbose=False,
                          cache_dir=self.cache_dir, device_bank_share=self.device_bank_share,
                          status=run.status)
