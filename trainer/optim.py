"""Optimizer and per-epoch learning-rate schedule, chosen by ``OptimConfig`` names.

The schedule is stepped once per epoch (after the epoch's optimizer steps), so a run resumed from an
epoch checkpoint continues on exactly the same learning rates.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from trainer.config import ConfigError, OptimConfig

Params = Iterable[torch.Tensor] | Iterable[dict]

OPTIMIZERS: dict[str, Callable[[OptimConfig, Params], torch.optim.Optimizer]] = {
    "adam": lambda cfg, params: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    # AdamW's own default decay is 0.01; ours always comes from the config, 0 included.
    "adamw": lambda cfg, params: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "sgd": lambda cfg, params: torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True,
                                               weight_decay=cfg.weight_decay),
}


def build_optimizer(cfg: OptimConfig, params: Params) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names, at ``cfg.lr`` with ``cfg.weight_decay`` (SGD: Nesterov, 0.9)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optim.optimizer={cfg.optimizer!r} is not registered; "
                          f"expected one of: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.optimizer](cfg, params)


# Each schedule maps (epochs since warm-up ended, epochs after warm-up, eta_min / lr) to a factor of lr.
SCHEDULES: dict[str, Callable[[int, int, float], float]] = {
    "none": lambda k, total, floor: 1.0,
    # CosineAnnealingLR's closed form: lr at k is eta_min + (lr - eta_min) * (1 + cos(pi k / T)) / 2.
    "cosine": lambda k, total, floor: floor + (1.0 - floor) * (1.0 + math.cos(math.pi * k / total)) / 2.0,
}


class EpochSchedule:
    """Learning-rate factor for the epoch about to run: linear warm-up, then ``SCHEDULES[name]``.

    Warm-up epoch e (0-based, e < W) uses (e + 1) / (W + 1), so it rises strictly and the first epoch
    after it runs at the full lr. A plain object (not a closure) so LambdaLR's state_dict stores it.
    """

    def __init__(self, name: str, epochs: int, warmup_epochs: int, lr: float, eta_min: float) -> None:
        self.name = name
        self.warmup_epochs = warmup_epochs
        # Warm-up longer than the run simply never ends; the remaining length is kept >= 1.
        self.total = max(1, epochs - warmup_epochs)
        self.floor = eta_min / lr

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / (self.warmup_epochs + 1)
        k = min(epoch - self.warmup_epochs, self.total)
        return SCHEDULES[self.name](k, self.total, self.floor)


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """Per-epoch LambdaLR: warm-up over ``cfg.warmup_epochs``, then ``cfg.schedule`` to ``cfg.eta_min``.

    Call ``step()`` once at the end of every epoch; it sets the lr for the next one.
    """
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule={cfg.schedule!r} is not registered; "
                          f"expected one of: {', '.join(SCHEDULES)}")
    schedule = EpochSchedule(cfg.schedule, cfg.epochs, cfg.warmup_epochs, cfg.lr, cfg.eta_min)
    return LambdaLR(optimizer, schedule)
