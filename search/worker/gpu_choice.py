"""Which GPU a worker trains on: ``--device cuda`` spreads a box's panes over the GPUs torch sees.

    choice = device_for_worker("cuda", study, worker_id)   # DeviceChoice("cuda:2", "0 of this study's ...")
    use_device(choice.device)

The rule (``choose_gpu``): the GPU with the fewest RUNNING trials of this study from this host, ties broken
by the most free memory, then the lowest index. A worker chooses once, when it starts, and keeps its GPU:
its CUDA context, cached allocator blocks and device-resident feature banks live on one device, and moving
them between trials would cost what the choice saves. ``cuda:N`` pins (no choice); ``auto`` chooses too when
torch sees a GPU. ``CUDA_VISIBLE_DEVICES`` restricts what torch sees, so the choice is among those GPUs,
numbered as torch numbers them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from search.study.record import on_host
from trainer import resolve_device

CHOOSING = ("cuda", "auto")  # the requests that leave the GPU to the worker


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as torch numbers it, with its memory when the worker looked."""

    index: int
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class DeviceChoice:
    """The device a worker trains on and why, for its start line."""

    device: str  # ``cuda:N``, ``cpu`` or ``mps``, as the trial's ``device`` user attr records it
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.device} ({self.reason})" if self.reason else self.device


GpuLister = Callable[[], list[GpuInfo]]


def cuda_gpus() -> list[GpuInfo]:
    """The GPUs torch sees (after ``CUDA_VISIBLE_DEVICES``) and their free memory now. ``cudaMemGetInfo``
    opens a CUDA context on each GPU it reads, a few hundred MB this worker keeps on GPUs it does not train on:
    the price of seeing their free memory."""
    return [GpuInfo(index, *torch.cuda.mem_get_info(index)) for index in range(torch.cuda.device_count())]


def choose_gpu(gpus: list[GpuInfo], running_devices: Iterable[str]) -> DeviceChoice:
    """The GPU with the fewest of ``running_devices`` on it (this study's running trials on this host), then
    the most free memory, then the lowest index."""
    if not gpus:
        raise ValueError("choose_gpu needs at least one GPU")
    workers = {gpu.index: 0 for gpu in gpus}
    for device in running_devices:
        index = gpu_index(device)
        if index in workers:
            workers[index] += 1
    chosen = min(gpus, key=lambda gpu: (workers[gpu.index], -gpu.free_bytes, gpu.index))
    return DeviceChoice(f"cuda:{chosen.index}",
                        f"{workers[chosen.index]} of this study's workers on it, {chosen.free_bytes / 2**30:.1f} GiB "
                        f"free; {len(gpus)} GPU{'' if len(gpus) == 1 else 's'}")


def gpu_index(device: str) -> int | None:
    """``cuda:2`` -> 2; a bare ``cuda`` is torch's default current device, 0; not a GPU -> None."""
    if device == "cuda":
        return 0
    kind, _, index = device.partition(":")
    return int(index) if kind == "cuda" and index.isdigit() else None


def running_devices_on_host(trials: Iterable[FrozenTrial], worker_id: str) -> list[str]:
    """The ``device`` of each trial whose worker runs on the host of ``worker_id``; trials of other machines
    share no GPU with this one."""
    return [trial.user_attrs["device"] for trial in on_host(list(trials), worker_id)
            if isinstance(trial.user_attrs.get("device"), str)]


def device_for_worker(requested: str, study: optuna.Study, worker_id: str,
                      list_gpus: GpuLister = cuda_gpus) -> DeviceChoice:
    """The device this worker trains every trial on (``requested`` passed ``trainer.resolve_device``): ``cuda`` (and
    ``auto`` when torch sees a GPU) chooses a GPU by ``choose_gpu`` among the study's running trials;
    ``cuda:N`` pins; ``cpu``/``mps`` as asked."""
    if requested in CHOOSING:
        gpus = list_gpus()
        if gpus:
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            return choose_gpu(gpus, running_devices_on_host(running, worker_id))
    pinned = gpu_index(requested) if requested.startswith("cuda:") else None  # cuda:N pins; cuda chooses
    if pinned is not None:
        return DeviceChoice(f"cuda:{pinned}", "pinned by --device")
    return DeviceChoice(str(resolve_device(requested)), "auto: torch sees no CUDA GPU" if requested == "auto" else "")


def use_device(device: str) -> None:
    """Make a chosen GPU this process's current CUDA device, so what uses the current device (a bare
    ``torch.cuda.synchronize()``, a default stream) works on the pane's GPU, not on cuda:0."""
    if gpu_index(device) is not None:
        torch.cuda.set_device(torch.device(device))
