"""Spoken phrases from espeak-ng, rendered once per (label, split, phrase number) and kept in memory.

espeak-ng is a formant synthesiser, not a recording, but its voices differ in pitch, timbre, accent and
breathiness the way speakers do, and its output is a deterministic function of (voice, pitch, speed, text).
A child-like voice is a high-pitched voice whose formants are raised too, by playing it faster.
"""
from __future__ import annotations

import subprocess
from fractions import Fraction

import numpy as np

from trainer.synth.dsp import SAMPLE_RATE

# Words of everyday speech; a phrase is 3-9 of them, so phrases differ in length, rhythm and phonemes.
WORDS = tuple("""
the a this that we you they it is was are were be have has had do did will would can could should
time people year day way man woman child world life hand part place case week company system program
question work government number night point home water room mother area money story fact month lot
right study book eye job word business issue side kind head house service friend father power hour
game line end member law car city community name president team minute idea kid body information back
parent face others level office door health person art war history party result change morning reason
research girl guy moment air teacher force education good new first last long great little own other
old big high different small large next early young important few public bad same able go make know
take see come think look want give use find tell ask seem feel try leave call keep let begin show hear
play run move like live believe bring happen write provide sit stand lose pay meet include continue
""".split())


class SpeechError(RuntimeError):
    """espeak-ng ran but did not produce a phrase; the message holds its command and stderr."""


def speak(executable: str, voice: str, pitch: int, speed: int, text: str, formant: float = 1.0) -> np.ndarray:
    """``text`` in ``voice`` as float64 at SAMPLE_RATE; ``formant`` > 1 raises pitch and formants together."""
    command = [executable, "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", text]
    run = subprocess.run(command, capture_output=True, check=False)
    rate, pcm = _parse_wav(run.stdout)
    if run.returncode != 0 or pcm.size == 0:
        raise SpeechError(f"{' '.join(command)!r} exited {run.returncode} with {pcm.size} samples: "
                          f"{run.stderr.decode(errors='replace').strip()}")
    from scipy.signal import resample_poly  # slow to import; only this set needs it

    # Playing the phrase ``formant`` times faster is resampling it from rate * formant to SAMPLE_RATE.
    ratio = Fraction(SAMPLE_RATE) / Fraction(round(rate * formant))
    ratio = ratio.limit_denominator(64)
    return resample_poly(pcm / 32768.0, ratio.numerator, ratio.denominator)


def _parse_wav(data: bytes) -> tuple[int, np.ndarray]:
    """(sample rate, int16 samples) of espeak-ng's streamed WAV, whose size fields are placeholders."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return SAMPLE_RATE, np.zeros(0, dtype=np.int16)
    rate = int.from_bytes(data[24:28], "little")
    start = data.find(b"data", 12) + 8
    body = data[start : start + (len(data) - start) // 2 * 2]
    return rate, np.frombuffer(body, dtype="<i2")


class PhraseBank:
    """Phrases rendered on first use; phrase ``k`` of a (label, split) depends on nothing but its key and the seed."""

    def __init__(self, executable: str, seed: int) -> None:
        self.executable = executable
        self.seed = seed
        self._phrases: dict[tuple, tuple[np.ndarray, str]] = {}

    def phrase(self, key: tuple[int, ...], voices: tuple[str, ...], pitch: tuple[int, int], speed: tuple[int, int],
               formant: tuple[float, float]) -> tuple[np.ndarray, str]:
        """(audio, description) of the phrase ``key`` (label id, split id, phrase number) spoken as specified."""
        if key not in self._phrases:
            rng = np.random.default_rng([self.seed, 7, *key])
            voice = voices[rng.integers(len(voices))]
            p, s = int(rng.integers(pitch[0], pitch[1] + 1)), int(rng.integers(speed[0], speed[1] + 1))
            f = round(float(rng.uniform(*formant)), 3)
            text = " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=int(rng.integers(3, 10))))
            audio = speak(self.executable, voice, p, s, text, f)
            self._phrases[key] = (audio, f"espeak-ng {voice} p{p} s{s}" + (f" x{f:g}" if f != 1.0 else ""))
        return self._phrases[key]
