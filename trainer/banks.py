"""Packed feature banks in the cache: one file per (feature parameters, ordered clip contents), built once and
memory-mapped by every worker that trains on those clips.

    features/<key>/banks/<bank id>.bank   the packed bank (format: trainer/bank_file.py)
    features/<key>/banks/<bank id>.lock   its builder's lock (trainer/file_lock.py)

The bank id hashes the feature cache key and the ordered content digests of the clips, so another
validation split, noisy clips on or off, or one changed file make another bank. Whoever needs a bank that
is not there takes its lock and packs it; the others wait, then map what it wrote. The OS page cache holds
one copy of a mapped bank for all processes, however many panes train on it.

Old banks: after each build, the least recently used banks beyond $FAT2019_SEARCH_BANK_LIMIT_GB (default
100) are deleted, oldest first. A process that has a deleted bank mapped keeps reading it (the file system
frees it when the last mapping goes); the next trial that needs it packs it again.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from trainer.atomic import remove_stale_temp_files
from trainer.bank_file import BankFile, BankFileError, open_bank_file, write_bank_file
from trainer.batches import FeatureBank
from trainer.config import ConfigError
from trainer.file_lock import exclusive_lock
from trainer.progress import Progress, Status, byte_size, duration

BANK_LIMIT_ENV = "FAT2019_SEARCH_BANK_LIMIT_GB"
DEFAULT_BANK_LIMIT_GB = 100.0


def bank_id(feature_key: str, digests: Sequence[str]) -> str:
    """32 hex digits naming the bank of these clips, in this order, under these feature parameters."""
    h = hashlib.blake2b(feature_key.encode("ascii"), digest_size=16)
    for digest in digests:
        h.update(b"\n" + digest.encode("ascii"))
    return h.hexdigest()


def bank_path(features_dir: Path, feature_key: str, digests: Sequence[str]) -> Path:
    return features_dir / feature_key / "banks" / f"{bank_id(feature_key, digests)}.bank"


def open_bank(features_dir: Path, feature_key: str, digests: Sequence[str], *, n_mels: int,
              load_clip: Callable[[int], np.ndarray], normalize: str, name: str = "feature",
              estimate_bytes: Callable[[], int] | None = None, status: Status | None = None) -> FeatureBank:
    """The bank of these clips as a host FeatureBank memory-mapped from the cache; packed first if missing.

    ``load_clip(i)`` gives clip i's (n_mels, frames) float16 array; it is only called while packing.
    ``estimate_bytes()`` (the frames' size, roughly) lets the packing progress count gigabytes.
    """
    path = bank_path(features_dir, feature_key, digests)
    identity = path.stem
    opened = _try_open(path, identity, n_mels, len(digests))
    if isinstance(opened, str):
        with exclusive_lock(path.with_suffix(".lock"), what=f"packing the {name} bank", status=status):
            opened = _try_open(path, identity, n_mels, len(digests))  # packed by another process meanwhile?
            if isinstance(opened, str):
                if opened != "missing" and status is not None:
                    status(f"{name} bank {path.name}: {opened}; packing it again")
                remove_stale_temp_files(path.parent)  # of builders killed mid-pack
                expected = estimate_bytes() if estimate_bytes is not None else None
                _pack(path, identity, n_mels, len(digests), load_clip, name, expected, status)
                opened = open_bank_file(path, bank_id=identity, n_mels=n_mels, n_clips=len(digests))
                prune_banks(features_dir, keep=path)
    try:
        os.utime(path)  # last use, for the size-bounded clean-up
    except OSError:
        pass  # a read-only shared cache: clean-up order is then by build time
    return FeatureBank.from_packed(opened.frames, opened.lengths, opened.stats, normalize=normalize)


def _try_open(path: Path, identity: str, n_mels: int, n_clips: int) -> BankFile | str:
    """The opened bank, or why it cannot be used ("missing", "truncated: ...")."""
    try:
        return open_bank_file(path, bank_id=identity, n_mels=n_mels, n_clips=n_clips)
    except BankFileError as exc:
        return str(exc)


def _pack(path: Path, identity: str, n_mels: int, n_clips: int, load_clip: Callable[[int], np.ndarray],
          name: str, expected_bytes: int | None, status: Status | None) -> None:
    what = f"packing {name} bank"
    progress = (Progress(status, what, expected_bytes, unit="bytes") if expected_bytes
                else Progress(status, what, n_clips))
    if status is not None:
        size = f" ({byte_size(expected_bytes)})" if expected_bytes else ""
        status(f"{what}: {n_clips:,} clips{size} into {path}")

    def advance(n_bytes: int) -> None:
        progress.advance(n_bytes if expected_bytes else 1)

    write_bank_file(path, bank_id=identity, n_mels=n_mels, arrays=(load_clip(i) for i in range(n_clips)),
                    n_clips=n_clips, on_bytes=advance)
    if status is not None:
        status(f"{name} bank packed: {byte_size(path.stat().st_size)}, {n_clips:,} clips in "
               f"{duration(progress.elapsed())}")


def bank_limit_bytes() -> float:
    """The size the cache's banks may take together, from $FAT2019_SEARCH_BANK_LIMIT_GB (decimal GB)."""
    text = os.environ.get(BANK_LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_BANK_LIMIT_GB * 1e9
    try:
        limit = float(text)
    except ValueError:
        limit = -1.0
    if not limit > 0:
        raise ConfigError(f"${BANK_LIMIT_ENV}={text!r}: expected a positive number of gigabytes")
    return limit * 1e9


def prune_banks(features_dir: Path, *, keep: Path) -> list[Path]:
    """Delete the least recently used banks until all of them fit the limit; ``keep`` is never deleted."""
    limit = bank_limit_bytes()
    banks = []
    for bank in features_dir.glob("*/banks/*.bank"):
        try:
            st = bank.stat()
        except FileNotFoundError:  # deleted by another process's clean-up just now
            continue
        banks.append((st.st_mtime, st.st_size, bank))
    total = sum(size for _, size, _ in banks)
    removed = []
    for _, size, bank in sorted(banks):
        if total <= limit:
            break
        if bank == keep:
            continue
        bank.unlink(missing_ok=True)
        total -= size
        removed.append(bank)
    return removed
