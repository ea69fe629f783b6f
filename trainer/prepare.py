"""From a data folder and a config to device-resident feature banks of the training and validation split."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.batches import FeatureBank
from trainer.config import FeatureConfig, TrainConfig
from trainer.data import ClipTable, check_unreadable, load_splits, split_curated
from trainer.feature_cache import feature_cache_key, load_features
from trainer.features import LogMel


@dataclass
class PreparedData:
    train_bank: FeatureBank          # curated-train clips first, then noisy clips
    train_targets: torch.Tensor      # (N_train, 80) float32
    train_is_noisy: torch.Tensor     # (N_train,) bool
    curated_targets: np.ndarray      # targets of the curated part of train_bank (for the sampler)
    noisy_targets: np.ndarray | None
    val_bank: FeatureBank
    val_targets: np.ndarray          # (N_val, 80)
    val_fnames: list[str]            # file names of the validation clips, in val_bank order
    val_split_id: str                # digest of the validation clips and their labels (see split_identity)
    feature_cache_key: str


def prepare_data(config: TrainConfig, data_dir: str | Path | None, *, device: torch.device,
                 cache_dir: str | Path | None = None, progress: bool = True) -> PreparedData:
    """Read the CSVs, split curated, load cached log-mels (filling the cache if needed), pack banks."""
    if data_dir is None:
        from trainer.synth import ensure_demo_data

        data_dir = ensure_demo_data(cache_dir=cache_dir)
    curated, noisy = load_splits(Path(data_dir), use_noisy=config.data.use_noisy)
    d = config.data
    train_idx, val_idx = split_curated(curated.targets, val_fraction=d.val_fraction, seed=d.split_seed,
                                       n_folds=d.n_folds, val_fold=d.val_fold)
    if d.full_curated:
        train_idx = np.arange(len(curated))

    curated_arrays, curated = _load_table(curated, config.features, cache_dir, progress)
    keep = {i: j for j, i in enumerate(curated.kept)}
    train_pos = [keep[i] for i in train_idx if i in keep]
    val_pos = [keep[i] for i in val_idx if i in keep]
    train_arrays = [curated_arrays[i] for i in train_pos]
    train_targets = [curated.table.targets[train_pos]]
    noisy_targets = None
    if noisy is not None:
        noisy_arrays, noisy_loaded = _load_table(noisy, config.features, cache_dir, progress)
        train_arrays += noisy_arrays
        noisy_targets = noisy_loaded.table.targets[noisy_loaded.kept]
        train_targets.append(noisy_targets)
    targets = np.concatenate(train_targets)
    is_noisy = np.zeros(len(targets), dtype=bool)
    is_noisy[len(train_pos):] = True

    normalize = config.features.normalize
    val_fnames = [curated.table.paths[i].name for i in val_pos]
    val_targets = curated.table.targets[val_pos]
    return PreparedData(
        train_bank=FeatureBank.from_arrays(train_arrays, normalize=normalize, device=device),
        train_targets=torch.from_numpy(targets).to(device),
        train_is_noisy=torch.from_numpy(is_noisy).to(device),
        curated_targets=curated.table.targets[train_pos],
        noisy_targets=noisy_targets,
        val_bank=FeatureBank.from_arrays([curated_arrays[i] for i in val_pos], normalize=normalize, device=device),
        val_targets=val_targets.astype(np.float64),
        val_fnames=val_fnames,
        val_split_id=split_identity(val_fnames, val_targets),
        feature_cache_key=feature_cache_key(config.features),
    )


def split_identity(fnames: list[str], targets: np.ndarray) -> str:
    """Short digest of a validation split: the same clips with the same labels in the same order give the
    same id, whatever the feature or model settings (so predictions of different trials can be combined)."""
    digest = hashlib.blake2b(digest_size=8)
    for fname, row in zip(fnames, targets):
        digest.update(fname.encode("utf-8") + b"\0" + np.flatnonzero(row > 0).astype(np.int16).tobytes() + b"\n")
    return digest.hexdigest()


@dataclass
class _Loaded:
    table: ClipTable
    kept: list[int]  # indices into the original table of the clips that could be read


def _load_table(table: ClipTable, cfg: FeatureConfig, cache_dir, progress: bool) -> tuple[list[np.ndarray], _Loaded]:
    features = load_features(list(table.paths), cfg, cache_dir=cache_dir, progress=progress,
                             desc=f"log-mel {table.name}")
    check_unreadable(table.name, len(table), features.failed)
    kept = [i for i, array in enumerate(features.arrays) if array is not None]
    return [features.arrays[i] for i in kept], _Loaded(table, kept)


def measure_feature_cost(cfg: FeatureConfig, device: torch.device, seconds: float = 10.0) -> float:
    """Seconds of log-mel computation per second of audio on ``device`` (what a kernel pays per clip)."""
    log_mel = LogMel(cfg).to(device)
    wave = torch.randn(int(seconds * cfg.sample_rate), generator=torch.Generator().manual_seed(0)).to(device)
    log_mel(wave)  # warm-up: first call allocates the FFT plan
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    log_mel(wave)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / seconds
