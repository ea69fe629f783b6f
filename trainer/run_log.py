"""TensorBoard record of one run: per-epoch curves, a per-class lwlrap bar chart, and HParams at the end."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.config import TrainConfig
from trainer.labels import load_labels

_SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "lwlrap/val": "lwlrap",
            "lwlrap/best": "best_lwlrap", "lr": "lr", "grad_norm": "grad_norm", "time/epoch_s": "epoch_time"}


class RunLog:
    """Writes to ``log_dir``; the HParams session (flattened config + final metrics) is written on close,
    also when the run stops early (pruned, diverged), so the HParams tab lists every trial."""

    def __init__(self, log_dir: Path, config: TrainConfig) -> None:
        # Imported here: tensorboard is a training-time dependency; the Kaggle kernel imports this package
        # for inference only.
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.config = config
        self.chart: _PerClassChart | None = None  # the validation split, hence its classes, is fixed per run

    def epoch(self, epoch: int, metrics: dict, per_class: np.ndarray, weights: np.ndarray) -> None:
        for tag, key in _SCALARS.items():
            self.writer.add_scalar(tag, metrics[key], epoch)
        if self.chart is None:
            self.chart = _PerClassChart(np.flatnonzero(weights > 0))
        self.writer.add_image("lwlrap/per_class", self.chart.render(per_class, epoch), epoch, dataformats="HWC")
        self.writer.flush()

    def close(self, history: list[dict]) -> None:
        params = {k: ("none" if v is None else v) for k, v in self.config.flat().items()}
        final = {
            "hparam/best_lwlrap": max((h["lwlrap"] for h in history), default=0.0),
            "hparam/last_lwlrap": history[-1]["lwlrap"] if history else 0.0,
            "hparam/epochs_run": float(len(history) and history[-1]["epoch"]),
        }
        from torch.utils.tensorboard.summary import hparams

        experiment, session_start, session_end = hparams(params, final)
        for summary in (experiment, session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        step = history[-1]["epoch"] if history else 0
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.close()


class _PerClassChart:
    """The per-class lwlrap bar chart, drawn once with its 80 rotated labels and then only re-blitted.

    A full matplotlib redraw costs ~0.2 s, as long as a whole demo epoch; restoring the saved background
    and drawing just the bars and the title costs a few milliseconds.
    """

    def __init__(self, present: np.ndarray) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        labels = load_labels()
        self.fig = Figure(figsize=(12, 4.5), dpi=80)
        self.canvas = FigureCanvasAgg(self.fig)
        self.ax = self.fig.add_subplot()
        self.bars = self.ax.bar(np.arange(len(present)), np.zeros(len(present)), color="tab:blue")
        self.ax.set_xticks(np.arange(len(present)), [labels[i] for i in present], rotation=90, fontsize=6)
        self.ax.set_ylim(0, 1)
        self.ax.set_ylabel("lwlrap")
        self.fig.subplots_adjust(left=0.05, right=0.99, top=0.93, bottom=0.43)
        self.title = self.fig.text(0.5, 0.95, "", ha="center", va="center")
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(self.fig.bbox)
        self.present = present

    def render(self, per_class: np.ndarray, epoch: int) -> np.ndarray:
        """An (H, W, 3) uint8 image of this epoch's per-class lwlrap."""
        self.canvas.restore_region(self.background)
        for bar, value in zip(self.bars, per_class[self.present]):
            bar.set_height(float(value))
            self.ax.draw_artist(bar)
        self.title.set_text(f"per-class lwlrap on validation, epoch {epoch}")
        self.fig.draw_artist(self.title)
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()
