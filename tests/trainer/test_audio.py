import numpy as np
import pytest
import soundfile as sf

from trainer.audio import AudioReadError, read_audio

SR = 44100


def tone(seconds: float = 0.25, freq: float = 440.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("subtype, tol", [("PCM_16", 1e-4), ("PCM_24", 1e-6), ("FLOAT", 0.0)])
def test_reads_mono_in_every_sample_format(tmp_path, subtype, tol):
    path = tmp_path / f"clip_{subtype}.wav"
    sf.write(path, tone(), SR, subtype=subtype)
    wave = read_audio(path, SR)
    assert wave.dtype == np.float32 and wave.ndim == 1
    np.testing.assert_allclose(wave, tone(), atol=tol)


def test_stereo_is_mixed_by_mean(tmp_path):
    left, right = tone(freq=440.0), tone(freq=660.0) * 0.5
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), SR, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(tmp_path / "stereo.wav", SR), (left + right) / 2, atol=1e-7)


@pytest.mark.slow
def test_other_rates_are_resampled(tmp_path):
    sf.write(tmp_path / "low.wav", tone(seconds=0.5, freq=1000.0, sr=22050), 22050, subtype="FLOAT")
    wave = read_audio(tmp_path / "low.wav", SR)
    assert wave.shape == (SR // 2,)
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) * SR / wave.size == pytest.approx(1000.0, abs=2.0)


def test_bytes_input_matches_path_input(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, tone(), SR, subtype="PCM_16")
    np.testing.assert_array_equal(read_audio(path.read_bytes(), SR), read_audio(path, SR))


def test_empty_clip_is_unreadable(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(AudioReadError, match=r"empty\.wav: empty audio \(0 samples\)"):
        read_audio(path, SR)


def test_garbage_and_missing_files_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio" * 10)
    with pytest.raises(AudioReadError, match=r"garbage\.wav: not a readable audio file") as info:
        read_audio(garbage, SR)
    assert info.value.reason.startswith("not a readable audio file")
    with pytest.raises(AudioReadError, match=r"missing\.wav: file not found"):
        read_audio(tmp_path / "missing.wav", SR)
    with pytest.raises(AudioReadError, match=r"^upload\.wav: not a readable"):
        read_audio(b"junk", SR, name="upload.wav")
