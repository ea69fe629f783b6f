import librosa
import numpy as np
import pytest
import torch

from trainer.config import FeatureConfig
from trainer.features import LogMel, frame_count

SR = 44100
# float32 STFT rounding: librosa and torch differ by ~3e-5 dB on these clips; 1e-3 dB leaves margin
# while still catching any real difference (window, padding, filter bank, dB floor).
DB_TOL = 1e-3
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # the same module runs on both


def sine_plus_noise(seconds: float = 0.6, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * noise).astype(np.float32)


def librosa_logmel(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop,
                                         n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax, power=cfg.power)
    if cfg.power == 1.0:
        return librosa.amplitude_to_db(mel, top_db=cfg.top_db)
    return librosa.power_to_db(mel, top_db=cfg.top_db)


@pytest.mark.parametrize("cfg", [
    FeatureConfig(),
    FeatureConfig(top_db=None),
    FeatureConfig(n_fft=1024, hop=256, n_mels=40, fmin=50.0, fmax=16000.0),
    FeatureConfig(power=1.0),
], ids=["baseline", "no_floor", "other_bank", "amplitude"])
@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_logmel_matches_librosa(cfg, device):
    y = sine_plus_noise()
    ours = LogMel(cfg).to(device)(torch.from_numpy(y).to(device)).cpu().numpy()
    expected = librosa_logmel(y, cfg)
    assert ours.shape == expected.shape == (cfg.n_mels, frame_count(y.size, cfg.hop))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=DB_TOL)


def test_top_db_floor_is_per_clip():
    cfg = FeatureConfig(top_db=30.0)
    loud, quiet = sine_plus_noise(seed=1), sine_plus_noise(seed=2) * 1e-3
    out = LogMel(cfg)(torch.from_numpy(np.stack([loud, quiet]))).numpy()
    for clip in out:
        assert clip.max() - clip.min() == pytest.approx(30.0, abs=1e-4)
    assert out[0].max() - out[1].max() == pytest.approx(60.0, abs=0.1)  # 1e-3 amplitude = -60 dB


def test_batch_equals_single_and_log_scale():
    cfg = FeatureConfig(scale="log", n_mels=32)
    module = LogMel(cfg)
    a, b = sine_plus_noise(seed=3), sine_plus_noise(seed=4)
    batch = module(torch.from_numpy(np.stack([a, b])))
    assert batch.shape == (2, 32, frame_count(a.size, cfg.hop))
    torch.testing.assert_close(batch[1], module(torch.from_numpy(b)))
    mel = librosa.feature.melspectrogram(y=a, sr=SR, n_fft=cfg.n_fft, hop_length=cfg.hop, n_mels=32, fmin=cfg.fmin)
    np.testing.assert_allclose(batch[0].numpy(), np.log(mel + 1e-6), atol=1e-3)


@pytest.mark.parametrize("n_samples, hop, frames", [(661500, 220, 3007), (220, 220, 2), (219, 220, 1), (1, 220, 1)])
def test_frame_count_formula(n_samples, hop, frames):
    assert frame_count(n_samples, hop) == frames
    cfg = FeatureConfig(hop=hop, n_fft=512)
    assert LogMel(cfg)(torch.ones(n_samples) * 0.1).shape[-1] == frames


def test_buffers_follow_device_but_not_checkpoints():
    module = LogMel(FeatureConfig())
    assert module.state_dict() == {}
    assert module.to(torch.float64).mel_basis.dtype == torch.float64
    assert module.mel_basis.shape == (64, 1764 // 2 + 1)


def test_bad_waveform_shape_is_reported():
    with pytest.raises(ValueError, match=r"\(T,\) or \(B, T\), got \(1, 2, 3\)"):
        LogMel(FeatureConfig())(torch.zeros(1, 2, 3))
