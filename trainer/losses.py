"""Multi-label training losses, chosen by ``LossConfig.name``.

Every loss has one signature, ``loss(logits, targets, is_noisy) -> scalar``: logits ``(B, C)`` raw,
targets ``(B, C)`` in [0, 1] (soft after mixup), ``is_noisy`` ``(B,)`` bool marking clips from the
noisy subset (``None`` = all curated). Losses that ignore ``is_noisy`` still accept it, so the training
loop never branches on the loss name.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from trainer.config import ConfigError, LossConfig

Loss = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]

MINMAX_EPS = 1e-6


def _check(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be "
                         f"(batch, n_labels)")


def bce(logits: torch.Tensor, targets: torch.Tensor, is_noisy: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy with logits over all (clip, label) pairs: the m12sl baseline."""
    _check(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def minmax_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE on each clip's sigmoid scores min-max rescaled to [0, 1] over the labels.

    Pushes the clip's best label towards 1 and its worst towards 0 whatever their absolute level.
    Computed in torch on the live graph: the hand-tuning report's numpy version had no gradient.
    """
    _check(logits, targets)
    p = torch.sigmoid(logits)
    lo = p.min(dim=1, keepdim=True).values
    hi = p.max(dim=1, keepdim=True).values
    scaled = ((p - lo) / (hi - lo + MINMAX_EPS)).clamp(MINMAX_EPS, 1 - MINMAX_EPS)
    targets = targets.to(scaled.dtype)
    # Written out rather than F.binary_cross_entropy, which raises on a NaN input: a diverged step must
    # give a NaN loss that the loop reports as divergence, not a crash of the search worker.
    return -(targets * torch.log(scaled) + (1 - targets) * torch.log1p(-scaled)).mean()


def _build_bce(cfg: LossConfig) -> Loss:
    return bce


def _build_bce_minmax(cfg: LossConfig) -> Loss:
    weight = cfg.minmax_weight

    def loss(logits: torch.Tensor, targets: torch.Tensor,
             is_noisy: torch.Tensor | None = None) -> torch.Tensor:
        return bce(logits, targets) + weight * minmax_bce(logits, targets)

    return loss


def _build_lsoft(cfg: LossConfig) -> Loss:
    beta = cfg.lsoft_beta

    def loss(logits: torch.Tensor, targets: torch.Tensor,
             is_noisy: torch.Tensor | None = None) -> torch.Tensor:
        """L_soft (Fonseca et al. 2019, soft bootstrapping): BCE against beta*y + (1-beta)*p on noisy clips.

        p is the model's own sigmoid output, detached so it acts as a target, not a path that could
        pull predictions towards themselves; curated clips keep beta = 1, i.e. plain BCE.
        """
        _check(logits, targets)
        targets = targets.to(logits.dtype)
        if is_noisy is None:
            return bce(logits, targets)
        if is_noisy.shape != logits.shape[:1]:
            raise ValueError(f"is_noisy {tuple(is_noisy.shape)} must be (batch,) = ({logits.shape[0]},)")
        row_beta = torch.where(is_noisy.to(logits.device), beta, 1.0).to(logits.dtype).unsqueeze(1)
        soft = row_beta * targets + (1 - row_beta) * torch.sigmoid(logits).detach()
        return F.binary_cross_entropy_with_logits(logits, soft)

    return loss


LOSSES: dict[str, Callable[[LossConfig], Loss]] = {
    "bce": _build_bce,
    "bce_minmax": _build_bce_minmax,
    "lsoft": _build_lsoft,
}


def build_loss(cfg: LossConfig) -> Loss:
    """The loss function ``cfg.name`` names, with its weights bound from cfg."""
    if cfg.name not in LOSSES:
        raise ConfigError(f"loss.name={cfg.name!r} is not registered; expected one of: {', '.join(LOSSES)}")
    return LOSSES[cfg.name](cfg)
