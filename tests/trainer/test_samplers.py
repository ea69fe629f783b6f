import dataclasses

import numpy as np
import pytest

from trainer.config import ConfigError, DataConfig
from trainer.samplers import SAMPLERS, class_balanced_weights, epoch_indices, noisy_per_epoch


def _labels(counts: list[int], n_classes: int = 4) -> np.ndarray:
    """Single-label multi-hot rows: counts[j] clips of class j."""
    rows = np.concatenate([np.full(c, j) for j, c in enumerate(counts)])
    return np.eye(n_classes, dtype=np.float32)[rows]


def test_registry_covers_every_config_choice():
    choices = next(f for f in dataclasses.fields(DataConfig) if f.name == "sampler").metadata["choices"]
    assert set(SAMPLERS) == set(choices)


def test_shuffle_is_a_permutation_of_curated():
    curated = _labels([30, 20, 0, 7])
    order = epoch_indices(DataConfig(), curated, _labels([50, 50]), np.random.default_rng(0))
    assert order.dtype == np.int64
    assert sorted(order.tolist()) == list(range(57))  # use_noisy is off: noisy clips are not visited
    assert not np.array_equal(order, np.arange(57))


def test_class_balanced_lifts_a_rare_class_to_the_common_one():
    curated = _labels([900, 100])
    rng = np.random.default_rng(0)
    cfg = DataConfig(sampler="class_balanced")
    per_class = curated[epoch_indices(cfg, curated, None, rng)].sum(axis=0)
    assert len(per_class) == 4 and per_class.sum() == 1000
    assert 0.8 < per_class[1] / per_class[0] < 1.25  # shuffle would give 1 / 9
    shuffled = curated[epoch_indices(DataConfig(), curated, None, rng)].sum(axis=0)
    assert shuffled[1] / shuffled[0] == pytest.approx(1 / 9)


def test_class_balanced_weights_by_hand():
    # class 0 is on 3 clips, class 1 on one; the last clip has no label and gets the others' mean weight.
    labels = np.array([[1, 0], [1, 0], [1, 1], [0, 0]], dtype=np.float32)
    raw = np.array([1 / 3, 1 / 3, (1 / 3 + 1) / 2, (1 / 3 + 1 / 3 + 2 / 3) / 3])
    np.testing.assert_allclose(class_balanced_weights(labels), raw / raw.sum())


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize(("ratio", "n_noisy", "expected_noisy"),
                         [(2.0, 1000, 50), (1.0, 1000, 100), (0.05, 300, 300)])
def test_curated_noisy_ratio_is_respected(sampler, ratio, n_noisy, expected_noisy):
    curated, noisy = _labels([60, 40]), _labels([n_noisy // 2, n_noisy - n_noisy // 2])
    cfg = DataConfig(use_noisy=True, curated_noisy_ratio=ratio, sampler=sampler)
    order = epoch_indices(cfg, curated, noisy, np.random.default_rng(1))
    assert noisy_per_epoch(cfg, 100, n_noisy) == expected_noisy
    assert (order >= 100).sum() == expected_noisy and (order < 100).sum() == 100
    assert order.max() < 100 + n_noisy
    if sampler == "shuffle":
        assert len(set(order.tolist())) == len(order)  # without replacement
    # Curated and noisy are interleaved, not appended.
    assert (order[: len(order) // 2] >= 100).any()


def test_noisy_is_ignored_without_use_noisy_or_when_empty():
    curated = _labels([5, 5])
    assert epoch_indices(DataConfig(use_noisy=False), curated, _labels([9]), np.random.default_rng(0)).max() < 10
    order = epoch_indices(DataConfig(use_noisy=True), curated, _labels([0]), np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(10))
    order = epoch_indices(DataConfig(use_noisy=True), curated, None, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(10))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_same_seed_same_order_and_epochs_differ(sampler):
    curated, noisy = _labels([40, 10]), _labels([100, 50])
    cfg = DataConfig(use_noisy=True, sampler=sampler)
    a = epoch_indices(cfg, curated, noisy, np.random.default_rng(7))
    b = epoch_indices(cfg, curated, noisy, np.random.default_rng(7))
    assert np.array_equal(a, b)
    rng = np.random.default_rng(7)
    assert not np.array_equal(epoch_indices(cfg, curated, noisy, rng), epoch_indices(cfg, curated, noisy, rng))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="does not match"):
        epoch_indices(DataConfig(use_noisy=True), _labels([3]), np.zeros((4, 5)), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="data.sampler='weighted'"):
        epoch_indices(dataclasses.replace(DataConfig(), sampler="weighted"), _labels([3]), None,
                      np.random.default_rng(0))
