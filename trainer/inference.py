"""Whole-clip scores: every clip cut into windows, the model run on batches of windows, probabilities pooled.

Validation during training and the generated Kaggle kernel both call ``predict_bank``, so what is
measured on held-out curated is exactly what runs on the test set.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, TypeVar

import numpy as np
import torch

from trainer.batches import FeatureBank
from trainer.config import ConfigError, FeatureConfig
from trainer.features import LogMel


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


# How a cost was timed: the names Result.inference_cost_method and a trial's record carry.
ONE_THREAD_CPU_TIME = "cpu-time-1-thread"
WALL_TIME = "wall-time"
Work = TypeVar("Work")


def timed_work(device: torch.device, work: Callable[[], Work]) -> tuple[Work, float, str]:
    """Run ``work`` and return its value, its seconds and how they were timed, so that other processes' load
    does not change them.

    On CPU the work runs on one torch thread, timed by that thread's CPU time: the time it computed, not the time
    it waited for a core (wall time grew up to 30x on a loaded 2-core box, this 1.1x at most; docs/threads.md),
    and the same whatever thread count a trial got. On a GPU the host waits for the device: wall time."""
    if device.type != "cpu":
        started = time.perf_counter()
        value = work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return value, time.perf_counter() - started, WALL_TIME
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.thread_time()
        value = work()
        return value, time.thread_time() - started, ONE_THREAD_CPU_TIME
    finally:
        torch.set_num_threads(threads)


def measure_feature_cost(cfg: FeatureConfig, device: torch.device, seconds: float = 10.0,
                         repeats: int = 3) -> tuple[float, str]:
    """Seconds of log-mel computation per second of audio on ``device`` (what a kernel pays per clip), and how
    they were timed (``timed_work``): the least of ``repeats`` passes, since a busy box's other processes can
    only add to it (they evict the caches between time slices)."""
    log_mel = LogMel(cfg).to(device)
    wave = torch.randn(int(seconds * cfg.sample_rate), generator=torch.Generator().manual_seed(0)).to(device)
    log_mel(wave)  # warm-up: first call allocates the FFT plan
    passes = [timed_work(device, lambda: log_mel(wave)) for _ in range(repeats)]
    return min(spent for _, spent, _ in passes) / seconds, passes[0][2]
