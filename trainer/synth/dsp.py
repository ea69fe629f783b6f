"""Signal pieces every built-in set mixes its clips with: coloured noise, fades, a room, 16-bit output."""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 44_100
FADE_SAMPLES = 441  # 10 ms ramps at both ends of an event: no clicks that would give its position away


def time_axis(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / SAMPLE_RATE


def fast_len(n: int) -> int:
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


def band_noise(rng: np.random.Generator, n: int, lo: float, hi: float, tilt: float = 0.0) -> np.ndarray:
    """White noise shaped by a soft band-pass [lo, hi] Hz and a power-law spectral tilt."""
    m = fast_len(n)
    f = np.maximum(np.fft.rfftfreq(m, 1 / SAMPLE_RATE), 1.0)
    gain = 1 / (1 + (lo / f) ** 4) / (1 + (f / hi) ** 4) * (f / 1000.0) ** (tilt / 2)
    return np.fft.irfft(np.fft.rfft(rng.standard_normal(m)) * gain, m)[:n]


def normalise(x: np.ndarray) -> np.ndarray:
    """Unit RMS, so mixing levels are set in dB relative to the background."""
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def fade_edges(event: np.ndarray) -> None:
    """Ramp the first and last 10 ms of ``event`` in place."""
    length = event.shape[0]
    fade = min(length // 2, FADE_SAMPLES)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        event[:fade] *= ramp
        event[length - fade :] *= ramp[::-1]


def room(rng: np.random.Generator, events: np.ndarray, max_tau_s: float = 0.3) -> np.ndarray:
    """Another recording chain: a reverberant smear and a different microphone tilt, in one FFT."""
    n = events.shape[0]
    tau = rng.uniform(0.05, max_tau_s)
    t_ir = time_axis(int(3 * tau * SAMPLE_RATE))
    ir = rng.standard_normal(t_ir.shape[0]) * np.exp(-t_ir / tau)
    ir *= rng.uniform(0.5, 1.5) / np.sqrt(np.sum(ir**2))
    ir[0] += 1.0  # keep the dry signal
    m = fast_len(n + ir.shape[0] - 1)
    tilt = np.maximum(np.fft.rfftfreq(m, 1 / SAMPLE_RATE), 50.0) / 1000.0
    spectrum = np.fft.rfft(events, m) * np.fft.rfft(ir, m) * tilt ** rng.uniform(-0.5, 0.3)
    return np.fft.irfft(spectrum, m)[:n]


def to_int16(rng: np.random.Generator, mix: np.ndarray) -> np.ndarray:
    """16-bit PCM at a random peak level between -21 and -1 dBFS (recording levels differ)."""
    peak = np.max(np.abs(mix)) + 1e-12
    return np.round(mix * (rng.uniform(0.1, 0.9) / peak) * 32767).astype(np.int16)
