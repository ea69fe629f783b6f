"""The training batches of one epoch: random crops in the order the sampler chose, one batch per step.

A bank on the training device (and every bank when training on the CPU) cuts each batch when the step asks
for it, drawing crop positions from the run's generator exactly as it always has. A bank that stays on the
host while batches go to a GPU (``FeatureBank.feeding``) is read one batch ahead instead: a thread gathers
batch k+1 into pinned memory and copies it on a side CUDA stream while the GPU computes step k, so the host
gather and the transfer hide behind compute. Its crop positions must be drawn ahead too, so they come from
a generator seeded once per epoch from the run's generator: a resumed run still repeats an uninterrupted
one, but its batches differ from those of the same seed with a device-resident bank.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from trainer.batches import FeatureBank
from trainer.config import FeatureConfig


def crop_batches(bank: FeatureBank, order: np.ndarray, batch_size: int, n_batches: int, features: FeatureConfig,
                 generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(clip indices, crops on bank.device)`` for the first ``n_batches`` batches of ``order``."""
    def clips_of(step: int) -> torch.Tensor:
        return torch.from_numpy(order[step * batch_size:(step + 1) * batch_size])

    if not bank.host_mapped:
        for step in range(n_batches):
            clips = clips_of(step)
            yield clips, bank.random_crops(clips, features.crop_frames, features.pad_mode, generator)
        return

    ahead = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    side_stream = torch.cuda.Stream(device=bank.device) if bank.device.type == "cuda" else None

    def gather(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]:
        clips = clips_of(step)
        with torch.cuda.stream(side_stream) if side_stream is not None else contextlib.nullcontext():
            crops = bank.random_crops(clips, features.crop_frames, features.pad_mode, ahead)
            ready = side_stream.record_event() if side_stream is not None else None
        return clips, crops, ready

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-prefetch") as pool:
        pending = pool.submit(gather, 0) if n_batches > 0 else None
        for step in range(n_batches):
            clips, crops, ready = pending.result()
            if step + 1 < n_batches:
                pending = pool.submit(gather, step + 1)
            if ready is not None:
                compute = torch.cuda.current_stream(bank.device)
                compute.wait_event(ready)
                crops.record_stream(compute)  # made on the side stream: keep it until compute is done with it
            yield clips, crops
