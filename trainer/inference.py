"""Whole-clip scores: every clip cut into windows, the model run on batches of windows, probabilities pooled.

Validation during training and the generated Kaggle kernel both call ``predict_bank``, so what is
measured on held-out curated is exactly what runs on the test set.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from trainer.batches import FeatureBank
from trainer.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda, else mps, else cpu; an explicit GPU that torch cannot see is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: torch sees no CUDA GPU (use auto or cpu)")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and device.index is not None and device.index >= (seen := torch.cuda.device_count()):
        gpus = "1 GPU, cuda:0" if seen == 1 else f"{seen} GPUs, cuda:0 to cuda:{seen - 1}"
        raise ConfigError(f"device {name!r}: torch sees {gpus} (CUDA_VISIBLE_DEVICES restricts and renumbers them)")
    return device


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs with native bf16 (Ampere+); float32 elsewhere, including Kaggle's T4/P100,
    where bf16 is only emulated and slower than float32, and on CPU where autocast is slower here."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_bank(model: torch.nn.Module, bank: FeatureBank, *, n_frames: int, pad_mode: str,
                 batch_size: int = 64) -> np.ndarray:
    """Probabilities (N, n_labels) for every clip of ``bank``: mean of window sigmoids per clip."""
    was_training = model.training
    model.eval()
    clip_ids, starts = bank.windows(n_frames, pad_mode)
    totals: torch.Tensor | None = None
    for begin in range(0, len(clip_ids), batch_size):
        ids = clip_ids[begin:begin + batch_size]
        with autocast_for(bank.device):
            logits = model(bank.crops(ids, starts[begin:begin + batch_size], n_frames, pad_mode))
        probs = torch.sigmoid(logits.float())
        if totals is None:
            totals = torch.zeros(len(bank), probs.shape[1], device=probs.device)
        totals.index_add_(0, ids.to(probs.device), probs)
    counts = torch.bincount(clip_ids, minlength=len(bank)).to(totals.device).clamp(min=1)
    model.train(was_training)
    return (totals / counts[:, None]).cpu().numpy().astype(np.float64)
