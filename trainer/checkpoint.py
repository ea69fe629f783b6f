"""Checkpoints: the resumable training state (last.pth) and plain weights (best.pth), read safely.

Every file is loaded with ``weights_only=True``: a checkpoint that needs arbitrary pickled objects is
refused, never executed. A file that cannot be loaded raises ``CheckpointError`` with one line that says
why (truncated, not a plain weights file, another config), instead of torch's advice to turn the safety off.
"""
from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.atomic import atomic_torch_save
from trainer.config import TrainConfig


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and the reason."""


@dataclass
class RunState:
    """Where a run stands after its last finished epoch (what last.pth restores)."""

    epoch: int = 0
    best_lwlrap: float = -math.inf
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)


def load_checkpoint(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors for unusable files."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except pickle.UnpicklingError:
        # torch's own message advises weights_only=False, i.e. running whatever the file contains.
        raise CheckpointError(f"{path}: not a plain weights file (it needs arbitrary pickled objects); "
                              f"it will not be loaded") from None
    except Exception as exc:  # a damaged file makes torch's unpickler fail in any number of ways
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt: "
                              f"{str(exc).splitlines()[0][:120] or type(exc).__name__})") from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Model weights from best.pth (a plain state_dict) or from last.pth (its ``model`` entry)."""
    checkpoint = load_checkpoint(path)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"{path}: expected a state_dict of tensors")
    return checkpoint


def save_training_state(path: Path, config: TrainConfig, model: torch.nn.Module, optimizer, scheduler,
                        rng: np.random.Generator, generator: torch.Generator, state: RunState) -> None:
    """Write last.pth atomically: everything needed to continue exactly where this epoch ended."""
    atomic_torch_save({
        "config": config.to_json(),
        "epoch": state.epoch,
        "best_lwlrap": state.best_lwlrap,
        "best_epoch": state.best_epoch,
        "history": json.dumps(state.history),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        # numpy's PCG64 state holds 128-bit integers; JSON keeps the file loadable with weights_only=True.
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "crop_rng": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }, path)


def restore_training_state(path: Path, config: TrainConfig, model: torch.nn.Module, optimizer, scheduler,
                           rng: np.random.Generator, generator: torch.Generator) -> RunState:
    """Load last.pth into the live objects; refuses a file written for another config."""
    checkpoint = load_checkpoint(path)
    try:
        saved = TrainConfig.from_json(checkpoint["config"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: not a training checkpoint of this project (no readable config)") from None
    if saved != config:
        changed = ", ".join(f"{k}={v!r}" for k, v in list(config.diff(saved).items())[:5])
        raise CheckpointError(f"{path}: this checkpoint belongs to another config (differs in {changed}); "
                              f"use an empty workdir for a new run")
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        rng.bit_generator.state = json.loads(checkpoint["numpy_rng"])
        generator.set_state(checkpoint["crop_rng"])
        torch.set_rng_state(checkpoint["torch_rng"])
        if checkpoint["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
        return RunState(epoch=int(checkpoint["epoch"]), best_lwlrap=float(checkpoint["best_lwlrap"]),
                        best_epoch=int(checkpoint["best_epoch"]), history=json.loads(checkpoint["history"]))
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: incomplete training checkpoint ({str(exc).splitlines()[0][:120]})") from None
