"""train_and_evaluate: one training run, read top to bottom.

config -> data -> features -> model -> epochs of (train, validate on held-out curated, checkpoint,
log, on_epoch hook) -> Result. The search service hangs its pruner on ``on_epoch``; this module never
imports optuna.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from trainer.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_text
from trainer.augment import mixup, spec_augment
from trainer.checkpoint import RunState, restore_training_state, save_training_state
from trainer.config import TrainConfig
from trainer.inference import autocast_for, measure_feature_cost, predict_bank, resolve_device, timed_work
from trainer.losses import build_loss
from trainer.metrics import lwlrap, per_class_lwlrap
from trainer.models import build_model
from trainer.optim import build_optimizer, build_scheduler
from trainer.prefetch import crop_batches
from trainer.prepare import DEVICE_BANK_SHARE, PreparedData, prepare_data
from trainer.run_log import RunLog
from trainer.samplers import epoch_indices

EpochHook = Callable[[int, dict], None]
VAL_PREDICTIONS = "val_predictions.npz"  # the best epoch's validation probabilities, next to best.pth


class NonFiniteLossError(RuntimeError):
    """The training loss or the validation outputs became NaN or infinite: the run diverged (a search
    prunes such a trial). Non-finite input audio never gets this far: it is refused when read."""


@dataclass(frozen=True)
class Result:
    best_lwlrap: float
    last_lwlrap: float
    best_epoch: int
    epochs_run: int            # total epochs completed, resumed ones included
    history: list[dict]        # one metrics dict per epoch
    wall_time: float           # seconds spent in this call
    epoch_time: float          # mean seconds per training epoch
    best_path: Path
    last_path: Path
    feature_cache_key: str
    inference_cost: float      # seconds of inference per second of audio (features + model)
    feature_cost: float        # the log-mel part of inference_cost (shared by models with the same features)
    model_cost: float          # the network part of inference_cost (windows, forward passes, pooling)
    resumed_from_epoch: int    # epochs restored from last.pth at the start of this call (0 = a fresh run)
    threads: int               # torch CPU threads used; CPU results are reproducible for the same count
    val_predictions_path: Path  # the best epoch's validation probabilities (see save_val_predictions)
    inference_cost_method: str | None = None  # how the costs were timed (trainer.inference.timed_work); None: unknown


def train_and_evaluate(config: TrainConfig, data_dir: str | Path | None = None, *,
                       on_epoch: EpochHook | None = None,
                       workdir: str | Path | None = None,
                       tensorboard_dir: str | Path | None = None,
                       device: str | None = None,
                       threads: int | None = None,
                       epoch_threads: Callable[[], int] | None = None,
                       progress: bool | None = None,
                       verbose: bool = True,
                       cache_dir: str | Path | None = None,
                       device_bank_share: float = DEVICE_BANK_SHARE,
                       status: Callable[[str], None] | None = None) -> Result:
    """Train ``config`` on the training split, validate on held-out curated every epoch, return lwlrap.

    ``workdir`` receives config.json, last.pth (every epoch) and best.pth; an existing last.pth there is
    resumed. ``progress`` None shows a batch bar only on a terminal; ``verbose`` prints one line per epoch.
    ``status`` receives data preparation progress and where the banks went; ``device_bank_share`` is the
    share of free GPU memory feature banks may take (larger ones are fed from the host; see prepare_data).
    ``epoch_threads``, if given, is asked at each epoch's start for that epoch's torch CPU threads (a policy that
    follows the box's load); ``threads`` sets them until then.
    """
    started = time.perf_counter()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    dev = resolve_device(device or config.device)
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fat2019-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    best_path, last_path = workdir / "best.pth", workdir / "last.pth"
    show_bar = progress if progress is not None else sys.stderr.isatty()
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if verbose else (lambda line: None)

    data = prepare_data(config, data_dir, device=dev, cache_dir=cache_dir, progress=progress is not False,
                        device_bank_share=device_bank_share, status=status)
    # Measured once: the log-mel cost per second of audio does not change between epochs.
    feature_cost, cost_method = measure_feature_cost(config.features, dev)

    torch.manual_seed(config.seed)
    model = build_model(config.model).to(dev)
    optimizer = build_optimizer(config.optim, model.parameters())
    scheduler = build_scheduler(config.optim, optimizer)
    loss_fn = build_loss(config.loss)
    rng = np.random.default_rng(config.seed)
    crop_generator = torch.Generator().manual_seed(config.seed + 1)

    state = RunState()
    if last_path.exists():
        state = restore_training_state(last_path, config, model, optimizer, scheduler, rng, crop_generator)
        say(f"resuming {workdir} after epoch {state.epoch}")
    else:
        atomic_write_text(workdir / "config.json", config.to_json())
    resumed_from = state.epoch

    audio_seconds = float(data.val_bank.lengths.sum()) * config.features.hop / config.features.sample_rate
    log = RunLog(Path(tensorboard_dir) if tensorboard_dir is not None else workdir / "tb", config)
    epoch_times: list[float] = []
    try:
        for epoch in range(state.epoch + 1, config.optim.epochs + 1):
            if epoch_threads is not None:
                torch.set_num_threads(max(1, epoch_threads()))
            epoch_started = time.perf_counter()
            train_loss, grad_norm = _train_one_epoch(config, data, model, optimizer, loss_fn, rng, crop_generator,
                                                     dev, bar=show_bar, desc=f"epoch {epoch}/{config.optim.epochs}")
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            epoch_times.append(time.perf_counter() - epoch_started)

            probs, val_seconds, cost_method = timed_work(dev, lambda: predict_bank(
                model, data.val_bank, n_frames=config.features.crop_frames, pad_mode=config.features.pad_mode,
                batch_size=max(config.optim.batch_size, 64)))
            model_cost = val_seconds / max(audio_seconds, 1e-9)
            if not np.isfinite(probs).all():
                raise NonFiniteLossError(f"validation outputs became NaN/inf after epoch {epoch} "
                                         f"(lr {lr:.3g}): the network diverged")
            score = lwlrap(data.val_targets, probs)
            per_class, weights = per_class_lwlrap(data.val_targets, probs)
            val_loss = float(F.binary_cross_entropy(torch.from_numpy(probs).clamp(1e-7, 1 - 1e-7),
                                                    torch.from_numpy(data.val_targets).double()))
            improved = score > state.best_lwlrap
            if improved:
                state.best_lwlrap, state.best_epoch = score, epoch
            metrics = {"epoch": epoch, "lwlrap": score, "best_lwlrap": state.best_lwlrap, "val_loss": val_loss,
                       "train_loss": train_loss, "lr": lr, "grad_norm": grad_norm, "epoch_time": epoch_times[-1],
                       "model_cost": model_cost, "inference_cost": feature_cost + model_cost,
                       "inference_cost_method": cost_method, "threads": torch.get_num_threads()}
            state.history.append(metrics)
            state.epoch = epoch

            if improved:
                atomic_torch_save(model.state_dict(), best_path)
                save_val_predictions(workdir / VAL_PREDICTIONS, probs, data, epoch=epoch, lwlrap=score)
            save_training_state(last_path, config, model, optimizer, scheduler, rng, crop_generator, state)
            log.epoch(epoch, metrics, per_class, weights)
            say(f"epoch {epoch}/{config.optim.epochs}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                f"lwlrap {score:.4f} (best {state.best_lwlrap:.4f} @{state.best_epoch})  lr {lr:.2e}  "
                f"{epoch_times[-1]:.1f}s")
            if on_epoch is not None:
                on_epoch(epoch, dict(metrics))
    finally:
        log.close(state.history)

    # A run resumed from a checkpoint that had already finished its budget trains nothing: its costs
    # come from the history the checkpoint carried.
    model_cost = state.history[-1].get("model_cost", 0.0) if state.history else 0.0
    return Result(
        best_lwlrap=state.best_lwlrap,
        last_lwlrap=state.history[-1]["lwlrap"] if state.history else float("nan"),
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        history=list(state.history),
        wall_time=time.perf_counter() - started,
        epoch_time=float(np.mean(epoch_times)) if epoch_times else 0.0,
        best_path=best_path,
        last_path=last_path,
        feature_cache_key=data.feature_cache_key,
        inference_cost=feature_cost + model_cost,
        feature_cost=feature_cost,
        model_cost=model_cost,
        resumed_from_epoch=resumed_from,
        threads=torch.get_num_threads(),
        val_predictions_path=workdir / VAL_PREDICTIONS,
        inference_cost_method=state.history[-1].get("inference_cost_method") if state.history else cost_method,
    )


def save_val_predictions(path: Path, probs: np.ndarray, data: PreparedData, *, epoch: int, lwlrap: float) -> None:
    """Write the validation probabilities of one epoch atomically: ``probs`` float16 (clips, 80), the clips'
    ``fnames`` and ``split`` (the validation split's identity: predictions of two runs can only be
    combined when it matches), with the ``epoch`` and its ``lwlrap``."""
    buffer = io.BytesIO()
    np.savez(buffer, probs=probs.astype(np.float16), fnames=np.array(data.val_fnames), split=np.array(data.val_split_id),
             epoch=np.array(epoch), lwlrap=np.array(lwlrap))
    atomic_write_bytes(path, buffer.getvalue())


def _train_one_epoch(config: TrainConfig, data: PreparedData, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, loss_fn, rng: np.random.Generator,
                     generator: torch.Generator, dev: torch.device, *, bar: bool, desc: str) -> tuple[float, float]:
    model.train()
    order = epoch_indices(config.data, data.curated_targets, data.noisy_targets, rng)
    batch_size = config.optim.batch_size
    # A last batch of one clip would break BatchNorm in training mode; it is dropped (and reshuffled next epoch).
    n_batches = len(order) // batch_size + (1 if len(order) % batch_size > 1 else 0)
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = config.optim.grad_clip if config.optim.grad_clip is not None else float("inf")
    total_loss, total_norm = 0.0, 0.0
    batches = crop_batches(data.train_bank, order, batch_size, n_batches, config.features, generator)
    # closed when an epoch stops early (divergence, pruning), so its read-ahead ends with it
    with contextlib.closing(batches) as crops:
        for step, (clips, x) in enumerate(tqdm(crops, total=n_batches, desc=desc, disable=not bar, leave=False,
                                                 dynamic_ncols=True)):
            on_device = clips.to(data.train_targets.device)
            y, is_noisy = data.train_targets[on_device], data.train_is_noisy[on_device]
            x = spec_augment(x, config.augment, generator)
            x, y = mixup(x, y, config.augment.mixup_alpha, generator)
            with autocast_for(dev):
                logits = model(x.to(dev, non_blocking=True))
            loss = loss_fn(logits.float(), y.to(dev), is_noisy.to(dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()
            # One host sync per step for both numbers. A NaN step has already touched the weights, but the run
            # stops here and last.pth still holds the previous epoch.
            loss_value, norm_value = torch.stack([loss.detach(), norm.to(loss.device)]).tolist()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(f"training loss became {loss_value} at step {step + 1} of {desc} "
                                         f"(lr {optimizer.param_groups[0]['lr']:.3g})")
            total_loss += loss_value
            total_norm += norm_value
    return total_loss / max(n_batches, 1), total_norm / max(n_batches, 1)
