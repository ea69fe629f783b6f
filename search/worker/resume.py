"""A retried trial's start: pull its newest predecessor attempt's files from the artifact store (so it resumes on
any machine) and report the epochs it keeps. An unloadable checkpoint is set aside and the trial starts from
epoch 0, saying so."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Sequence

from optuna.trial import FrozenTrial

from search.worker.trial_run import TrialRun
from trainer import CheckpointError, ConfigError, TrainConfig, load_checkpoint

# What an attempt resumes from besides last.pth: the best weights and predictions so far, and the config.json the
# trainer writes only when it starts from epoch 0 (the trial registers it for the dashboard when it ends).
RESUMED_FILES = ("best.pth", "val_predictions.npz", "config.json")


def resume(run: TrialRun, predecessors: Sequence[FrozenTrial], trial_dir: Callable[[int], Path]) -> int:
    """Pull the newest of ``predecessors`` (newest first) that left a checkpoint into ``run.workdir``; returns the
    epoch the attempt resumes after (0: from scratch). ``trial_dir``: a trial's folder on this machine."""
    trial, workdir = run.trial, run.workdir
    for before in predecessors:
        number = before.number
        if run.files.pull(number, "last.pth", workdir) is None:
            continue
        try:
            checkpoint = load_checkpoint(workdir / "last.pth")
            if TrainConfig.from_json(checkpoint["config"]) != run.config:
                raise CheckpointError("it belongs to another config")
            epoch = int(checkpoint["epoch"])
        except (CheckpointError, ConfigError, KeyError, TypeError, ValueError) as exc:
            (workdir / "last.pth").rename(workdir / "last.pth.unloadable")
            note = f"last.pth of trial {number} could not be loaded ({exc}); starting from epoch 0"
            trial.set_user_attr("resume_note", note[:300])
            run.console.message(f"#{trial.number} {note}")
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
