"""A deterministic synthetic data set in exactly the FAT2019 layout, so the pipeline runs without Kaggle data.

About 20 of the 80 labels are realised by parametric sound recipes whose parameter ranges overlap, mixed
over background noise; the noisy split has a shifted timbre and corrupted labels, like the real one.
Run ``python -m trainer.synth --out DIR [--scale S] [--seed N]``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from trainer.atomic import atomic_write_text
from trainer.labels import load_labels
from trainer.paths import cache_root

SAMPLE_RATE = 44_100

# Difficulty knobs: lower event SNR and wider parameter overlap make classes harder to tell apart.
EVENT_SNR_DB = (-4.0, 12.0)  # event RMS over background RMS, curated and test
NOISY_SNR_SHIFT_DB = -6.0  # noisy events sit this much deeper in their (louder) background
PARAM_OVERLAP = 0.4  # each recipe range is widened by this fraction of its width on both sides
MULTI_LABEL_P = 1 / 7  # share of curated/test clips with more than one label
NOISY_CORRUPT_P = 0.35  # share of noisy clips whose written labels differ from the audio

BASE_COUNTS = {"curated": 600, "noisy": 600, "test": 300}  # clips at scale 1.0
MIN_CURATED_PER_LABEL = 3  # so a train/valid split keeps every realised label on both sides
CLIP_SECONDS = {"curated": (2.0, 0.6), "noisy": (3.5, 0.6), "test": (2.0, 0.6)}  # lognormal median, sigma
CLIP_BOUNDS_S = (0.3, 10.0)
COMPLETE_MARKER = ".complete"
_SPLIT_IDS = {"curated": 1, "noisy": 2, "test": 3}

_Recipe = Callable[[np.random.Generator, int], np.ndarray]


def _draw(rng: np.random.Generator, lo: float, hi: float, log: bool = True) -> float:
    """A parameter from [lo, hi] widened by PARAM_OVERLAP (log scale for frequencies, rates, times)."""
    if log:
        lo, hi = math.log(lo), math.log(hi)
    pad = PARAM_OVERLAP * (hi - lo)
    value = rng.uniform(lo - pad, hi + pad)
    return math.exp(value) if log else max(value, 0.0)


def _time(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / SAMPLE_RATE


def _harmonic(rng, n, f0, n_partials, slope, vibrato_hz=5.0, vibrato_depth=0.0, odd_only=False) -> np.ndarray:
    """A harmonic tone with optional vibrato; partials come from complex powers (one multiply each, no sin)."""
    f_inst = f0 * (1.0 + vibrato_depth * np.sin(2 * np.pi * vibrato_hz * _time(n)))
    base = np.exp(1j * (2 * np.pi * np.cumsum(f_inst) / SAMPLE_RATE))
    step = base * base if odd_only else base
    partial = base.copy()
    out = np.zeros(n)
    for k in range(1, 2 * n_partials, 2) if odd_only else range(1, n_partials + 1):
        if k * f0 * (1 + vibrato_depth) >= 0.45 * SAMPLE_RATE:
            break
        out += k**-slope * (partial * np.exp(1j * rng.uniform(0, 2 * np.pi))).imag
        partial *= step
    return out


def _fast_len(n: int) -> int:
    """The smallest 2^a * 3^b * 5^c >= n: FFTs of lengths with large prime factors are several times slower."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float, tilt: float = 0.0) -> np.ndarray:
    """White noise shaped by a soft band-pass [lo, hi] Hz and a power-law spectral tilt."""
    m = _fast_len(n)
    f = np.maximum(np.fft.rfftfreq(m, 1 / SAMPLE_RATE), 1.0)
    gain = 1 / (1 + (lo / f) ** 4) / (1 + (f / hi) ** 4) * (f / 1000.0) ** (tilt / 2)
    return np.fft.irfft(np.fft.rfft(rng.standard_normal(m)) * gain, m)[:n]


def _repeat(rng: np.random.Generator, n: int, rate: float, kernel: np.ndarray, jitter: float = 0.3) -> np.ndarray:
    """Place ``kernel`` at onsets about ``rate`` per second (at least one), amplitudes varying by hit."""
    gaps = rng.uniform(1 - jitter, 1 + jitter, size=int(n / SAMPLE_RATE * rate) + 2) / rate
    onsets = (np.cumsum(gaps) - gaps[0] * rng.uniform()) * SAMPLE_RATE
    onsets = onsets[(onsets >= 0) & (onsets < n)].astype(np.int64)
    if onsets.size == 0:
        onsets = np.zeros(1, dtype=np.int64)
    out = np.zeros(n)
    # Overlap-add in Python: a clip has few hits with short kernels, cheaper than an FFT convolution.
    for onset, amp in zip(onsets, rng.uniform(0.5, 1.0, size=onsets.size)):
        piece = kernel[: n - onset]
        out[onset : onset + piece.shape[0]] += amp * piece
    return out


def _struck(rng, f0, ratios, decay, n_max) -> np.ndarray:
    """One decaying strike: higher partials die faster, as in plucked strings and struck bars."""
    t = _time(min(n_max, int(5 * decay * SAMPLE_RATE) + 1))
    out = np.zeros(t.shape[0])
    for ratio in ratios:
        if ratio * f0 < 0.45 * SAMPLE_RATE:  # no partials above Nyquist (aliasing)
            phase = 2 * np.pi * ratio * f0 * t + rng.uniform(0, 2 * np.pi)
            out += np.sin(phase) * np.exp(-t * (np.sqrt(ratio) / decay)) / ratio
    return out


def _burst(rng, n_max, lo, hi, decay) -> np.ndarray:
    t_len = min(n_max, int(5 * decay * SAMPLE_RATE) + 64)
    return _band_noise(rng, t_len, lo, hi) * np.exp(-_time(t_len) / decay)


def _tremolo(n: int, rate: float, depth: float) -> np.ndarray:
    return 1.0 - depth * (0.5 + 0.5 * np.sin(2 * np.pi * rate * _time(n)))


def _chirps(rng, n, f_lo, f_hi, chirp_s, rate) -> np.ndarray:
    t_len = min(n, int(chirp_s * SAMPLE_RATE) + 1)
    t = _time(t_len)
    f_inst = f_lo * (f_hi / f_lo) ** (t / t[-1] if t_len > 1 else t)
    phase = 2 * np.pi * np.cumsum(f_inst) / SAMPLE_RATE
    tone = np.sin(phase) + 0.3 * np.sin(2 * phase)
    return _repeat(rng, n, rate, tone * np.hanning(t_len), jitter=0.2)


def _kick(rng: np.random.Generator, n_max: int) -> np.ndarray:
    """A bass-drum hit: a sine whose pitch falls from about twice its base to the base frequency."""
    f0, decay = _draw(rng, 40, 90), _draw(rng, 0.1, 0.4)
    t = _time(min(n_max, int(5 * decay * SAMPLE_RATE) + 1))
    f_inst = f0 * (1 + np.exp(-t / 0.03))
    return np.sin(2 * np.pi * np.cumsum(f_inst) / SAMPLE_RATE) * np.exp(-t / decay)


def _lin(rng: np.random.Generator, lo: float, hi: float) -> float:
    return _draw(rng, lo, hi, log=False)


# One recipe per realised label (r: the clip's generator, n: event samples); neighbouring recipes share
# parameter ranges (Hi-hat/Hiss/Crackle, Knock/Tick-tock, Bass_drum/Bass_guitar, Stream/Fan/Purr, ...).
_RECIPES: dict[str, _Recipe] = {
    "Accordion": lambda r, n: _harmonic(r, n, _draw(r, 150, 450), 14, _lin(r, 0.6, 1.0))
    * _tremolo(n, _draw(r, 4, 7), _lin(r, 0.1, 0.3)),
    "Harmonica": lambda r, n: _harmonic(r, n, _draw(r, 250, 900), 8, _lin(r, 0.8, 1.4), odd_only=True)
    * _tremolo(n, _draw(r, 5, 8), _lin(r, 0.2, 0.5)),
    "Buzz": lambda r, n: _harmonic(r, n, _draw(r, 80, 250), 40, _lin(r, 0.4, 0.8), 30.0, 0.01),
    "Screaming": lambda r, n: np.hanning(n) ** 0.3
    * _harmonic(r, n, _draw(r, 500, 1300), 6, _lin(r, 1.0, 1.8), _draw(r, 5, 8), _draw(r, 0.02, 0.07)),
    "Bass_guitar": lambda r, n: _repeat(
        r, n, _draw(r, 1, 4), _struck(r, _draw(r, 40, 110), range(1, 7), _draw(r, 0.3, 1.0), n)),
    "Acoustic_guitar": lambda r, n: _repeat(
        r, n, _draw(r, 1, 5), _struck(r, _draw(r, 110, 400), range(1, 11), _draw(r, 0.2, 0.8), n)),
    "Glockenspiel": lambda r, n: _repeat(
        r, n, _draw(r, 2, 6), _struck(r, _draw(r, 700, 2000), (1, 2.76, 5.40, 8.93), _draw(r, 0.2, 0.8), n)),
    "Church_bell": lambda r, n: _repeat(
        r, n, _draw(r, 0.3, 1.0), _struck(r, _draw(r, 200, 600), (0.5, 1, 1.2, 1.5, 2, 2.5, 3), _draw(r, 1.5, 4), n)),
    "Bass_drum": lambda r, n: _repeat(r, n, _draw(r, 1, 3), _kick(r, n)),
    "Chirp_and_tweet": lambda r, n: _chirps(
        r, n, _draw(r, 2500, 4000), _draw(r, 4500, 7000), _draw(r, 0.05, 0.2), _draw(r, 3, 10)),
    "Squeak": lambda r, n: _chirps(r, n, _draw(r, 800, 2000), _draw(r, 1200, 3000), _draw(r, 0.1, 0.5), _draw(r, 1, 3)),
    "Cricket": lambda r, n: np.sin(2 * np.pi * _draw(r, 3500, 6000) * _time(n))
    * _tremolo(n, _draw(r, 15, 50), 1.0) * _tremolo(n, _draw(r, 1, 3), _lin(r, 0.3, 0.9)),
    "Hi-hat": lambda r, n: _repeat(
        r, n, _draw(r, 2, 8), _burst(r, n, _draw(r, 5000, 8000), _draw(r, 10000, 16000), _draw(r, 0.03, 0.15))),
    "Knock": lambda r, n: _repeat(
        r, n, _draw(r, 2, 6), _burst(r, n, _draw(r, 150, 300), _draw(r, 600, 1500), _draw(r, 0.02, 0.08))),
    "Tick-tock": lambda r, n: _repeat(
        r, n, _draw(r, 1, 3), _burst(r, n, _draw(r, 1500, 2500), _draw(r, 3000, 6000), _draw(r, 0.005, 0.02)), 0.05),
    "Crackle": lambda r, n: _repeat(
        r, n, _draw(r, 10, 60), _burst(r, n, _draw(r, 500, 1500), _draw(r, 5000, 12000), _draw(r, 0.002, 0.01)), 0.95),
    "Hiss": lambda r, n: _band_noise(r, n, _draw(r, 3000, 5000), _draw(r, 9000, 14000)),
    "Stream": lambda r, n: _band_noise(r, n, _draw(r, 200, 500), _draw(r, 2000, 4000))
    * _tremolo(n, _draw(r, 0.5, 3), _lin(r, 0.3, 0.7)),
    "Mechanical_fan": lambda r, n: _tremolo(n, _draw(r, 10, 30), _lin(r, 0.1, 0.3))
    * (_band_noise(r, n, _draw(r, 60, 150), _draw(r, 400, 900)) + 0.3 * _harmonic(r, n, _draw(r, 50, 150), 4, 1.0)),
    "Purr": lambda r, n: _band_noise(r, n, _draw(r, 60, 120), _draw(r, 300, 600))
    * _tremolo(n, _draw(r, 20, 30), _lin(r, 0.7, 1.0)),
}


_VOCAB_ORDER = {label: i for i, label in enumerate(load_labels())}
REALISED_LABELS: tuple[str, ...] = tuple(sorted(_RECIPES, key=_VOCAB_ORDER.__getitem__))


@dataclass(frozen=True)
class _Clip:
    """One planned clip: what the audio contains (``labels``) and what its CSV row says (``written``)."""

    split: str
    index: int
    fname: str
    labels: tuple[str, ...]
    written: tuple[str, ...]
    seconds: float


def _split_sizes(scale: float) -> dict[str, int]:
    n_real = len(REALISED_LABELS)
    sizes = {split: max(round(count * scale), n_real) for split, count in BASE_COUNTS.items()}
    sizes["curated"] = max(sizes["curated"], MIN_CURATED_PER_LABEL * n_real)
    return sizes


def _fnames(seed: int, sizes: dict[str, int]) -> dict[str, list[str]]:
    """8-hex-digit names hashed from (seed, split, index); a collision takes the next hash, in a fixed order."""
    taken: set[str] = set()
    names: dict[str, list[str]] = {}
    for split in _SPLIT_IDS:
        names[split] = []
        for index in range(sizes[split]):
            attempt = 0
            while True:
                key = f"{seed}/{split}/{index}/{attempt}".encode()
                name = hashlib.blake2b(key, digest_size=4).hexdigest() + ".wav"
                if name not in taken:
                    break
                attempt += 1
            taken.add(name)
            names[split].append(name)
    return names


def _plan_split(split: str, n: int, seed: int, fnames: list[str] | None = None) -> list[_Clip]:
    """Labels and lengths of a split, without audio: primary labels balanced, the rest random."""
    split_id = _SPLIT_IDS[split]
    n_real = len(REALISED_LABELS)
    primaries = np.random.default_rng([seed, split_id]).permutation(np.resize(np.arange(n_real), n))
    median_s, sigma = CLIP_SECONDS[split]
    clips = []
    for index in range(n):
        rng = np.random.default_rng([seed, split_id, index, 0])
        labels = [REALISED_LABELS[primaries[index]]]
        if rng.random() < MULTI_LABEL_P:
            others = [label for label in REALISED_LABELS if label != labels[0]]
            extra = 1 if rng.random() < 0.8 else 2
            labels += [str(x) for x in rng.choice(others, size=extra, replace=False)]
        written = list(labels)
        if split == "noisy" and rng.random() < NOISY_CORRUPT_P:
            wrong_pool = [label for label in REALISED_LABELS if label not in labels]
            wrong = wrong_pool[rng.integers(len(wrong_pool))]
            if rng.random() < 0.7:
                written[rng.integers(len(written))] = wrong
            else:
                written.append(wrong)
        seconds = float(np.clip(median_s * math.exp(sigma * rng.standard_normal()), *CLIP_BOUNDS_S))
        name = fnames[index] if fnames is not None else f"{index:08x}.wav"
        clips.append(_Clip(split, index, name, tuple(labels), tuple(written), round(seconds, 3)))
    return clips


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _render(clip: _Clip, seed: int) -> np.ndarray:
    """The clip's audio as int16: 1-3 events of its true labels over coloured background noise."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[clip.split], clip.index, 1])
    noisy = clip.split == "noisy"
    n = max(1, int(clip.seconds * SAMPLE_RATE))
    background = _normalise(_band_noise(rng, n, 30.0, 18000.0, tilt=rng.uniform(-2.0, 0.0)))
    events = np.zeros(n)
    event_labels = list(clip.labels)
    if len(event_labels) < 3 and rng.random() < 0.3:
        event_labels.append(event_labels[rng.integers(len(event_labels))])
    for label in event_labels:
        length = min(n, max(int(0.3 * SAMPLE_RATE), int(n * rng.uniform(0.4, 1.0))))
        start = int(rng.integers(n - length + 1))
        event = _normalise(_RECIPES[label](rng, length))
        fade = min(length // 2, 441)
        if fade:
            ramp = np.linspace(0.0, 1.0, fade)
            event[:fade] *= ramp
            event[length - fade :] *= ramp[::-1]
        snr_db = rng.uniform(*EVENT_SNR_DB) + (NOISY_SNR_SHIFT_DB if noisy else 0.0)
        events[start : start + length] += 10 ** (snr_db / 20) * event
    if noisy:  # another source: a reverberant smear and a different microphone tilt, in one FFT
        tau = rng.uniform(0.05, 0.3)
        t_ir = _time(int(3 * tau * SAMPLE_RATE))
        ir = rng.standard_normal(t_ir.shape[0]) * np.exp(-t_ir / tau)
        ir *= rng.uniform(0.5, 1.5) / np.sqrt(np.sum(ir**2))
        ir[0] += 1.0  # keep the dry signal
        m = _fast_len(n + ir.shape[0] - 1)
        tilt = np.maximum(np.fft.rfftfreq(m, 1 / SAMPLE_RATE), 50.0) / 1000.0
        spectrum = np.fft.rfft(events, m) * np.fft.rfft(ir, m) * tilt ** rng.uniform(-0.5, 0.3)
        events = np.fft.irfft(spectrum, m)[:n]
    mix = background + events
    peak = np.max(np.abs(mix)) + 1e-12
    return np.round(mix * (rng.uniform(0.1, 0.9) / peak) * 32767).astype(np.int16)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _build(tmp: Path, scale: float, seed: int, progress: bool) -> None:
    sizes = _split_sizes(scale)
    names = _fnames(seed, sizes)
    plans = {split: _plan_split(split, sizes[split], seed, names[split]) for split in _SPLIT_IDS}
    folders = {"curated": "train_curated", "noisy": "train_noisy", "test": "test"}
    all_clips = [clip for split in _SPLIT_IDS for clip in plans[split]]
    if progress:
        from tqdm import tqdm

        all_clips = tqdm(all_clips, desc="synthesising clips", unit="clip")
    for folder in folders.values():
        (tmp / folder).mkdir()
    for clip in all_clips:
        path = tmp / folders[clip.split] / clip.fname
        sf.write(path, _render(clip, seed), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    for split in ("curated", "noisy"):
        rows = [[clip.fname, ",".join(clip.written)] for clip in plans[split]]
        _write_csv(tmp / f"train_{split}.csv", ["fname", "labels"], rows)
    _write_csv(tmp / "test_labels.csv", ["fname", "labels"], [[c.fname, ",".join(c.labels)] for c in plans["test"]])
    zeros = ["0"] * len(load_labels())
    _write_csv(tmp / "sample_submission.csv", ["fname", *load_labels()], [[c.fname, *zeros] for c in plans["test"]])
    atomic_write_text(tmp / COMPLETE_MARKER, f"scale={scale:g} seed={seed}\n")


def _check_args(scale: float, seed: int) -> None:
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"synthetic data scale: expected a positive number, got {scale!r}")
    if seed < 0:
        raise ValueError(f"synthetic data seed: expected an integer >= 0, got {seed!r}")


def _build_beside(out: Path, scale: float, seed: int, progress: bool) -> Path:
    """Build the whole set in a fresh temporary sibling of ``out`` (same file system, so renaming is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    built = False
    try:
        _build(tmp, scale, seed, progress)
        built = True
    finally:  # also on KeyboardInterrupt: never leave a half-written copy behind
        if not built:
            shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def generate(out: Path, *, scale: float = 1.0, seed: int = 0, progress: bool = False) -> Path:
    """Write the synthetic data set into ``out`` (absent or empty); it appears there complete or not at all."""
    _check_args(scale, seed)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: expected a missing or empty directory for the synthetic data set")
    tmp = _build_beside(out, scale, seed, progress)
    try:
        os.replace(tmp, out)  # replaces an empty directory; fails if someone filled ``out`` meanwhile
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileExistsError(f"{out}: became non-empty while the synthetic data set was generated") from error
    return out


def ensure_demo_data(*, scale: float = 1.0, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached demo set for (scale, seed), generated on first use; concurrent callers share one copy."""
    _check_args(scale, seed)
    out = cache_root(cache_dir) / "demo" / f"scale-{scale:g}-seed-{seed}"
    if (out / COMPLETE_MARKER).exists():
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists without its {COMPLETE_MARKER} marker; delete it to regenerate")
    print(f"generating demo data set (scale {scale:g}) into {out}", file=sys.stderr)
    tmp = _build_beside(out, scale, seed, progress=False)
    try:
        os.replace(tmp, out)
    except OSError:  # another process published first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / COMPLETE_MARKER).exists():
            raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.synth", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to create (must be absent or empty)")
    parser.add_argument("--scale", type=float, default=1.0, help="size relative to 600/600/300 curated/noisy/test")
    parser.add_argument("--seed", type=int, default=0, help="seed; the same seed and scale give identical bytes")
    args = parser.parse_args(argv)
    try:
        out = generate(args.out, scale=args.scale, seed=args.seed, progress=sys.stderr.isatty())
    except (ValueError, FileExistsError) as error:
        parser.exit(2, f"error: {error}\n")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
