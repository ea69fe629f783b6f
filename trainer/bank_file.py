"""The packed bank file: every clip of a split in one time-major float16 array on disk, memory-mapped by readers.

Layout, little-endian, version 1::

    [0, 4096)              header: magic, version, n_mels, n_clips, total_frames, bank id, checksum
    [4096, frames_at)      index: lengths int64[N], then mean, std, floor float32[N] each; zero-padded
    [frames_at, end)       frames: float16 (total_frames, n_mels); clip i is rows sum(lengths[:i]) onward

``frames_at`` is the index's end rounded up to 4096, so the frames start on a page boundary and
``end = frames_at + total_frames * n_mels * 2`` exactly. The checksum (blake2b) covers the header fields and
the index. A file whose size, magic, version, shape, bank id or checksum does not match is refused, so a
truncated copy, a file from another version or a bank mixed up with another is rebuilt, never read; the
frames themselves carry no checksum (hashing gigabytes at every trial start would defeat the purpose).
Writers build a temp file and rename it (trainer.atomic), so no reader ever sees a partial bank.
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from trainer.atomic import atomic_path
from trainer.batches import clip_statistics

MAGIC = b"F19BANK\0"
VERSION = 1
HEADER_BYTES = 4096
_FIELDS = struct.Struct("<8sIIQQ32s")  # magic, version, n_mels, n_clips, total_frames, bank id (hex)
_CHECKSUM_BYTES = 16


class BankFileError(ValueError):
    """A bank file is not the complete, matching bank it should be; the message says what is wrong."""


@dataclass(frozen=True)
class BankFile:
    """A validated bank file opened read-only: frames memory-mapped, index in memory."""

    path: Path
    frames: np.ndarray   # (total_frames, n_mels) float16 memory map (copy-on-write: writes never reach the file)
    lengths: np.ndarray  # (N,) int64
    stats: np.ndarray    # (N, 3) float32: mean, std, floor per clip


def index_bytes(n_clips: int) -> int:
    return n_clips * (8 + 3 * 4)


def frames_offset(n_clips: int) -> int:
    end = HEADER_BYTES + index_bytes(n_clips)
    return -(-end // 4096) * 4096


def file_bytes(n_clips: int, total_frames: int, n_mels: int) -> int:
    """The exact size of a bank file of this shape (what the memory plan also uses)."""
    return frames_offset(n_clips) + total_frames * n_mels * 2


def write_bank_file(path: Path, *, bank_id: str, n_mels: int, arrays: Iterable[np.ndarray], n_clips: int,
                    on_bytes: Callable[[int], None] | None = None) -> None:
    """Pack ``n_clips`` (n_mels, frames) float16 arrays, streamed one at a time, into the bank file ``path``.

    Only one clip is in memory at once, so packing the noisy set costs no more memory than one clip.
    ``on_bytes(n)`` is called after each clip with the bytes it added.
    """
    lengths = np.zeros(n_clips, dtype=np.int64)
    stats = np.zeros((n_clips, 3), dtype=np.float32)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.seek(frames_offset(n_clips))
        count = 0
        for i, array in enumerate(arrays):
            if i >= n_clips:
                raise ValueError(f"{path}: more clips than the {n_clips} announced")
            if array.dtype != np.float16 or array.ndim != 2 or array.shape[0] != n_mels or array.shape[1] == 0:
                raise ValueError(f"{path}: clip {i} has shape {array.shape} {array.dtype}; "
                                 f"expected ({n_mels}, frames) float16")
            rows = np.ascontiguousarray(array.T)
            handle.write(rows.data)
            lengths[i] = array.shape[1]
            stats[i] = clip_statistics(array)
            count += 1
            if on_bytes is not None:
                on_bytes(rows.nbytes)
        if count != n_clips:
            raise ValueError(f"{path}: got {count} clips, expected {n_clips}")
        header = _header(bank_id, n_mels, lengths, stats)
        handle.seek(0)
        handle.write(header)
        handle.write(lengths.tobytes() + stats.T.tobytes())
        handle.flush()


def open_bank_file(path: Path, *, bank_id: str, n_mels: int, n_clips: int) -> BankFile:
    """Validate and memory-map ``path``; BankFileError (with the reason) when it is not the expected bank."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise BankFileError("missing") from None
    except OSError as exc:
        raise BankFileError(f"unreadable ({exc.strerror or exc})") from None
    # One handle for the checks and the map: the map is of the file that was checked, not of whatever the
    # name points to by then (another process may prune or repack the bank meanwhile).
    with handle:
        try:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(HEADER_BYTES + index_bytes(n_clips))
        except OSError as exc:
            raise BankFileError(f"unreadable ({exc.strerror or exc})") from None
        lengths, stats, total_frames = _check(head, size, bank_id=bank_id, n_mels=n_mels, n_clips=n_clips)
        # Copy-on-write mapping: numpy and torch see a writable array (torch refuses read-only ones without a
        # warning), the pages are the page cache's, shared by every process mapping the file, and nothing
        # ever writes to them.
        frames = np.memmap(handle, dtype=np.float16, mode="c", offset=frames_offset(n_clips),
                           shape=(total_frames, n_mels))
    return BankFile(path, frames, lengths, stats)


def _check(head: bytes, size: int, *, bank_id: str, n_mels: int, n_clips: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The clip lengths, statistics and frame count a bank file's header holds; BankFileError when wrong."""
    if len(head) < HEADER_BYTES + index_bytes(n_clips):
        raise BankFileError(f"truncated: {size} bytes, shorter than its header and index")
    magic, version, mels, clips, total_frames, stored_id = _FIELDS.unpack_from(head)
    if magic != MAGIC:
        raise BankFileError("not a bank file (bad magic)")
    if version != VERSION:
        raise BankFileError(f"version {version}, expected {VERSION}")
    if (mels, clips, stored_id.rstrip(b"\0").decode("ascii", "replace")) != (n_mels, n_clips, bank_id):
        raise BankFileError(f"holds another bank ({clips} clips x {mels} mels, id {stored_id[:16]!r})")
    index = head[HEADER_BYTES:HEADER_BYTES + index_bytes(n_clips)]
    checksum = head[_FIELDS.size:_FIELDS.size + _CHECKSUM_BYTES]
    if checksum != _checksum(head[:_FIELDS.size], index):
        raise BankFileError("header or index checksum mismatch")
    expected = file_bytes(n_clips, total_frames, n_mels)
    if size != expected:
        raise BankFileError(f"size {size} bytes, expected {expected} (truncated or padded)")
    lengths = np.frombuffer(index, dtype=np.int64, count=n_clips).copy()
    stats = np.frombuffer(index, dtype=np.float32, offset=8 * n_clips).reshape(3, n_clips).T.copy()
    if int(lengths.sum()) != total_frames or (lengths <= 0).any():
        raise BankFileError("clip lengths do not add up to the frame count")
    return lengths, stats, total_frames


def _header(bank_id: str, n_mels: int, lengths: np.ndarray, stats: np.ndarray) -> bytes:
    fields = _FIELDS.pack(MAGIC, VERSION, n_mels, len(lengths), int(lengths.sum()), bank_id.encode("ascii"))
    index = lengths.tobytes() + stats.T.tobytes()
    return (fields + _checksum(fields, index)).ljust(HEADER_BYTES, b"\0")


def _checksum(fields: bytes, index: bytes) -> bytes:
    return hashlib.blake2b(fields + index, digest_size=_CHECKSUM_BYTES).digest()
