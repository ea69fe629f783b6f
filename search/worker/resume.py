"""A retried trial's start: pull its newest predecessor attempt's files from the artifact store (so it resumes on
any machine) and report the epochs it keeps. An unloadable checkpoint is set aside and the trial starts from
epoch 0, saying so."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Sequence

from optuna.trial import FrozenTrial

from search.study.folds import fold_file
from search.worker.trial_run import TrialRun
from trainer import CheckpointError, ConfigError, TrainConfig, load_checkpoint

# What an attempt resumes from besides last.pth: the best weights and predictions so far, and the config.json the
# trainer writes only when it starts from epoch 0 (the trial registers it for the dashboard when it ends).
RESUMED_FILES = ("best.pth", "val_predictions.npz", "config.json")
FINISHED_FOLD_FILES = ("best.pth", "val_predictions.npz")  # what a cross-validated trial keeps of a finished fold


def resume(run: TrialRun, predecessors: Sequence[FrozenTrial], trial_dir: Callable[[int], Path]) -> int:
    """Pull the newest of ``predecessors`` (newest first) that left a checkpoint into ``run.workdir``; returns the
    epoch the attempt resumes after (0: from scratch). ``trial_dir``: a trial's folder on this machine."""
    trial, workdir = run.trial, run.workdir
    for before in predecessors:
        number = before.number
        if run.files.pull(number, "last.pth", workdir) is None:
            continue
        checkpoint, epoch = _checkpoint(run, workdir / "last.pth", run.config,
                                        f"last.pth of trial {number} could not be loaded ({{}}); starting from epoch 0")
        if checkpoint is None:
            return 0
        for name in RESUMED_FILES:
            run.files.pull(number, name, workdir)
        local_tb = trial_dir(number) / "tb"
        if local_tb.is_dir():  # the curves of the earlier attempt, when it ran on this machine
            shutil.copytree(local_tb, workdir / "tb", dirs_exist_ok=True)
        # The curve of the epochs this attempt keeps, and no later one: a resume from an older checkpoint
        # must not show (or let the pruner see) epochs it will train again.
        kept = {step: value for step, value in before.intermediate_values.items() if step <= epoch}
        if epoch >= 1:  # killed between handing off this epoch's checkpoint and reporting it: the checkpoint
            kept.setdefault(epoch, float(checkpoint["best_lwlrap"]))  # holds the running best it would report
        for step in sorted(kept):
            trial.live.report(kept[step], step)
        trial.set_user_attr("resumed_from_trial", number)
        run.console.message(f"#{trial.number} resumes trial {number} after epoch {epoch}")
        return epoch
    return 0


def resume_folds(run: TrialRun, predecessors: Sequence[FrozenTrial], fold_config: Callable[[int], TrainConfig]
                 ) -> tuple[int, int]:
    """A cross-validated trial's start: from the newest predecessor that got anywhere, pull the best weights and
    predictions of every fold it finished and the checkpoint of the fold it was in, into ``run.fold_dir(k)``;
    store the finished folds' files under this trial too. Returns (the fold to train, its epochs done);
    ``fold_config(k)``: the config fold k trains, which a checkpoint must match."""
    trial, epochs = run.trial, run.config.optim.epochs
    for before in predecessors:
        number, done = before.number, int(before.user_attrs.get("folds_done") or 0)
        finished = [(k, name) for k in range(done) for name in FINISHED_FOLD_FILES]
        for k, name in finished:
            run.fold_dir(k).mkdir(parents=True, exist_ok=True)
        if any(run.files.pull(number, fold_file(k, name), run.fold_dir(k), as_name=name) is None
               for k, name in finished):
            continue  # its finished folds' files are gone (retention): an older attempt may still have them
        epoch, checkpoint = 0, None
        current = run.fold_dir(done)
        if done < (run.folds or 0):
            current.mkdir(parents=True, exist_ok=True)
        if done < (run.folds or 0) and run.files.pull(number, fold_file(done, "last.pth"), current,
                                                      as_name="last.pth") is not None:
            checkpoint, epoch = _checkpoint(run, current / "last.pth", fold_config(done),
                                            f"fold {done + 1}'s last.pth of trial {number} could not be loaded ({{}}); "
                                            f"that fold starts over")
            if checkpoint is not None:  # the running fold's best so far: this trial's own until an epoch beats it
                for name in FINISHED_FOLD_FILES:
                    if run.files.pull(number, fold_file(done, name), current, as_name=name) is not None:
                        run.files.push(trial.number, current / name, fold_file(done, name))
        if done == 0 and epoch == 0:
            continue
        for k, name in finished:
            run.files.push(trial.number, run.fold_dir(k) / name, fold_file(k, name))
        reached = done * epochs + epoch
        kept = {step: value for step, value in before.intermediate_values.items() if step <= reached}
        if checkpoint is not None and done == 0 and epoch >= 1:  # see ``resume``: the checkpoint's running best
            kept.setdefault(epoch, float(checkpoint["best_lwlrap"]))
        for step in sorted(kept):
            trial.live.report(kept[step], step)
        trial.set_user_attr("resumed_from_trial", number)
        run.console.message(f"#{trial.number} resumes trial {number} at fold {min(done + 1, run.folds or 1)}/"
                            f"{run.folds} after epoch {epoch}")
        return done, epoch
    return 0, 0


def _checkpoint(run: TrialRun, path: Path, config: TrainConfig, unloadable: str) -> tuple[dict | None, int]:
    """The pulled checkpoint at ``path`` and the epoch it ended, when it loads and belongs to ``config``; else it is
    set aside (``last.pth.unloadable``), the trial says why (``unloadable`` with the error in its ``{}``), and
    (None, 0)."""
    try:
        checkpoint = load_checkpoint(path)
        if TrainConfig.from_json(checkpoint["config"]) != config:
            raise CheckpointError("it belongs to another config")
        return checkpoint, int(checkpoint["epoch"])
    except (CheckpointError, ConfigError, KeyError, TypeError, ValueError) as exc:
        path.rename(path.with_name("last.pth.unloadable"))
        note = unloadable.format(exc)
        run.trial.set_user_attr("resume_note", note[:300])
        run.console.message(f"#{run.trial.number} {note}")
        return None, 0
