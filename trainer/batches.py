"""Training batches and inference windows cut from cached log-mel arrays, on whatever device they live.

All clips of a split are packed into one time-major (total_frames, n_mels) tensor with per-clip offsets, so a
batch of random fixed-length crops is a single row gather (each row a contiguous mel vector: ~7x faster than
gathering columns of an (n_mels, T) layout): no per-item Python work, no audio decoding per epoch, and on a
GPU the whole curated set stays resident in device memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class FeatureBank:
    """Log-mel arrays of many clips in one tensor, with the per-clip statistics used for normalisation."""

    frames: torch.Tensor   # (total_frames, n_mels), float16
    offsets: torch.Tensor  # (N,) int64: first frame of clip i
    lengths: torch.Tensor  # (N,) int64
    mean: torch.Tensor     # (N,) float32
    std: torch.Tensor      # (N,) float32
    floor: torch.Tensor    # (N,) float32: the clip's minimum, i.e. its silence, used as constant padding
    normalize: str         # "clip" (per-clip mean/std) or "none"

    @classmethod
    def from_arrays(cls, arrays: list[np.ndarray], *, normalize: str, device: torch.device | str = "cpu") -> "FeatureBank":
        if not arrays:
            raise ValueError("FeatureBank needs at least one clip")
        lengths = np.array([a.shape[1] for a in arrays], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        # Filled clip by clip: concatenating then transposing would hold two extra copies of the whole
        # split (gigabytes for the noisy set) at once.
        packed = np.empty((int(lengths.sum()), arrays[0].shape[0]), dtype=np.float16)
        for array, offset, length in zip(arrays, offsets, lengths):
            packed[offset:offset + length] = array.T
        stats = np.array([(a.mean(dtype=np.float64), a.std(dtype=np.float64), a.min()) for a in arrays],
                         dtype=np.float64)
        return cls(
            frames=torch.from_numpy(packed).to(device),
            offsets=torch.from_numpy(offsets).to(device),
            lengths=torch.from_numpy(lengths).to(device),
            mean=torch.from_numpy(stats[:, 0].astype(np.float32)).to(device),
            std=torch.from_numpy(np.maximum(stats[:, 1], 1e-5).astype(np.float32)).to(device),
            floor=torch.from_numpy(stats[:, 2].astype(np.float32)).to(device),
            normalize=normalize,
        )

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def device(self) -> torch.device:
        return self.frames.device

    def crops(self, clips: torch.Tensor, starts: torch.Tensor, n_frames: int, pad_mode: str) -> torch.Tensor:
        """Cut ``n_frames`` from each clip at ``starts`` -> (B, n_mels, n_frames) float32, normalised.

        Past the clip's end, "wrap" continues from its start, "constant" fills with the clip's silence.
        """
        clips = clips.to(self.device)
        starts = starts.to(self.device)
        lengths = self.lengths[clips]
        position = starts[:, None] + torch.arange(n_frames, device=self.device)[None, :]
        inside = position < lengths[:, None]
        if pad_mode == "wrap":
            position = position % lengths[:, None]
        else:
            position = torch.minimum(position, lengths[:, None] - 1)
        rows = (self.offsets[clips][:, None] + position).reshape(-1)
        batch = self.frames.index_select(0, rows).view(len(clips), n_frames, -1).float().transpose(1, 2)
        if pad_mode != "wrap" and not bool(inside.all()):
            batch = torch.where(inside[:, None, :], batch, self.floor[clips][:, None, None])
        if self.normalize == "clip":
            batch = batch.sub_(self.mean[clips][:, None, None]).div_(self.std[clips][:, None, None])
        return batch

    def random_crops(self, clips: torch.Tensor, n_frames: int, pad_mode: str, generator: torch.Generator) -> torch.Tensor:
        """Random crop positions (uniform over the clip; clips shorter than the crop start at 0)."""
        lengths = self.lengths[clips.to(self.device)].cpu()
        slack = (lengths - n_frames).clamp(min=0)
        starts = (torch.rand(len(clips), generator=generator, dtype=torch.float64) * (slack + 1)).long()
        return self.crops(clips, starts, n_frames, pad_mode)

    def windows(self, n_frames: int, pad_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every clip cut into windows covering it whole -> (clip index per window, start per window)."""
        lengths = self.lengths.cpu()
        clip_ids, starts = [], []
        for clip, length in enumerate(lengths.tolist()):
            s = window_starts(length, n_frames)
            clip_ids.append(torch.full((len(s),), clip, dtype=torch.long))
            starts.append(s)
        return torch.cat(clip_ids), torch.cat(starts)


def window_starts(length: int, n_frames: int) -> torch.Tensor:
    """Start frames of half-overlapping windows covering a clip; the last one ends at the clip's end."""
    if length <= n_frames:
        return torch.zeros(1, dtype=torch.long)
    stride = max(1, n_frames // 2)
    starts = list(range(0, length - n_frames + 1, stride))
    if starts[-1] != length - n_frames:
        starts.append(length - n_frames)
    return torch.tensor(starts, dtype=torch.long)
