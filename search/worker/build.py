"""A worker's start-up, walked once top to bottom: storage (with the retry of dead workers' trials) -> join the
study -> its handle -> the trial files -> the device -> the console -> the Worker and its Objective.

    location = locate("demo", spec_required=True)
    worker = build_worker(location, resolve_data(location.spec, None), device="cpu")
    exit_code = worker.run(trials=20)

``search.run`` calls it after parsing its arguments; the tests build their workers with it too.
"""
from __future__ import annotations

import os
import socket
import sys
import zlib
from pathlib import Path
from typing import TextIO

import optuna

from search.study.inherit import Source
from search.study.join import join_study
from search.study.locate import StudyLocation
from search.study.record import StudyHandle
from search.study.storage import open_storage
from search.worker.console import Console
from search.worker.failures import DEFAULT_MAX_RETRY, stale_trial_retry
from search.worker.gpu_choice import device_for_worker, use_device
from search.worker.lifecycle import Worker
from search.worker.objective import Objective, Trainer
from trainer import DEVICE_BANK_SHARE, train_and_evaluate


def build_worker(location: StudyLocation, data_dir: Path, *, device: str | None = None, threads: int | None = None,
                 seed: int | None = None, sampler: optuna.samplers.BaseSampler | None = None, force: bool = False,
                 inherit_from: Source | None = None, heartbeat: int = 60, grace: int = 180,
                 max_retry: int = DEFAULT_MAX_RETRY, device_bank_share: float = DEVICE_BANK_SHARE,
                 worker_id: str | None = None, stream: TextIO | None = None,
                 train: Trainer = train_and_evaluate) -> Worker:
    """A worker on ``location``'s study (joined, or created with its baseline and startup trials), ready to
    ``run``. ``device``: ``--device`` (None: the spec's config's); ``seed``: the sampler seed as given (None: the
    spec's, mixed with the worker's id); ``sampler``: one other than the spec's (benchmarks compare samplers);
    ``train``: the trainer (tests give a scripted one)."""
    spec = location.spec
    if spec is None:
        raise ValueError(f"study {location.name!r}: a worker needs its spec file in {location.studies}")
    worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
    url = location.storage_url()
    storage = open_storage(url, heartbeat_interval=heartbeat, grace_period=grace,
                           on_stale_trial=stale_trial_retry(max_retry))
    if sampler is None:
        sampler = spec.make_sampler(seed if seed is not None else worker_seed(spec.sampler.get("seed"), worker_id))
    handle = StudyHandle(join_study(storage, spec, sampler=sampler, force=force, inherit_from=inherit_from),
                         storage, url)
    uid = handle.uid()
    # Chosen once, after joining (the study's running trials say which GPUs its panes use): the pane keeps its
    # GPU for every trial, since its CUDA context and cached banks live on that one device.
    chosen = device_for_worker(device or spec.base_config().device, handle.study, worker_id)
    use_device(chosen.device)
    console = Console(baseline=spec.baseline_params(), worker_id=worker_id, stream=stream or sys.stdout)
    worker = Worker(handle, spec, location.trial_files(uid), location.folder.resolve() / "runs" / uid, console,
                    worker_id, data_dir, max_retry=max_retry, threads=threads, grace=grace, device=chosen)
    worker.objective = Objective(spec, data_dir, worker.start, device=chosen.device,
                                 device_bank_share=device_bank_share, train=train)
    return worker


def worker_seed(spec_seed: int | None, worker_id: str) -> int | None:
    """Panes of one study must not propose the same points: the spec seed is mixed with the worker's id."""
    return None if spec_seed is None else (spec_seed + zlib.crc32(worker_id.encode())) % 2**32
