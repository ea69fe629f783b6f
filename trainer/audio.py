"""Read one audio clip as float32 mono at a fixed sample rate (WAV PCM16/24/float, any channel count)."""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf


class AudioReadError(Exception):
    """A clip that cannot be used: missing, not decodable, or empty; the message names file and reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def read_audio(path_or_bytes: str | os.PathLike | bytes, sample_rate: int, *, name: str | None = None) -> np.ndarray:
    """Decode a file (or its bytes) to a float32 mono waveform at ``sample_rate``.

    Stereo is mixed down by averaging channels; other rates are resampled (soxr_hq). ``name`` labels
    error messages when decoding bytes. Raises AudioReadError for unreadable or empty (0-sample) clips.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        source: io.BytesIO | str = io.BytesIO(bytes(path_or_bytes))
    else:
        label = name or str(path_or_bytes)
        source = str(Path(path_or_bytes))
        if not os.path.exists(source):
            raise AudioReadError(label, "file not found")
        if not os.path.isfile(source):
            raise AudioReadError(label, "not a regular file")
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.SoundFileError, OSError, RuntimeError) as exc:
        raise AudioReadError(label, _decode_failure(exc)) from None
    if data.shape[0] == 0:
        raise AudioReadError(label, "empty audio (0 samples)")
    if not np.isfinite(data).all():
        # Float WAVs can hold NaN/inf; one such sample would turn the whole log-mel and then the
        # network's loss into NaN, which would look like a diverged learning rate, not a broken file.
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise AudioReadError(label, f"{bad} NaN or infinite sample(s) in the audio data")
    wave = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)
    if rate != sample_rate:
        wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(wave, dtype=np.float32)


def _decode_failure(exc: Exception) -> str:
    """libsndfile's reason in words a user can act on (its own text says "Error opening '<path>': ...")."""
    reason = re.sub(r"^Error opening (?:'[^']*'|<[^>]*>): ", "", str(exc)).strip().rstrip(".") or type(exc).__name__
    if "possibly a pipe" in reason or "internal error" in reason.lower() or "chunk" in reason.lower():
        return f"corrupt or truncated audio file (libsndfile: {reason})"
    return f"not a readable audio file ({reason})"
