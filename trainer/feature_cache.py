"""On-disk log-mel cache: each (feature parameters, audio content) pair is computed once, ever.

Layout under ``cache_root(cache_dir) / "features"``::

    <key>/params.json            the feature parameters behind <key> (for people)
    <key>/<d[:2]>/<d>.npy        float16 (n_mels, frames) log-mel of the file whose content digest is d
    <key>/fill.lock              held by the one process computing missing entries of <key>
    <key>/banks/                 packed banks of whole splits (trainer/banks.py)
    digests.json                 memo: (absolute path, size, mtime_ns) -> content digest

Entries are keyed by content, so a copy of a clip elsewhere reuses its entry. Every file is
written atomically and a reader only opens final names; an entry that fails to load (truncated by
a full disk, say) is recomputed. Processes that need missing entries of one key take turns (the
fill lock), so panes started together compute each clip once instead of once per pane.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trainer.atomic import atomic_path, atomic_write_text, remove_stale_temp_files
from trainer.audio import AudioReadError, read_audio
from trainer.config import FeatureConfig
from trainer.data import DataError
from trainer.features import LogMel
from trainer.file_lock import exclusive_lock
from trainer.paths import cache_root
from trainer.progress import Progress, Status, duration

# Bump when the feature code changes its output, so old entries stop matching.
FEATURE_CODE_VERSION = 1
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal for this process when its parent dies
MIN_FILES_FOR_POOL = 16  # below this a process pool costs more than it saves
_MEMO_SIZE = 2
INDEX_SAVE_EVERY_S = 60.0  # during a long fill, how often the digest memo is written out


@dataclass
class FeatureSet:
    """Log-mel arrays in the order of the requested paths; ``None`` where the file was unusable.

    Arrays are float16 ``(n_mels, frames)`` and read-only: they may be shared between loads in one
    process, so copy (``FeatureBank`` does) before changing them.
    """

    arrays: list[np.ndarray | None]
    failed: list[tuple[Path, str]] = field(default_factory=list)


def feature_cache_key(cfg: FeatureConfig) -> str:
    """Short hex digest of the parameters that shape the cached arrays (also a trial attribute)."""
    params = dict(cfg.cache_params(), feature_code_version=FEATURE_CODE_VERSION)
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def load_features(paths: list[Path], cfg: FeatureConfig, *, cache_dir: str | os.PathLike | None = None,
                  workers: int | None = None, progress: bool = True, desc: str = "") -> FeatureSet:
    """Log-mel of every clip in ``paths`` (unpadded), from the cache or computed and cached now.

    Missing entries are computed in ``workers`` processes (default: all cores). Unreadable files
    come back as ``None`` with their reason in ``failed``; they are retried on the next call.
    """
    paths = [Path(p) for p in paths]
    key = feature_cache_key(cfg)
    features_dir = cache_root(cache_dir) / "features"
    memo_key = (key, str(features_dir.absolute()), tuple(_identity(p) for p in paths))
    if memo_key in _memo:
        _memo.move_to_end(memo_key)
        hit = _memo[memo_key]
        return FeatureSet(list(hit.arrays), list(hit.failed))

    arrays: list[np.ndarray | None] = [None] * len(paths)
    entries = _resolve(paths, cfg, features_dir, workers=workers, progress=progress, desc=desc, status=None,
                       loaded=arrays)
    for array in arrays:
        if array is not None:
            array.flags.writeable = False
    result = FeatureSet(arrays, list(entries.failed))
    _memo[memo_key] = result
    while len(_memo) > _MEMO_SIZE:
        _memo.popitem(last=False)
    return FeatureSet(list(arrays), list(result.failed))


@dataclass
class CacheEntries:
    """Where the cached log-mel of each requested clip is, found or computed now, with no array loaded.

    ``digests[i]`` is the content digest of ``paths[i]``, None where the file was unusable (its reason is
    in ``failed``).
    """

    paths: list[Path]
    cfg: FeatureConfig
    entry_dir: Path
    digests: list[str | None]
    failed: list[tuple[Path, str]]

    def entry_path(self, i: int) -> Path:
        return _entry_path(self.entry_dir, self.digests[i])

    def load(self, i: int) -> np.ndarray:
        """Clip i's (n_mels, frames) float16 array; an entry found damaged or gone is computed again first."""
        digest = self.digests[i]
        if digest is None:
            raise ValueError(f"{self.paths[i]} has no cache entry (it was unreadable)")
        array = _load_entry(_entry_path(self.entry_dir, digest), self.cfg)
        if array is None:
            new_digest, reason = _fill_one((self.paths[i], self.cfg, self.entry_dir))
            array = _load_entry(_entry_path(self.entry_dir, digest), self.cfg) if new_digest == digest else None
            if array is None:
                raise DataError(f"{self.paths[i]}: changed or became unreadable since it was hashed "
                                f"({reason or 'different content'}); run again")
        return array


def cache_entries(paths: list[Path], cfg: FeatureConfig, *, cache_dir: str | os.PathLike | None = None,
                  workers: int | None = None, progress: bool = True, desc: str = "",
                  status: Status | None = None) -> CacheEntries:
    """Make sure every clip of ``paths`` has a cache entry (computing the missing ones), load none of them.

    A warm call only stats the files and reads the digest memo: no audio and no entry is opened. Filling
    reports progress through ``status`` (at most one line every few seconds).
    """
    return _resolve([Path(p) for p in paths], cfg, cache_root(cache_dir) / "features", workers=workers,
                    progress=progress, desc=desc, status=status, loaded=None)


def _resolve(paths: list[Path], cfg: FeatureConfig, features_dir: Path, *, workers: int | None, progress: bool,
             desc: str, status: Status | None, loaded: list[np.ndarray | None] | None) -> CacheEntries:
    """Digest of every path, computing missing entries; with ``loaded``, also load (and so check) each entry."""
    entry_dir = features_dir / feature_cache_key(cfg)
    if not (entry_dir / "params.json").exists():
        atomic_write_text(entry_dir / "params.json", json.dumps(cfg.cache_params(), indent=2, sort_keys=True))
    identities = [_identity(p) for p in paths]
    digests: list[str | None] = [None] * len(paths)
    failures: dict[int, str] = {}
    what = desc or "log-mel"
    bar = tqdm(total=len(paths), desc=what, unit="clip", disable=not progress or not sys.stderr.isatty())
    with bar:
        todo = _known(range(len(paths)), identities, _DigestIndex(features_dir / "digests.json"), entry_dir, cfg,
                      digests, loaded)
        bar.update(len(paths) - len(todo))
        if todo:
            # One filler per feature key: panes started together would otherwise each compute every clip.
            with exclusive_lock(entry_dir / "fill.lock", what=f"filling the {what} cache", status=status):
                remove_stale_temp_files(entry_dir)  # entries half-written by fillers killed mid-write
                index = _DigestIndex(features_dir / "digests.json")  # what the previous holder added
                still = _known(todo, identities, index, entry_dir, cfg, digests, loaded)
                bar.update(len(todo) - len(still))
                _compute(still, paths, identities, cfg, entry_dir, index, workers, digests, failures, loaded,
                         bar, Progress(status, what, len(still)))
    return CacheEntries(paths, cfg, entry_dir, digests, [(paths[i], failures[i]) for i in sorted(failures)])


def _known(candidates, identities, index: "_DigestIndex", entry_dir: Path, cfg: FeatureConfig,
           digests: list, loaded: list | None) -> list[int]:
    """Record the digests the memo knows (and, when loading, the entries that load); return the rest."""
    missing = []
    for i in candidates:
        digest = index.get(identities[i])
        array = _load_entry(_entry_path(entry_dir, digest), cfg) if digest and loaded is not None else None
        # The memo maps files to content digests for every feature setting; whether this setting's entry
        # exists is a separate question (a stat when not loading).
        if digest is None or (loaded is not None and array is None) or \
                (loaded is None and not _entry_path(entry_dir, digest).is_file()):
            missing.append(i)
            continue
        digests[i] = digest
        if loaded is not None:
            loaded[i] = array
    return missing


def _compute(todo: list[int], paths, identities, cfg: FeatureConfig, entry_dir: Path, index: "_DigestIndex",
             workers: int | None, digests: list, failures: dict, loaded: list | None, bar, progress: Progress) -> None:
    if not todo:
        return
    if progress.status is not None:
        n_workers = min(max(1, workers or os.cpu_count() or 1), len(todo))
        progress.status(f"{progress.what}: computing {len(todo):,} of {len(paths):,} clips "
                        f"({n_workers} process{'es' if n_workers > 1 else ''})")
    saved = time.monotonic()
    for i, (digest, reason) in zip(todo, _fill(paths, todo, cfg, entry_dir, workers)):
        bar.update()
        progress.advance()
        if reason is not None:
            failures[i] = reason
            continue
        index.put(identities[i], digest)
        if loaded is not None:
            loaded[i] = _load_entry(_entry_path(entry_dir, digest), cfg)
            if loaded[i] is None:
                failures[i] = f"cache entry {_entry_path(entry_dir, digest)} could not be read back"
                continue
        digests[i] = digest
        if time.monotonic() - saved > INDEX_SAVE_EVERY_S:  # a killed fill keeps what it hashed
            index.save()
            saved = time.monotonic()
    index.save()
    if progress.status is not None:
        elapsed = progress.elapsed()
        progress.status(f"{progress.what}: {len(todo):,} clips computed in {duration(elapsed)} "
                        f"({len(todo) / max(elapsed, 1e-9):,.1f} clips/s)")


# -- in-process memo: several trials in one worker load the same set once --------------------------
_memo: OrderedDict[tuple, FeatureSet] = OrderedDict()


def _identity(path: Path) -> tuple[str, int, int]:
    """(absolute path, size, mtime_ns); size -1 when the file cannot be stat'ed."""
    absolute = str(path.absolute())
    try:
        st = os.stat(absolute)
    except OSError:
        return absolute, -1, -1
    return absolute, st.st_size, st.st_mtime_ns


class _DigestIndex:
    """Memo of content digests by file identity, so a warm run does not re-read and hash every clip.

    A missing, stale or corrupt index only costs re-hashing. Concurrent writers merge with what is
    on disk just before their atomic write; an entry lost to a race is simply re-hashed later.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries = self._read()
        self.added: dict[str, list] = {}

    def _read(self) -> dict[str, list]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}

    def get(self, identity: tuple[str, int, int]) -> str | None:
        path, size, mtime_ns = identity
        entry = self.entries.get(path)
        if size < 0 or not isinstance(entry, list) or len(entry) != 3:
            return None
        if entry[0] != size or entry[1] != mtime_ns or not isinstance(entry[2], str):
            return None
        return entry[2]

    def put(self, identity: tuple[str, int, int], digest: str) -> None:
        path, size, mtime_ns = identity
        if size >= 0 and self.get(identity) != digest:
            self.added[path] = [size, mtime_ns, digest]

    def save(self) -> None:
        if not self.added:
            return
        entries = self._read()
        entries.update(self.added)
        atomic_write_text(self.path, json.dumps({"version": 1, "entries": entries}, separators=(",", ":")))
        self.entries, self.added = entries, {}


def _entry_path(entry_dir: Path, digest: str) -> Path:
    return entry_dir / digest[:2] / f"{digest}.npy"


def _load_entry(path: Path, cfg: FeatureConfig) -> np.ndarray | None:
    """The cached array, or None when absent or unusable (truncated, wrong shape or dtype)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.dtype != np.float16 or array.ndim != 2 or array.shape[0] != cfg.n_mels or array.shape[1] == 0:
        return None
    return array


def _fill(paths: list[Path], todo: list[int], cfg: FeatureConfig, entry_dir: Path, workers: int | None):
    """Yield (digest, failure reason) for each index in ``todo``, in order, computing missing entries."""
    jobs = [(paths[i], cfg, entry_dir) for i in todo]
    workers = max(1, workers or os.cpu_count() or 1)
    if workers == 1 or len(jobs) < MIN_FILES_FOR_POOL:
        for job in jobs:
            yield _fill_one(job)
        return
    workers = min(workers, len(jobs))
    _log_mel(cfg)  # built before forking, so workers inherit it instead of each importing the filter code
    # On Linux, fork starts workers in milliseconds (elsewhere fork is unsafe with torch, so the
    # platform default); like DataLoader workers they use one torch thread each.
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    chunk = max(1, min(32, len(jobs) // (workers * 8)))
    done = 0
    try:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                   initargs=(os.getpid(),))
        try:
            for result in pool.map(_fill_one, jobs, chunksize=chunk):
                yield result
                done += 1
        finally:  # an interrupt or an error must not wait for every remaining clip: cancel what has not started
            pool.shutdown(wait=True, cancel_futures=True)
    except BrokenProcessPool:
        # A fill process died (killed, out of memory): this process finishes the clips that are not done;
        # the entries the others wrote meanwhile are found and reused, not recomputed.
        warnings.warn(f"a feature-cache fill process died; computing the remaining {len(jobs) - done} clip(s) "
                      f"in this process", stacklevel=2)
        for job in jobs[done:]:
            yield _fill_one(job)


def _init_worker(parent: int) -> None:
    torch.set_num_threads(1)
    # Ctrl-C belongs to the parent: it cancels the fill. And a fill process must not outlive its parent
    # (kill -9 of a worker would otherwise leave its fill processes running, writing, holding memory).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM is how the pool stops its processes when one of them died: a handler inherited from the parent
    # (a search worker's "stop the trial, queue its retry", also bound to SIGHUP) must not run here
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


_modules: dict[FeatureConfig, LogMel] = {}


def _log_mel(cfg: FeatureConfig) -> LogMel:
    if cfg not in _modules:
        if len(_modules) >= 8:  # a long search visits many feature configs; keep a few filter banks
            _modules.clear()
        _modules[cfg] = LogMel(cfg)
    return _modules[cfg]


def _fill_one(job: tuple[Path, FeatureConfig, Path]) -> tuple[str, str | None]:
    """Read one file once: hash its bytes, and unless a good entry exists, compute and write it."""
    path, cfg, entry_dir = job
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "", "file not found"
    except OSError as exc:
        return "", f"cannot read file ({exc.strerror or exc})"
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    entry = _entry_path(entry_dir, digest)
    if _load_entry(entry, cfg) is not None:
        return digest, None
    try:
        wave = read_audio(data, cfg.sample_rate, name=str(path))
    except AudioReadError as exc:
        return digest, exc.reason
    with torch.no_grad():
        logmel = _log_mel(cfg)(torch.from_numpy(wave)).numpy().astype(np.float16)
    with atomic_path(entry) as tmp, open(tmp, "wb") as handle:
        np.save(handle, logmel)  # a handle: np.save on a path would append ".npy" to the temp name
    return digest, None
