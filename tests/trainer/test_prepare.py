"""prepare_data: cache fill and bank packing reported as they happen, banks shared through the cache, placement."""
import re

import numpy as np
import torch

from trainer import progress, train_and_evaluate
from trainer.batches import FeatureBank
from trainer.data import load_splits, read_labelled_csv
from trainer.feature_cache import load_features
from trainer.prepare import labelled_bank, prepare_data, split_indices

CPU = torch.device("cpu")


def test_filling_and_packing_report_progress_then_the_placement(demo_data, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # a line per clip instead of one every 5 s
    config = tiny_config.with_overrides({"data.use_noisy": True})
    lines = []
    data = prepare_data(config, demo_data, device=CPU, cache_dir=tmp_path, progress=False, status=lines.append)
    assert any(re.fullmatch(r"log-mel train_curated: computing (\d+) of \1 clips \(\d+ process(es)?\)", line)
               for line in lines)
    assert any(re.fullmatch(r"log-mel train_noisy: \d+/\d+ clips \(\d+%\), [\d.,]+ clips/s, ETA (\d+m)?\d+s", line)
               for line in lines)
    assert any(re.fullmatch(r"log-mel train_noisy: \d+ clips computed in \d+s \([\d.,]+ clips/s\)", line)
               for line in lines)
    assert any(re.fullmatch(r"packing train bank: \d+/\d+ MB \(\d+%\), ETA \d+s", line) for line in lines)
    assert any(re.fullmatch(r"val bank packed: \d+ [kM]B, \d+ clips in \d+s", line) for line in lines)
    assert lines[-1] == data.placement
    assert re.fullmatch(r"train bank \d+ MB and val bank \d+ [kM]B: memory-mapped from the cache, "
                        r"shared by every process on this box \(cpu\)", data.placement)

    again = []  # warm: nothing to compute or pack, only where the banks went
    prepare_data(config, demo_data, device=CPU, cache_dir=tmp_path, progress=False, status=again.append)
    assert again == [data.placement]


def test_prepared_banks_hold_exactly_the_clips_an_in_memory_bank_would(demo_data, tiny_config, tmp_path):
    config = tiny_config.with_overrides({"data.use_noisy": True})
    data = prepare_data(config, demo_data, device=CPU, cache_dir=tmp_path, progress=False)
    curated, noisy = load_splits(demo_data, use_noisy=True)
    train_idx, val_idx = split_indices(config, curated)
    def load(paths):
        return load_features(list(paths), config.features, cache_dir=tmp_path, progress=False).arrays
    expected_val = FeatureBank.from_arrays(load(curated.paths[i] for i in val_idx), normalize="clip")
    expected_train = FeatureBank.from_arrays(load([curated.paths[i] for i in train_idx] + list(noisy.paths)),
                                             normalize="clip")
    for bank, expected in ((data.val_bank, expected_val), (data.train_bank, expected_train)):
        for name in ("frames", "offsets", "lengths", "mean", "std", "floor"):
            assert torch.equal(getattr(bank, name), getattr(expected, name)), name
    assert data.train_is_noisy.sum().item() == len(noisy) and len(data.train_targets) == len(data.train_bank)
    np.testing.assert_array_equal(data.val_targets, curated.targets[val_idx])


def test_a_labelled_test_split_gets_the_bank_and_targets_an_in_memory_bank_would(demo_data, tiny_config, tmp_path):
    table = read_labelled_csv(demo_data / "test_labels.csv", demo_data / "test")
    bank, targets = labelled_bank(table, tiny_config.features, cache_dir=tmp_path)
    arrays = load_features(list(table.paths), tiny_config.features, cache_dir=tmp_path, progress=False).arrays
    expected = FeatureBank.from_arrays(arrays, normalize="clip")
    for name in ("frames", "offsets", "lengths", "mean", "std", "floor"):
        assert torch.equal(getattr(bank, name), getattr(expected, name)), name
    assert targets.dtype == np.float64
    np.testing.assert_array_equal(targets, table.targets)
    assert len(bank) == len(table) > 0


def test_another_validation_split_is_another_bank(demo_data, tiny_config, tmp_path):
    first = prepare_data(tiny_config, demo_data, device=CPU, cache_dir=tmp_path, progress=False)
    second = prepare_data(tiny_config.with_overrides({"data.split_seed": 1}), demo_data, device=CPU,
                          cache_dir=tmp_path, progress=False)
    assert len(list((tmp_path / "features").glob("*/banks/*.bank"))) == 4
    assert not torch.equal(first.val_bank.lengths, second.val_bank.lengths)


def test_training_passes_status_lines_through(demo_data, tiny_config, tmp_path):
    lines = []
    train_and_evaluate(tiny_config.with_overrides({"optim.epochs": 1}), demo_data, workdir=tmp_path / "run",
                       threads=1, progress=False, verbose=False, status=lines.append)
    assert any("memory-mapped from the cache" in line for line in lines)


def test_banks_that_fit_the_device_share_move_there_and_larger_ones_feed_it_from_the_host(demo_data, tiny_config,
                                                                                        tmp_path, monkeypatch):
    import trainer.prepare as prepare_module
    from trainer.prepare import place_banks

    data = prepare_data(tiny_config, demo_data, device=CPU, cache_dir=tmp_path, progress=False)
    train, val = data.train_bank, data.val_bank
    device = torch.device("meta")  # stands in for a GPU: tensors "move" there without memory
    monkeypatch.setattr(prepare_module, "_free_device_bytes", lambda device: 2 * (train.nbytes + val.nbytes))
    on_device, also_on_device, line = place_banks(train, val, device, 0.5)
    assert on_device.frames.device == device and also_on_device.frames.device == device
    assert line == f"train bank {progress.byte_size(train.nbytes)} on meta; val bank {progress.byte_size(val.nbytes)} on meta"

    monkeypatch.setattr(prepare_module, "_free_device_bytes", lambda device: 2 * val.nbytes + train.nbytes)
    fed, small, line = place_banks(train, val, device, 0.5)
    assert fed.host_mapped and fed.frames.device == CPU and fed.device == device and fed.mean.device == device
    assert small.frames.device == device
    assert line.startswith(f"train bank {progress.byte_size(train.nbytes)} stays memory-mapped on the host: "
                           f"pinned-memory batches; val bank")
