"""read_tensorboard reads back what the trainer writes: scalars per epoch and an HParams session."""
from __future__ import annotations

import math

import pytest
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from tests.tensorboard_reader import read_tensorboard, trial_run_dir


def _write_trial(run_dir, hparam_dict, lwlraps):
    """Write events the way the trainer does: per-epoch scalars, then the HParams session and final metrics."""
    writer = SummaryWriter(log_dir=str(run_dir))
    for epoch, value in enumerate(lwlraps, start=1):
        writer.add_scalar("val/lwlrap", value, epoch)
        writer.add_scalar("train/loss", 1.0 / epoch, epoch)
    metric_dict = {"hparam/best_lwlrap": max(lwlraps), "hparam/last_lwlrap": lwlraps[-1]}
    experiment, session_start, session_end = hparams(hparam_dict, metric_dict)
    writer.file_writer.add_summary(experiment)
    writer.file_writer.add_summary(session_start)
    writer.file_writer.add_summary(session_end)
    for tag, value in metric_dict.items():
        writer.add_scalar(tag, value)
    writer.close()


def test_reads_scalars_and_hparams_back(tmp_path):
    run_dir = trial_run_dir(tmp_path / "studies", "demo", "a1b2", 3)
    assert run_dir == tmp_path / "studies" / "demo" / "runs" / "a1b2" / "trial-3" / "tb"
    config = {"optim.lr": 0.003, "model.depth": 18, "augment.mixup": True, "loss.name": "bce"}
    _write_trial(run_dir, config, [0.21, 0.35, 0.30])

    run = read_tensorboard(run_dir)

    assert [step for step, _ in run["scalars"]["val/lwlrap"]] == [1, 2, 3]
    assert [value for _, value in run["scalars"]["val/lwlrap"]] == pytest.approx([0.21, 0.35, 0.30])
    assert run["hparams"]["optim.lr"] == pytest.approx(0.003)
    assert run["hparams"]["model.depth"] == 18
    assert run["hparams"]["augment.mixup"] == 1.0  # torch's hparams() stores a bool as a number
    assert run["hparams"]["loss.name"] == "bce"
    assert run["metrics"] == pytest.approx({"hparam/best_lwlrap": 0.35, "hparam/last_lwlrap": 0.30})
    assert run["status"] == "STATUS_SUCCESS"


def test_run_without_hparams_has_only_scalars(tmp_path):
    writer = SummaryWriter(log_dir=str(tmp_path))
    writer.add_scalar("val/lwlrap", 0.5, 1)
    writer.add_scalar("val/lwlrap", 0.6, 1)  # a resumed epoch written again: the last value wins
    writer.close()

    run = read_tensorboard(tmp_path)

    assert run["scalars"]["val/lwlrap"] == [(1, pytest.approx(0.6))]
    assert run["hparams"] == {} and run["metrics"] == {} and run["status"] is None
    assert not math.isnan(run["scalars"]["val/lwlrap"][0][1])


def test_missing_run_dir_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="trial-9"):
        read_tensorboard(tmp_path / "trial-9")
