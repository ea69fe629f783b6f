"""TensorBoard record of one run: per-epoch curves, a per-class lwlrap bar chart, and HParams at the end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from trainer.config import TrainConfig
from trainer.labels import load_labels

_SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "lwlrap/val": "lwlrap",
            "lwlrap/best": "best_lwlrap", "lr": "lr", "grad_norm": "grad_norm", "time/epoch_s": "epoch_time"}


class RunLog:
    """Writes to ``log_dir``; the HParams session (flattened config + final metrics) is written on close,
    also when the run stops early (pruned, diverged), so the HParams tab lists every trial."""

    def __init__(self, log_dir: Path, config: TrainConfig) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.config = config

    def epoch(self, epoch: int, metrics: dict, per_class: np.ndarray, weights: np.ndarray) -> None:
        for tag, key in _SCALARS.items():
            self.writer.add_scalar(tag, metrics[key], epoch)
        self.writer.add_figure("lwlrap/per_class", _per_class_figure(per_class, weights, epoch), epoch)
        self.writer.flush()

    def close(self, history: list[dict]) -> None:
        params = {k: ("none" if v is None else v) for k, v in self.config.flat().items()}
        final = {
            "hparam/best_lwlrap": max((h["lwlrap"] for h in history), default=0.0),
            "hparam/last_lwlrap": history[-1]["lwlrap"] if history else 0.0,
            "hparam/epochs_run": float(len(history) and history[-1]["epoch"]),
        }
        experiment, session_start, session_end = hparams(params, final)
        for summary in (experiment, session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        step = history[-1]["epoch"] if history else 0
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.close()


def _per_class_figure(per_class: np.ndarray, weights: np.ndarray, epoch: int):
    from matplotlib.figure import Figure

    labels = load_labels()
    present = np.flatnonzero(weights > 0)
    fig = Figure(figsize=(12, 4), dpi=80)
    ax = fig.add_subplot()
    ax.bar(np.arange(len(present)), per_class[present], color="tab:blue")
    ax.set_xticks(np.arange(len(present)), [labels[i] for i in present], rotation=90, fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel("lwlrap")
    ax.set_title(f"per-class lwlrap on validation, epoch {epoch}")
    fig.tight_layout()
    return fig
