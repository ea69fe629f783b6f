"""The data memory plan (exact bank sizes from wav headers) and the one-line refusal when a box cannot hold it."""
import pytest
import torch

from trainer.config import TrainConfig
from trainer.memory import DataMemory, check_fits, largest_data_config, plan_data_memory
from trainer.prepare import prepare_data


def test_the_plan_predicts_the_bank_files_to_the_byte(demo_data, tiny_config, tmp_path):
    config = tiny_config.with_overrides({"data.use_noisy": True})
    plan = plan_data_memory(config, demo_data)
    data = prepare_data(config, demo_data, device=torch.device("cpu"), cache_dir=tmp_path, progress=False)
    sizes = sorted(p.stat().st_size for p in (tmp_path / "features").glob("*/banks/*.bank"))
    assert sizes == sorted([plan.train_bank_bytes, plan.val_bank_bytes])
    assert (plan.train_clips, plan.val_clips) == (len(data.train_bank), len(data.val_bank))
    curated_only = plan_data_memory(tiny_config, demo_data)
    assert curated_only.train_bank_bytes < plan.train_bank_bytes / 1.5 and not curated_only.use_noisy


NOISY_128 = DataMemory(train_bank_bytes=14_100_000_000, val_bank_bytes=400_000_000, per_pane_bytes=300_000_000,
                       train_clips=23_791, val_clips=994, n_mels=128, use_noisy=True)


def test_refusal_names_the_numbers_and_what_to_change():
    assert check_fits(NOISY_128, panes=4, available_bytes=9_100_000_000) == (
        "the data of this trial needs 15.7 GB (train bank 14.1 GB: noisy at 128 mels, shared by all panes; "
        "val bank 400 MB, 4 panes x 300 MB) per box and 9.1 GB are available; "
        "use fewer mels, data.use_noisy = false, or fewer panes")
    curated = DataMemory(2_000_000_000, 400_000_000, 100_000_000, 3_976, 994, 64, False)
    assert check_fits(curated, panes=1, available_bytes=1_000_000_000) == (
        "the data of this trial needs 2.5 GB (train bank 2.0 GB: curated at 64 mels, shared by all panes; "
        "val bank 400 MB) per box and 1.0 GB are available; use fewer mels")


def test_panes_share_the_banks():
    # 4 panes need the banks once: far from 4x one pane, so a box that holds one holds four.
    assert NOISY_128.needed_bytes(4) < 1.1 * NOISY_128.needed_bytes(1)
    assert check_fits(NOISY_128, panes=1, available_bytes=16_000_000_000) is None
    assert check_fits(NOISY_128, panes=4, available_bytes=16_000_000_000) is None
    with pytest.raises(ValueError, match="panes=0"):
        check_fits(NOISY_128, panes=0, available_bytes=1)


def test_the_largest_data_of_a_space_takes_most_mels_smallest_hop_and_noisy_clips():
    config = largest_data_config(TrainConfig(), {
        "features.n_mels": [64, 96, 128], "features.hop": [220, 347, 441], "data.use_noisy": [False, True],
        "optim.lr": (1e-4, 3e-3)})
    assert (config.features.n_mels, config.features.hop, config.data.use_noisy) == (128, 220, True)
    assert largest_data_config(TrainConfig(), {"features.n_mels": (32, 256)}).features.n_mels == 256
    assert largest_data_config(TrainConfig(), {"data.use_noisy": [False]}).data.use_noisy is False


@pytest.mark.parametrize("rate, channels, subtype", [(44100, 1, "PCM_16"), (22050, 2, "PCM_24"), (48000, 1, "FLOAT")])
def test_frames_from_the_header_match_the_cached_features(tmp_path, rate, channels, subtype):
    import numpy as np
    import soundfile as sf

    from trainer.feature_cache import load_features
    from trainer.memory import _frames

    path = tmp_path / "clip.wav"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, (int(0.73 * rate), channels)), rate, subtype=subtype)
    cfg = TrainConfig().features
    (array,) = load_features([path], cfg, cache_dir=tmp_path / "cache", progress=False).arrays
    assert _frames(path, cfg) == array.shape[1]
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    assert _frames(tmp_path / "junk.wav", cfg) == 0
