"""From a data folder and a config to the feature banks of the training and validation split, placed for training.

Warm (every clip cached, banks packed) this reads the CSVs, stats the audio files, checks two bank headers
and maps them: seconds at full FAT2019 size, however many clips. Cold, it fills the log-mel cache and packs
the banks once, for every pane on this box, reporting progress through ``status``.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.banks import open_bank
from trainer.batches import FeatureBank
from trainer.config import FeatureConfig, TrainConfig
from trainer.data import ClipTable, check_unreadable, load_splits, split_curated
from trainer.feature_cache import CacheEntries, cache_entries, feature_cache_key
from trainer.paths import cache_root
from trainer.progress import Status, byte_size

NPY_HEADER_BYTES = 128  # numpy's .npy header of a 2-D float16 array; the rest of an entry is its frames

DEVICE_BANK_SHARE = 0.5  # default share of the free GPU memory banks may take; larger ones feed from the host


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
    placement: str = ""              # where the banks went, e.g. "train bank 1.2 GB on cuda; val bank ..."


def prepare_data(config: TrainConfig, data_dir: str | Path | None, *, device: torch.device,
                 cache_dir: str | Path | None = None, progress: bool = True,
                 device_bank_share: float = DEVICE_BANK_SHARE,
                 status: Status | None = None) -> PreparedData:
    """Read the CSVs, split curated, make sure every clip is cached, map the packed banks, place them.

    On a GPU a bank moves to the device when it fits ``device_bank_share`` of the free device memory;
    a larger one stays memory-mapped on the host and batches are cut there and sent through pinned
    memory. ``status`` receives progress lines (cache fill, packing; at most one every few seconds)
    and one line saying where the banks went.
    """
    if not 0.0 <= device_bank_share <= 1.0:
        raise ValueError(f"device_bank_share={device_bank_share!r}: expected a fraction between 0 and 1")
    if data_dir is None:
        from trainer.synth import ensure_demo_data

        data_dir = ensure_demo_data(cache_dir=cache_dir)
    curated, noisy = load_splits(Path(data_dir), use_noisy=config.data.use_noisy)
    train_idx, val_idx = split_indices(config, curated)
    cfg = config.features
    curated_entries = _entries(curated, cfg, cache_dir, progress, status)
    train_pos = [i for i in train_idx if curated_entries.digests[i] is not None]
    val_pos = [i for i in val_idx if curated_entries.digests[i] is not None]
    train_clips = [(curated_entries, i) for i in train_pos]
    train_targets = [curated.targets[train_pos]]
    noisy_targets = None
    if noisy is not None:
        noisy_entries = _entries(noisy, cfg, cache_dir, progress, status)
        noisy_pos = [i for i, digest in enumerate(noisy_entries.digests) if digest is not None]
        train_clips += [(noisy_entries, i) for i in noisy_pos]
        noisy_targets = noisy.targets[noisy_pos]
        train_targets.append(noisy_targets)
    targets = np.concatenate(train_targets)
    is_noisy = np.zeros(len(targets), dtype=bool)
    is_noisy[len(train_pos):] = True

    features_dir = cache_root(cache_dir) / "features"
    train_bank = _bank(features_dir, cfg, train_clips, "train", status)
    val_bank = _bank(features_dir, cfg, [(curated_entries, i) for i in val_pos], "val", status)
    train_bank, val_bank, placement = place_banks(train_bank, val_bank, device, device_bank_share)
    if status is not None:
        status(placement)
    val_fnames = [curated.paths[i].name for i in val_pos]
    return PreparedData(
        train_bank=train_bank,
        train_targets=torch.from_numpy(targets).to(device),
        train_is_noisy=torch.from_numpy(is_noisy).to(device),
        curated_targets=curated.targets[train_pos],
        noisy_targets=noisy_targets,
        val_bank=val_bank,
        val_targets=curated.targets[val_pos].astype(np.float64),
        val_fnames=val_fnames,
        val_split_id=split_identity(val_fnames, curated.targets[val_pos]),
        feature_cache_key=feature_cache_key(cfg),
        placement=placement,
    )


def labelled_bank(table: ClipTable, cfg: FeatureConfig, *, cache_dir: str | Path | None = None,
                  progress: bool = False, status: Status | None = None) -> tuple[FeatureBank, np.ndarray]:
    """The feature bank and targets of a labelled split that is neither trained nor validated on (a built-in
    set's held-out test clips, which benchmarks score in-process), cached and packed as the training banks
    are; unreadable clips are left out of both, as they are of training."""
    entries = _entries(table, cfg, cache_dir, progress, status)
    readable = [i for i, digest in enumerate(entries.digests) if digest is not None]
    bank = _bank(cache_root(cache_dir) / "features", cfg, [(entries, i) for i in readable], table.name, status)
    return bank, table.targets[readable].astype(np.float64)


def split_identity(fnames: list[str], targets: np.ndarray) -> str:
    """Short digest of a validation split: the same clips with the same labels in the same order give the
    same id, whatever the feature or model settings (so predictions of different trials can be combined)."""
    digest = hashlib.blake2b(digest_size=8)
    for fname, row in zip(fnames, targets):
        digest.update(fname.encode("utf-8") + b"\0" + np.flatnonzero(row > 0).astype(np.int16).tobytes() + b"\n")
    return digest.hexdigest()


def split_indices(config: TrainConfig, curated: ClipTable) -> tuple[np.ndarray, np.ndarray]:
    """Curated clips (indices) to train on and to validate on, as ``config.data`` asks."""
    d = config.data
    train_idx, val_idx = split_curated(curated.targets, val_fraction=d.val_fraction, seed=d.split_seed,
                                       n_folds=d.n_folds, val_fold=d.val_fold)
    if d.full_curated:
        train_idx = np.arange(len(curated))
    return train_idx, val_idx


def place_banks(train: FeatureBank, val: FeatureBank, device: torch.device,
                device_bank_share: float) -> tuple[FeatureBank, FeatureBank, str]:
    """Move each host bank to ``device`` when it fits the share of free device memory, else feed it from the host.

    On the CPU the memory map is used as it is: the page cache holds one copy for every pane.
    """
    if device.type == "cpu":
        return train, val, (f"train bank {byte_size(train.nbytes)} and val bank {byte_size(val.nbytes)}: "
                            f"memory-mapped from the cache, shared by every process on this box (cpu)")
    budget = device_bank_share * _free_device_bytes(device)
    placed, words = {}, []
    for name, bank in (("val", val), ("train", train)):  # the small one first: it is read every epoch whole
        if bank.nbytes <= budget:
            placed[name] = bank.to(device)
            budget -= bank.nbytes
            words.append(f"{name} bank {byte_size(bank.nbytes)} on {device.type}")
        else:
            placed[name] = bank.feeding(device)
            words.append(f"{name} bank {byte_size(bank.nbytes)} stays memory-mapped on the host: "
                         f"pinned-memory batches")
    return placed["train"], placed["val"], "; ".join(reversed(words))


def _free_device_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        # the previous trial's banks are freed but still cached by torch's allocator: free to us, not to the driver
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    return math.inf  # mps: memory is unified with the host's and there is no pinned path; keep the device copy


def _entries(table: ClipTable, cfg: FeatureConfig, cache_dir, progress: bool, status: Status | None) -> CacheEntries:
    entries = cache_entries(list(table.paths), cfg, cache_dir=cache_dir, progress=progress,
                            desc=f"log-mel {table.name}", status=status)
    check_unreadable(table.name, len(table), entries.failed)
    return entries


def _bank(features_dir: Path, cfg: FeatureConfig, clips: list[tuple[CacheEntries, int]], name: str,
          status: Status | None) -> FeatureBank:
    if not clips:
        raise ValueError(f"the {name} split has no readable clip")

    def estimate_bytes() -> int:  # only asked for when the bank must be packed
        return sum(max(entries.entry_path(i).stat().st_size - NPY_HEADER_BYTES, 0) for entries, i in clips)

    return open_bank(features_dir, feature_cache_key(cfg), [entries.digests[i] for entries, i in clips],
                     n_mels=cfg.n_mels, load_clip=lambda j: clips[j][0].load(clips[j][1]),
                     normalize=cfg.normalize, name=name, estimate_bytes=estimate_bytes, status=status)
