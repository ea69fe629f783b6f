"""A FAT2019-size data set for benchmarks/scale.py, written so that it fits a small disk.

- The layout is the competition's: train_curated.csv + train_curated/ (4,970 clips, 10.5 h) and
  train_noisy.csv + train_noisy/ (19,815 clips, 80 h); labels are drawn from the real vocabulary, 1 clip in 7
  with two labels.
- Clip lengths follow the competition's shape: curated log-normal around 5 s (median), clipped to 0.3-30 s and
  scaled to 10.5 h (mean 7.6 s); noisy 15 s for 93% of the clips, 1-15 s for the rest, scaled to 80 h.
- The wav files are sparse: a valid 44.1 kHz PCM16 header and the file's full length, but no samples on disk,
  so ``soundfile.info`` (the memory plan) and ``os.stat`` (the digest memo) see the real sizes at no cost.
- Their log-mel features are random float16 arrays of the right shape, written straight into the feature
  cache (``<key>/<d[:2]>/<d>.npy``) with a made-up content digest per clip recorded in ``digests.json``,
  exactly as if ``cache_entries`` had filled the cache. Everything downstream of the fill (bank packing,
  start-up, memory maps, batches) then runs the project's real code on full-size data.
- ``write_real_audio`` writes a sample of real (noise + tones) wavs with the same length mix, for the fill rate.
"""
from __future__ import annotations

import csv
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

from trainer.atomic import atomic_write_text
from trainer.config import FeatureConfig
from trainer.feature_cache import feature_cache_key
from trainer.features import frame_count
from trainer.labels import load_labels

CURATED_CLIPS, NOISY_CLIPS = 4_970, 19_815
CURATED_HOURS, NOISY_HOURS = 10.5, 80.0
SAMPLE_RATE = 44_100


def clip_seconds(seed: int = 0, fraction: float = 1.0) -> dict[str, np.ndarray]:
    """Lengths in seconds of every curated and noisy clip (see the module docstring for the shape); ``fraction``
    scales both the clip counts and the hours (1.0 = FAT2019's size; a smaller one for a quick run)."""
    rng = np.random.default_rng(seed)
    n_curated, n_noisy = (max(1, round(n * fraction)) for n in (CURATED_CLIPS, NOISY_CLIPS))
    curated_hours, noisy_hours = CURATED_HOURS * n_curated / CURATED_CLIPS, NOISY_HOURS * n_noisy / NOISY_CLIPS
    curated = np.clip(rng.lognormal(np.log(5.0), 0.9, n_curated), 0.3, 30.0)
    for _ in range(20):  # scaling and clipping alternate until the total is 10.5 h
        curated = np.clip(curated * (curated_hours * 3600 / curated.sum()), 0.3, 30.0)
    noisy = np.where(rng.random(n_noisy) < 0.93, 15.0, rng.uniform(1.0, 15.0, n_noisy))
    noisy = np.clip(noisy * (noisy_hours * 3600 / noisy.sum()), 1.0, 16.0)
    return {"train_curated": curated, "train_noisy": noisy}


def make_dataset(root: Path, cfg: FeatureConfig, *, seed: int = 0, fraction: float = 1.0, noisy: bool = True,
                 log=print) -> dict:
    """Write (or reuse) the data folder ``root/data`` and the filled cache ``root/cache``; return a summary.
    ``fraction`` < 1 writes that share of the clips and hours (see ``clip_seconds``); ``noisy`` False writes
    the curated clips only (a training run without ``data.use_noisy`` reads no more)."""
    summary_path = root / "dataset.json"
    key = feature_cache_key(cfg)
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if (summary.get("feature_key") == key and summary.get("fraction", 1.0) == fraction
                and summary.get("noisy", True) == noisy):
            return summary
    lengths = clip_seconds(seed, fraction)
    if not noisy:
        del lengths["train_noisy"]
    data, cache = root / "data", root / "cache"
    entry_dir = cache / "features" / key
    entry_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(entry_dir / "params.json", json.dumps(cfg.cache_params(), indent=2, sort_keys=True))
    rng = np.random.default_rng(seed + 1)
    labels = load_labels()
    # Features are slices of one random pool: realistic values and statistics at disk speed, not RNG speed.
    longest = max(frame_count(int(round(s.max() * SAMPLE_RATE)), cfg.hop) for s in lengths.values())
    pool = rng.normal(-40.0, 12.0, (cfg.n_mels, 2 * longest)).astype(np.float16)
    digests: dict[str, list] = {}
    feature_bytes = 0
    for split, seconds in lengths.items():
        folder = data / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, duration in enumerate(seconds):
            fname = f"{split[6]}{i:07x}.wav"
            path = folder / fname
            n_samples = int(round(duration * SAMPLE_RATE))
            _write_sparse_wav(path, n_samples)
            digest = hashlib.blake2b(f"{split}/{fname}".encode(), digest_size=16).hexdigest()
            frames = frame_count(n_samples, cfg.hop)
            start = int(rng.integers(0, pool.shape[1] - frames + 1))
            array = np.ascontiguousarray(pool[:, start:start + frames])
            entry = entry_dir / digest[:2] / f"{digest}.npy"
            entry.parent.mkdir(exist_ok=True)
            np.save(entry, array)
            feature_bytes += array.nbytes
            st = path.stat()
            digests[str(path.absolute())] = [st.st_size, st.st_mtime_ns, digest]
            n_labels = 2 if rng.random() < 1 / 7 else 1
            rows.append((fname, ",".join(rng.choice(labels, n_labels, replace=False))))
            if (i + 1) % 5000 == 0:
                log(f"  {split}: {i + 1:,}/{len(seconds):,} clips written")
        with open(data / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["fname", "labels"])
            writer.writerows(rows)
    atomic_write_text(cache / "features" / "digests.json", json.dumps({"version": 1, "entries": digests}))
    summary = {
        "feature_key": key, "fraction": fraction, "noisy": noisy, "n_mels": cfg.n_mels, "hop": cfg.hop,
        "clips": {split: len(s) for split, s in lengths.items()},
        "hours": {split: round(float(s.sum()) / 3600, 2) for split, s in lengths.items()},
        "mean_s": {split: round(float(s.mean()), 2) for split, s in lengths.items()},
        "feature_bytes": feature_bytes,
    }
    atomic_write_text(summary_path, json.dumps(summary, indent=2))
    return summary


def _write_sparse_wav(path: Path, n_samples: int) -> None:
    """A mono 44.1 kHz PCM16 wav of ``n_samples`` zero samples that takes no disk space (a hole)."""
    data_bytes = 2 * n_samples
    header = (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
              + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, 2 * SAMPLE_RATE, 2, 16)
              + b"data" + struct.pack("<I", data_bytes))
    with open(path, "wb") as handle:
        handle.write(header)
        handle.truncate(len(header) + data_bytes)


def write_real_audio(folder: Path, seconds: np.ndarray, seed: int = 0) -> list[Path]:
    """Real PCM16 wavs (tones over noise) of the given lengths, for timing the cache fill and the seed pipeline."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, duration in enumerate(seconds):
        path = folder / f"real{i:05d}.wav"
        paths.append(path)
        if path.exists():
            continue
        t = np.arange(int(round(duration * SAMPLE_RATE)), dtype=np.float32) / SAMPLE_RATE
        wave = 0.05 * rng.standard_normal(len(t)).astype(np.float32)
        for freq in rng.uniform(100, 5000, 3):
            wave += 0.1 * np.sin(2 * np.pi * freq * t, dtype=np.float32)
        sf.write(path, wave, SAMPLE_RATE, subtype="PCM_16")
    return paths
