"""The demo set: about 20 of the 80 labels realised by parametric sound recipes whose ranges overlap.

Each recipe turns a clip's generator and an event length into one event; events are mixed over coloured noise,
and the noisy split gets a deeper SNR and another room and microphone, like the real noisy split.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from trainer.labels import load_labels
from trainer.synth.dsp import SAMPLE_RATE, band_noise, fade_edges, normalise, room, time_axis, to_int16
from trainer.synth.layout import SPLIT_IDS, BuiltinSet, Clip, RenderedClip

# Difficulty knobs: lower event SNR and wider parameter overlap make classes harder to tell apart.
EVENT_SNR_DB = (-4.0, 12.0)  # event RMS over background RMS, curated and test
NOISY_SNR_SHIFT_DB = -6.0  # noisy events sit this much deeper in their (louder) background
PARAM_OVERLAP = 0.4  # each recipe range is widened by this fraction of its width on both sides

_Recipe = Callable[[np.random.Generator, int], np.ndarray]


def _draw(rng: np.random.Generator, lo: float, hi: float, log: bool = True) -> float:
    """A parameter from [lo, hi] widened by PARAM_OVERLAP (log scale for frequencies, rates, times)."""
    if log:
        lo, hi = math.log(lo), math.log(hi)
    pad = PARAM_OVERLAP * (hi - lo)
    value = rng.uniform(lo - pad, hi + pad)
    return math.exp(value) if log else max(value, 0.0)


def _harmonic(rng, n, f0, n_partials, slope, vibrato_hz=5.0, vibrato_depth=0.0, odd_only=False) -> np.ndarray:
    """A harmonic tone with optional vibrato; partials come from complex powers (one multiply each, no sin)."""
    f_inst = f0 * (1.0 + vibrato_depth * np.sin(2 * np.pi * vibrato_hz * time_axis(n)))
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
    t = time_axis(min(n_max, int(5 * decay * SAMPLE_RATE) + 1))
    out = np.zeros(t.shape[0])
    for ratio in ratios:
        if ratio * f0 < 0.45 * SAMPLE_RATE:  # no partials above Nyquist (aliasing)
            phase = 2 * np.pi * ratio * f0 * t + rng.uniform(0, 2 * np.pi)
            out += np.sin(phase) * np.exp(-t * (np.sqrt(ratio) / decay)) / ratio
    return out


def _burst(rng, n_max, lo, hi, decay) -> np.ndarray:
    t_len = min(n_max, int(5 * decay * SAMPLE_RATE) + 64)
    return band_noise(rng, t_len, lo, hi) * np.exp(-time_axis(t_len) / decay)


def _tremolo(n: int, rate: float, depth: float) -> np.ndarray:
    return 1.0 - depth * (0.5 + 0.5 * np.sin(2 * np.pi * rate * time_axis(n)))


def _chirps(rng, n, f_lo, f_hi, chirp_s, rate) -> np.ndarray:
    t_len = min(n, int(chirp_s * SAMPLE_RATE) + 1)
    t = time_axis(t_len)
    f_inst = f_lo * (f_hi / f_lo) ** (t / t[-1] if t_len > 1 else t)
    phase = 2 * np.pi * np.cumsum(f_inst) / SAMPLE_RATE
    tone = np.sin(phase) + 0.3 * np.sin(2 * phase)
    return _repeat(rng, n, rate, tone * np.hanning(t_len), jitter=0.2)


def _kick(rng: np.random.Generator, n_max: int) -> np.ndarray:
    """A bass-drum hit: a sine whose pitch falls from about twice its base to the base frequency."""
    f0, decay = _draw(rng, 40, 90), _draw(rng, 0.1, 0.4)
    t = time_axis(min(n_max, int(5 * decay * SAMPLE_RATE) + 1))
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
    "Cricket": lambda r, n: np.sin(2 * np.pi * _draw(r, 3500, 6000) * time_axis(n))
    * _tremolo(n, _draw(r, 15, 50), 1.0) * _tremolo(n, _draw(r, 1, 3), _lin(r, 0.3, 0.9)),
    "Hi-hat": lambda r, n: _repeat(
        r, n, _draw(r, 2, 8), _burst(r, n, _draw(r, 5000, 8000), _draw(r, 10000, 16000), _draw(r, 0.03, 0.15))),
    "Knock": lambda r, n: _repeat(
        r, n, _draw(r, 2, 6), _burst(r, n, _draw(r, 150, 300), _draw(r, 600, 1500), _draw(r, 0.02, 0.08))),
    "Tick-tock": lambda r, n: _repeat(
        r, n, _draw(r, 1, 3), _burst(r, n, _draw(r, 1500, 2500), _draw(r, 3000, 6000), _draw(r, 0.005, 0.02)), 0.05),
    "Crackle": lambda r, n: _repeat(
        r, n, _draw(r, 10, 60), _burst(r, n, _draw(r, 500, 1500), _draw(r, 5000, 12000), _draw(r, 0.002, 0.01)), 0.95),
    "Hiss": lambda r, n: band_noise(r, n, _draw(r, 3000, 5000), _draw(r, 9000, 14000)),
    "Stream": lambda r, n: band_noise(r, n, _draw(r, 200, 500), _draw(r, 2000, 4000))
    * _tremolo(n, _draw(r, 0.5, 3), _lin(r, 0.3, 0.7)),
    "Mechanical_fan": lambda r, n: _tremolo(n, _draw(r, 10, 30), _lin(r, 0.1, 0.3))
    * (band_noise(r, n, _draw(r, 60, 150), _draw(r, 400, 900)) + 0.3 * _harmonic(r, n, _draw(r, 50, 150), 4, 1.0)),
    "Purr": lambda r, n: band_noise(r, n, _draw(r, 60, 120), _draw(r, 300, 600))
    * _tremolo(n, _draw(r, 20, 30), _lin(r, 0.7, 1.0)),
}


_VOCAB_ORDER = {label: i for i, label in enumerate(load_labels())}
REALISED_LABELS: tuple[str, ...] = tuple(sorted(_RECIPES, key=_VOCAB_ORDER.__getitem__))


def render_demo_clip(clip: Clip, seed: int) -> RenderedClip:
    """The clip's audio as int16: 1-3 events of its true labels over coloured background noise."""
    rng = np.random.default_rng([seed, SPLIT_IDS[clip.split], clip.index, 1])
    noisy = clip.split == "noisy"
    n = max(1, int(clip.seconds * SAMPLE_RATE))
    background = normalise(band_noise(rng, n, 30.0, 18000.0, tilt=rng.uniform(-2.0, 0.0)))
    events = np.zeros(n)
    event_labels = list(clip.labels)
    if len(event_labels) < 3 and rng.random() < 0.3:
        event_labels.append(event_labels[rng.integers(len(event_labels))])
    for label in event_labels:
        length = min(n, max(int(0.3 * SAMPLE_RATE), int(n * rng.uniform(0.4, 1.0))))
        start = int(rng.integers(n - length + 1))
        event = normalise(_RECIPES[label](rng, length))
        fade_edges(event)
        snr_db = rng.uniform(*EVENT_SNR_DB) + (NOISY_SNR_SHIFT_DB if noisy else 0.0)
        events[start : start + length] += 10 ** (snr_db / 20) * event
    if noisy:
        events = room(rng, events)
    return RenderedClip(to_int16(rng, background + events))


DEMO = BuiltinSet("demo", REALISED_LABELS, lambda seed: lambda clip: render_demo_clip(clip, seed))
