"""How a label's sound source is played into one event: melodies, strummed chords, drum patterns, textures, speech.

Each style draws everything that varies between clips (preset, key, scale, tempo, velocity, note lengths,
voice, text) from the clip's generator, so two events of one label share a source but rarely a sound.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.synth.dsp import SAMPLE_RATE
from trainer.synth.soundfont import SoundFont
from trainer.synth.speech import PhraseBank

SCALES = ((0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10), (0, 2, 4, 7, 9))  # major, natural minor, pentatonic
PHRASES_PER_LABEL = 16  # distinct spoken phrases per (label, split); events cut pieces out of them


@dataclass(frozen=True)
class Domain:
    """Where a split's sounds come from: curated and test from one font and voice set, noisy from the others."""

    font: SoundFont
    noisy: bool
    split_id: int
    phrases: PhraseBank


@dataclass(frozen=True)
class Presets:
    """The presets of one font a label is played with, and the keys it may play."""

    programs: tuple[tuple[int, int], ...]  # (bank, program); bank 128 holds the drum kits
    keys: tuple[int, ...]


def span(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1))


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def _add(out: np.ndarray, at: int, sound: np.ndarray) -> None:
    piece = sound[: max(out.shape[0] - at, 0)]
    out[at : at + piece.shape[0]] += piece


def _pick_preset(domain: Domain, presets: Presets, rng: np.random.Generator) -> tuple[int, int, str]:
    bank, program = presets.programs[rng.integers(len(presets.programs))]
    name = domain.font.presets[(bank, program)]
    return bank, program, f"{domain.font.path.name}:{bank}/{program} {name}"


@dataclass(frozen=True)
class Melodic:
    """A tune: a random walk over a scale, notes of varying length, velocity and spacing."""

    curated: Presets
    noisy: Presets
    notes_per_s: tuple[float, float]
    hold_s: tuple[float, float]

    def play(self, domain: Domain, label_id: int, rng: np.random.Generator, length: int) -> tuple[np.ndarray, str]:
        presets = self.noisy if domain.noisy else self.curated
        bank, program, description = _pick_preset(domain, presets, rng)
        tonic, scale = int(rng.integers(12)), SCALES[rng.integers(len(SCALES))]
        keys = [k for k in presets.keys if (k - tonic) % 12 in scale] or list(presets.keys)
        position = int(rng.integers(len(keys)))
        beat = 1.0 / _log_uniform(rng, self.notes_per_s)
        loudness = int(rng.integers(50, 121))
        out, t = np.zeros(length), 0
        while t < length:
            velocity = int(np.clip(loudness + rng.integers(-15, 16), 15, 127))
            note = domain.font.note(bank, program, keys[position], velocity, rng.uniform(*self.hold_s), length - t)
            _add(out, t, note)
            t += max(1, int(beat * SAMPLE_RATE * rng.choice((0.5, 1.0, 1.0, 1.5, 2.0))))
            position = int(np.clip(position + rng.integers(-2, 3), 0, len(keys) - 1))
        return out, description


@dataclass(frozen=True)
class Strummed:
    """Chords strummed across 4-6 strings, down and up, changing every few strums."""

    curated: Presets
    noisy: Presets
    strums_per_s: tuple[float, float]

    def play(self, domain: Domain, label_id: int, rng: np.random.Generator, length: int) -> tuple[np.ndarray, str]:
        presets = self.noisy if domain.noisy else self.curated
        bank, program, description = _pick_preset(domain, presets, rng)
        period = 1.0 / _log_uniform(rng, self.strums_per_s)
        string_gap = rng.uniform(0.006, 0.03)
        loudness = int(rng.integers(60, 121))
        out, t, chord = np.zeros(length), 0, ()
        while t < length:
            if not chord or rng.random() < 0.35:
                root = int(presets.keys[rng.integers(len(presets.keys))])
                third = 3 if rng.random() < 0.4 else 4
                chord = tuple(root + i for i in (0, 7, 12, 12 + third, 19, 24)[: int(rng.integers(4, 7))])
            strings = chord if rng.random() < 0.6 else chord[::-1]  # down-strokes more often than up
            ring = period * rng.uniform(0.8, 2.0)
            for i, key in enumerate(strings):
                velocity = int(np.clip(loudness - 4 * i + rng.integers(-8, 9), 15, 127))
                start = t + int(i * string_gap * SAMPLE_RATE)
                if start < length:
                    _add(out, start, domain.font.note(bank, program, key, velocity, ring, length - start))
            t += max(1, int(period * SAMPLE_RATE * rng.uniform(0.9, 1.1)))
        return out, description


@dataclass(frozen=True)
class Percussive:
    """Hits of drum-kit keys: ``regular`` (a beat with gaps), ``bursts`` (2-5 quick hits) or ``alternate`` (tick, tock)."""

    curated: Presets
    noisy: Presets
    hits_per_s: tuple[float, float]
    pattern: str
    cents: tuple[float, float] = (0.0, 0.0)

    def play(self, domain: Domain, label_id: int, rng: np.random.Generator, length: int) -> tuple[np.ndarray, str]:
        presets = self.noisy if domain.noisy else self.curated
        bank, program, description = _pick_preset(domain, presets, rng)
        period = 1.0 / _log_uniform(rng, self.hits_per_s)
        cents = rng.uniform(*self.cents)
        loudness = int(rng.integers(60, 121))
        keys = presets.keys
        first = int(rng.integers(len(keys)))
        out, t, hit = np.zeros(length), 0, 0
        while t < length:
            n_hits = int(rng.integers(2, 6)) if self.pattern == "bursts" else 1
            gap = rng.uniform(0.09, 0.25)
            for i in range(n_hits):
                if self.pattern == "alternate":
                    key = keys[(first + hit) % len(keys)]
                else:
                    key = keys[rng.integers(len(keys))]
                hit += 1
                start = t + int(i * gap * SAMPLE_RATE * rng.uniform(0.9, 1.1))
                velocity = int(np.clip(loudness + rng.integers(-20, 21), 15, 127))
                if start < length and (self.pattern != "regular" or rng.random() > 0.15):
                    _add(out, start, domain.font.note(bank, program, key, velocity, 1.0, length - start, cents))
            jitter = 0.01 if self.pattern == "alternate" else 0.08
            t += max(1, int((period + (n_hits - 1) * gap) * SAMPLE_RATE * rng.uniform(1 - jitter, 1 + jitter)))
        return out, description


@dataclass(frozen=True)
class Texture:
    """One or two long held notes of a looped recording (applause, surf), pitched to change their density."""

    curated: Presets
    noisy: Presets

    def play(self, domain: Domain, label_id: int, rng: np.random.Generator, length: int) -> tuple[np.ndarray, str]:
        presets = self.noisy if domain.noisy else self.curated
        bank, program, description = _pick_preset(domain, presets, rng)
        out = np.zeros(length)
        for _ in range(1 + int(rng.random() < 0.5)):
            key = int(presets.keys[rng.integers(len(presets.keys))])
            velocity = int(rng.integers(60, 128))
            _add(out, 0, domain.font.note(bank, program, key, velocity, length / SAMPLE_RATE, length))
        return out, description


@dataclass(frozen=True)
class Spoken:
    """Phrases of espeak-ng voices one after another, with pauses; the noisy split speaks with other voices."""

    curated: tuple[str, ...]
    noisy: tuple[str, ...]
    pitch: tuple[int, int]
    speed: tuple[int, int]
    formant: tuple[float, float] = (1.0, 1.0)

    def play(self, domain: Domain, label_id: int, rng: np.random.Generator, length: int) -> tuple[np.ndarray, str]:
        voices = self.noisy if domain.noisy else self.curated
        out, t, descriptions = np.zeros(length), 0, []
        while t < length:
            key = (label_id, domain.split_id, int(rng.integers(PHRASES_PER_LABEL)))
            audio, description = domain.phrases.phrase(key, voices, self.pitch, self.speed, self.formant)
            skip = int(rng.integers(audio.shape[0] // 2)) if t == 0 else 0  # events start mid-sentence too
            _add(out, t, audio[skip:])
            descriptions.append(description)
            t += audio.shape[0] - skip + int(rng.uniform(0.1, 0.6) * SAMPLE_RATE)
        return out, " + ".join(dict.fromkeys(descriptions))


Style = Melodic | Strummed | Percussive | Texture | Spoken
