import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from trainer.metrics import lwlrap, per_class_lwlrap


def reference_lwlrap(truth: np.ndarray, scores: np.ndarray) -> float:
    """Straight from the definition: a Python loop over every (clip, true label) pair."""
    precisions = []
    for clip_truth, clip_scores in zip(truth, scores):
        for label in np.flatnonzero(clip_truth):
            at_or_above = clip_scores >= clip_scores[label]
            precisions.append(clip_truth[at_or_above].sum() / at_or_above.sum())
    return float(np.mean(precisions))


def random_problem(seed: int, clips: int = 40, classes: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = (rng.random((clips, classes)) < 0.05).astype(np.int64)
    truth[np.arange(clips), rng.integers(0, classes, clips)] = 1  # at least one label per clip
    scores = rng.standard_normal((clips, classes))  # continuous: no ties
    return truth, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_and_sklearn(seed):
    truth, scores = random_problem(seed)
    value = lwlrap(truth, scores)
    assert value == pytest.approx(reference_lwlrap(truth, scores), abs=1e-9)
    sk = label_ranking_average_precision_score(truth, scores, sample_weight=truth.sum(1))
    assert value == pytest.approx(sk, abs=1e-9)


def test_per_class_weights_recombine_to_lwlrap():
    truth, scores = random_problem(3)
    per_class, weights = per_class_lwlrap(truth, scores)
    assert per_class.shape == weights.shape == (80,)
    assert weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(weights, truth.sum(0) / truth.sum())
    assert (per_class * weights).sum() == pytest.approx(lwlrap(truth, scores), abs=1e-12)


def test_per_class_value_for_a_single_class():
    truth = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.0, 0.5, 0.9]])
    per_class, weights = per_class_lwlrap(truth, scores)
    np.testing.assert_allclose(per_class, [(1.0 + 0.5) / 2, 0.5, 0.0])  # class 2 has no true label
    np.testing.assert_allclose(weights, [2 / 3, 1 / 3, 0.0])


def test_ties_follow_sklearn():
    rng = np.random.default_rng(4)
    truth, _ = random_problem(4, clips=30, classes=12)
    scores = rng.integers(0, 3, truth.shape).astype(float)  # many ties
    sk = label_ranking_average_precision_score(truth, scores, sample_weight=truth.sum(1))
    assert lwlrap(truth, scores) == pytest.approx(sk, abs=1e-9)
    assert lwlrap(truth, scores) == pytest.approx(reference_lwlrap(truth, scores), abs=1e-9)


def test_perfect_scores_give_one():
    truth, _ = random_problem(5)
    assert lwlrap(truth, truth + 0.01 * np.random.default_rng(0).random(truth.shape)) == pytest.approx(1.0)


def test_clips_without_true_labels_are_ignored():
    truth, scores = random_problem(6)
    empty = np.zeros((5, 80), dtype=np.int64)
    noise = np.random.default_rng(1).standard_normal((5, 80))
    padded = lwlrap(np.vstack([truth, empty]), np.vstack([scores, noise]))
    assert padded == pytest.approx(lwlrap(truth, scores), abs=1e-12)


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="no positive label"):
        lwlrap(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
        lwlrap(np.ones((2, 3)), np.zeros((2, 4)))
