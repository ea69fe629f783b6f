"""Batch augmentations on log-mel tensors: mixup and SpecAugment-style time/frequency masks.

Randomness comes only from the ``torch.Generator`` passed in (a CPU generator, whatever the tensors'
device), so a seeded run draws the same augmentations on CPU and GPU and after a resume.
"""
from __future__ import annotations

import numpy as np
import torch

from trainer.config import AugmentConfig


def sample_mixup(batch_size: int, alpha: float, generator: torch.Generator) -> tuple[float, torch.Tensor]:
    """Draw mixup's lambda ~ Beta(alpha, alpha), folded to max(lam, 1 - lam), and a batch permutation.

    The fold keeps each row dominated by its own clip, so per-row facts (``is_noisy`` for L_soft) still
    describe the row; the set of mixes is otherwise unchanged because the permutation is random.
    """
    if alpha <= 0:
        raise ValueError(f"augment.mixup_alpha={alpha!r}: sampling needs alpha > 0 (0 means mixup is off)")
    # torch has no Beta sampler that takes a Generator: seed numpy's from it instead.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(batch_size, generator=generator)
    return max(lam, 1.0 - lam), perm


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each clip and its targets with another clip of the batch: lam*a + (1-lam)*b (Zhang et al. 2018).

    One lambda per batch; ``alpha == 0`` returns the inputs unchanged.
    """
    if alpha < 0:
        raise ValueError(f"augment.mixup_alpha={alpha!r}: expected a value >= 0")
    if alpha == 0:
        return x, y
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"mixup: x has {x.shape[0]} rows but y has {y.shape[0]}")
    lam, perm = sample_mixup(x.shape[0], alpha, generator)
    # x and y may live on different devices (features on the GPU, targets on the CPU).
    return (lam * x + (1 - lam) * x[perm.to(x.device)],
            lam * y + (1 - lam) * y[perm.to(y.device)])


def _band_mask(batch: int, n_masks: int, max_width: int, length: int, generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """(batch, length) bool: per row, ``n_masks`` bands of width ~ U{0..max_width} at uniform positions."""
    max_width = min(max_width, length)
    widths = torch.randint(0, max_width + 1, (batch, n_masks, 1), generator=generator)
    # start ~ U{0..length-width}, so a band never runs past the edge and every width is reachable.
    starts = (torch.rand(batch, n_masks, 1, generator=generator) * (length - widths + 1)).long()
    widths, starts = widths.to(device), starts.to(device)
    pos = torch.arange(length, device=device).view(1, 1, length)
    return ((pos >= starts) & (pos < starts + widths)).any(dim=1)


def spec_augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Mask ``cfg.time_masks`` time bands and ``cfg.freq_masks`` mel bands per clip (Park et al. 2019).

    x is (batch, n_mels, frames). Masked cells take the clip's own mean, which is ~0 for per-clip
    normalised features and a neutral level for raw dB ones (0 dB there would be a loud band).
    Returns a new tensor; x is returned as is when no masks are configured.
    """
    if x.dim() != 3:
        raise ValueError(f"spec_augment expects (batch, n_mels, frames), got {tuple(x.shape)}")
    do_time = cfg.time_masks > 0 and cfg.time_mask_frames > 0
    do_freq = cfg.freq_masks > 0 and cfg.freq_mask_bins > 0
    if not (do_time or do_freq):
        return x
    batch, n_mels, frames = x.shape
    # Positions are drawn on the CPU generator; the masks are built where x lives.
    mask = torch.zeros(batch, n_mels, frames, dtype=torch.bool, device=x.device)
    if do_time:
        mask |= _band_mask(batch, cfg.time_masks, cfg.time_mask_frames, frames, generator, x.device).unsqueeze(1)
    if do_freq:
        mask |= _band_mask(batch, cfg.freq_masks, cfg.freq_mask_bins, n_mels, generator, x.device).unsqueeze(2)
    fill = x.mean(dim=(1, 2), keepdim=True)
    return torch.where(mask, fill, x)
