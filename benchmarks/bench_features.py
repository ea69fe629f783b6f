"""Feature pipeline benchmark: the log-mel cache against the seed baseline's per-item pipeline.

Prints one markdown table with (a) clips/s of a training epoch of batches cut from the cache vs
decoding and computing log-mel per item every epoch, and (b) the cache's first fill (empty cache,
all cores) vs that same per-item pipeline over the same files. Everything but the fill runs on one
core. Timings are only meaningful on an otherwise idle machine.

    python -m benchmarks.bench_features                # demo data (generated once into the cache)
    python -m benchmarks.bench_features --data DIR     # a FAT2019 folder, or any folder of .wav
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch

from trainer import feature_cache
from trainer.batches import FeatureBank
from trainer.config import FeatureConfig
from trainer.feature_cache import load_features

BASELINE_SECONDS = 15  # the seed baseline pads/trims every clip to 15 s before its mel spectrogram


def find_wavs(data: Path, limit: int) -> list[Path]:
    """The first ``limit`` clips of ``data/train_curated`` if it exists, else of any .wav under ``data``."""
    folder = data / "train_curated" if (data / "train_curated").is_dir() else data
    wavs = sorted(folder.rglob("*.wav"))
    if not wavs:
        raise SystemExit(f"error: --data {data}: no .wav files found under {folder}")
    return wavs[:limit]


def per_item_epoch(paths: list[Path], cfg: FeatureConfig) -> float:
    """Seconds for one pass of the seed baseline: read, pad/trim to 15 s, librosa log-mel, tensor."""
    target = BASELINE_SECONDS * cfg.sample_rate
    started = time.perf_counter()
    for path in paths:
        wave, rate = sf.read(path, dtype="float32")
        wave = np.pad(wave, (0, max(0, target - len(wave))))[:target]
        mel = librosa.feature.melspectrogram(y=wave, sr=rate, n_fft=cfg.n_fft, hop_length=cfg.hop, n_mels=cfg.n_mels)
        torch.from_numpy(librosa.power_to_db(mel))
    return time.perf_counter() - started


def bank_epoch(bank: FeatureBank, cfg: FeatureConfig, batch_size: int, generator: torch.Generator) -> float:
    """Seconds for the same epoch through the trainer's packed FeatureBank (one gather per batch)."""
    started = time.perf_counter()
    order = torch.randperm(len(bank), generator=generator)
    for lo in range(0, len(order), batch_size):
        bank.random_crops(order[lo:lo + batch_size], cfg.crop_frames, cfg.pad_mode, generator)
    return time.perf_counter() - started


def best_of(repeats: int, run) -> float:
    return min(run() for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="FAT2019 folder or folder of .wav (default: demo data, scale 0.34)")
    parser.add_argument("--clips", type=int, default=200, help="how many clips to use (default 200)")
    parser.add_argument("--workers", type=int, default=None, help="processes for the cache fill (default: all cores)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5, help="cached epochs timed; the best one is reported")
    args = parser.parse_args(argv)

    if args.data is None:
        from trainer.synth import ensure_demo_data

        args.data = ensure_demo_data(scale=0.34)
    # One core for every timed pipeline except the fill (which is about using all cores): the
    # per-item baseline is single-threaded numpy, and torch's thread pool only adds noise on a busy box.
    torch.set_num_threads(1)
    paths = find_wavs(args.data, args.clips)
    cfg = FeatureConfig()  # the baseline's 64-band log-mel, n_fft 1764, hop 220, 3007-frame crops
    audio_s = sum(sf.info(p).duration for p in paths)
    workers = args.workers or os.cpu_count() or 1
    print(f"{len(paths)} clips ({audio_s / 60:.1f} min of audio) from {args.data}; "
          f"{workers} fill workers, batch {args.batch_size}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="bench-features-") as cache_dir:
        started = time.perf_counter()
        filled = load_features(paths, cfg, cache_dir=cache_dir, workers=workers, progress=False)
        fill_s = time.perf_counter() - started
        if filled.failed:
            print(f"warning: {len(filled.failed)} unreadable clips, e.g. {filled.failed[0]}", file=sys.stderr)
        feature_cache._memo.clear()  # a new run starts with an empty in-process memo
        started = time.perf_counter()
        arrays = [a for a in load_features(paths, cfg, cache_dir=cache_dir, progress=False).arrays if a is not None]
        warm_s = time.perf_counter() - started

    baseline_s = per_item_epoch(paths, cfg)
    generator = torch.Generator().manual_seed(0)
    bank = FeatureBank.from_arrays(arrays, normalize=cfg.normalize)
    bank_s = best_of(args.epochs, lambda: bank_epoch(bank, cfg, args.batch_size, generator))

    n = len(paths)
    rows = [
        ("per-item: read, pad to 15 s, librosa log-mel (seed baseline)", baseline_s, "1x", "-"),
        (f"cache: first fill, empty cache ({workers} workers)", fill_s, f"{baseline_s / fill_s:.1f}x", ">= 3x"),
        ("cache: a later run's load (in-process memo cleared)", warm_s, f"{baseline_s / warm_s:.1f}x", "-"),
        ("cache: epoch of random-crop batches (FeatureBank gather, the trainer's path)", bank_s,
         f"{baseline_s / bank_s:.0f}x", ">= 100x"),
    ]
    print(f"\n{n} clips, {audio_s / 60:.1f} min of audio, batch {args.batch_size}\n")
    print("| pipeline | seconds | clips/s | vs per-item | target |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, speedup, target in rows:
        rate = n / seconds  # a slow row (a cold numba JIT, a tiny run) must not print 0 clips/s
        print(f"| {name} | {seconds:.3g} | {rate:,.0f} | {speedup} | {target} |" if rate >= 10 else
              f"| {name} | {seconds:.3g} | {rate:.2g} | {speedup} | {target} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
