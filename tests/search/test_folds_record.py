"""The record of a cross-validated trial: fold file names in the artifact store, and the out-of-fold predictions
pooled over the folds done, written in the format every consumer of validation predictions reads."""
from __future__ import annotations

import numpy as np
import pytest

from search.study.artifacts import TrialFiles, open_artifact_store
from search.study.folds import OOF_EPOCH, fold_file, parse_fold_file, pool_folds
from trainer import DataError, lwlrap, split_identity


def _fold_predictions(tmp_path, fold, fnames, probs, score):
    path = tmp_path / f"fold{fold}.npz"
    np.savez(path, probs=np.asarray(probs, dtype=np.float16), fnames=np.array(fnames), split=np.array("x"),
             epoch=np.array(3), lwlrap=np.array(score))
    return path


def _targets():
    eye = np.eye(4, dtype=np.float32)
    return {"a.wav": eye[0], "b.wav": eye[1], "c.wav": eye[2], "d.wav": eye[3]}


def test_fold_file_names_round_trip_and_only_fold_files_are_fold_files():
    assert fold_file(2, "best.pth") == "fold2-best.pth"
    assert parse_fold_file("fold12-val_predictions.npz") == (12, "val_predictions.npz")
    assert parse_fold_file("best.pth") is None and parse_fold_file("fold1-notes.txt") is None
    with pytest.raises(ValueError):
        fold_file(0, "config.json")


def test_fold_files_go_to_and_come_from_the_artifact_store(tmp_path):
    files = TrialFiles(open_artifact_store(tmp_path / "store"), "uid")
    source = tmp_path / "best.pth"
    source.write_bytes(b"weights of fold 1")
    files.push(7, source, fold_file(1, "best.pth"))
    assert files.has(7, "fold1-best.pth") and not files.has(7, "best.pth")
    pulled = files.pull(7, "fold1-best.pth", tmp_path / "work", as_name="best.pth")
    assert pulled == tmp_path / "work" / "best.pth" and pulled.read_bytes() == b"weights of fold 1"
    with pytest.raises(ValueError, match="not a trial file"):
        files.push(7, source, "fold1-notes.txt")


def test_out_of_fold_predictions_pool_clips_not_scores(tmp_path):
    targets = _targets()
    # fold 0 ranks its clips perfectly but with low scores; fold 1 perfectly with high scores: each fold's own
    # lwlrap is 1, and pooled over the clips the ranking of a label across folds still holds.
    fold0 = _fold_predictions(tmp_path, 0, ["a.wav", "b.wav"], [[0.2, 0.1, 0.0, 0.0], [0.1, 0.2, 0.0, 0.0]], 1.0)
    fold1 = _fold_predictions(tmp_path, 1, ["c.wav", "d.wav"], [[0.0, 0.0, 0.9, 0.8], [0.0, 0.0, 0.8, 0.9]], 1.0)
    oof = pool_folds([fold0, fold1], targets)
    assert oof.fnames == ["a.wav", "b.wav", "c.wav", "d.wav"] and oof.fold_of.tolist() == [0, 0, 1, 1]
    assert oof.fold_lwlrap == [1.0, 1.0] and oof.fold_mean == 1.0 and oof.fold_spread == 0.0
    expected = lwlrap(np.stack([targets[f] for f in oof.fnames]), oof.probs.astype(np.float64))
    assert oof.lwlrap == pytest.approx(expected) and oof.lwlrap == pytest.approx(1.0)
    worse = _fold_predictions(tmp_path, 1, ["c.wav", "d.wav"], [[0.0, 0.0, 0.8, 0.9], [0.0, 0.0, 0.9, 0.8]], 0.5)
    mixed = pool_folds([fold0, worse], targets)
    assert mixed.lwlrap < 1.0 and mixed.fold_mean == 0.75 and mixed.fold_spread == 0.25


def test_pooled_predictions_are_written_as_a_trials_validation_predictions(tmp_path):
    targets = _targets()
    fold0 = _fold_predictions(tmp_path, 0, ["b.wav", "a.wav"], np.eye(4)[[1, 0]] * 0.5, 1.0)
    oof = pool_folds([fold0], targets)
    oof.save(tmp_path / "val_predictions.npz")
    with np.load(tmp_path / "val_predictions.npz") as stored:
        assert [str(f) for f in stored["fnames"]] == ["b.wav", "a.wav"]
        assert str(stored["split"]) == split_identity(["b.wav", "a.wav"], np.stack([targets["b.wav"], targets["a.wav"]]))
        assert int(stored["epoch"]) == OOF_EPOCH and float(stored["lwlrap"]) == pytest.approx(oof.lwlrap)
        assert stored["fold"].tolist() == [0, 0]


def test_folds_that_overlap_or_name_unknown_clips_are_refused(tmp_path):
    targets = _targets()
    fold0 = _fold_predictions(tmp_path, 0, ["a.wav", "b.wav"], np.zeros((2, 4)), 0.5)
    again = _fold_predictions(tmp_path, 1, ["b.wav"], np.zeros((1, 4)), 0.5)
    with pytest.raises(DataError, match="overlap"):
        pool_folds([fold0, again], targets)
    stranger = _fold_predictions(tmp_path, 1, ["z.wav"], np.zeros((1, 4)), 0.5)
    with pytest.raises(DataError, match="lacks validation clip"):
        pool_folds([fold0, stranger], targets)


def test_views_show_a_cross_validated_trials_fold_and_its_folds_values():
    from search.study.folds import cv_summary, fold_position, progress_text
    from search.views.notes import trial_note
    from trainer import TrainConfig

    attrs = {"folds": 5, "epochs_run": 39, "folds_done": 1, "fold_lwlrap": [0.7], "oof_lwlrap": 0.7}
    assert fold_position(attrs, 30) == (2, 9, 5) and progress_text(attrs, 30) == "f2/5 9/30"
    assert progress_text({"epochs_run": 9}, 30) == "9/30"  # one split: as before
    assert fold_position({"folds": 5, "epochs_run": 150}, 30) == (5, 30, 5)  # the last fold done
    done = {**attrs, "folds_done": 3, "fold_lwlrap": [0.70, 0.72, 0.69], "oof_lwlrap": 0.7123}
    assert cv_summary(done) == ("out-of-fold lwlrap 0.7123 over 3/5 folds (per fold 0.700 0.720 0.690, "
                                "spread 0.012)")
    assert cv_summary({"epochs_run": 3}) is None
    config = TrainConfig().with_overrides({"optim.epochs": 30})
    note = trial_note(4, "PRUNED", config, config, {**done, "epochs_run": 90})
    assert "epochs: 90 of 150 (5 folds of 30)" in note and "Cross-validation: out-of-fold lwlrap 0.7123" in note


def test_the_trial_note_says_how_the_inference_cost_was_timed_and_for_how_many_models():
    from search.views.notes import trial_note
    from trainer import TrainConfig

    config = TrainConfig()
    attrs = {"kernel_time_s": 120.0, "feasible": True, "kernel_models": 5, "inference_cost_method": "cpu-time-1-thread"}
    note = trial_note(3, "COMPLETE", config, config, attrs)
    assert "projected 120 s for the test set per model, 5 fold models, fits the budget" in note
    assert "one CPU thread's compute time" in note
    old = trial_note(3, "COMPLETE", config, config, {"kernel_time_s": 120.0, "feasible": True})
    assert "projected 120 s for the test set, fits the budget (inference timed by wall time (recorded before" in old


def test_the_best_from_a_list_just_read_is_the_studys_best_feasible_trial():
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from search.study.record import best_trial, ranked_trials, trials_keeping_weights
    study = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}
    for value, violation in [(0.5, -1.0), (0.9, 1.0), (0.7, -1.0), (0.7, -1.0)]:  # 0.9 is over the budget
        study.add_trial(create_trial(value=value, params={"x": 0.5}, distributions=dist, state=TrialState.COMPLETE,
                                     system_attrs={"constraints:kernel_time": violation}))
    trials = study.get_trials(deepcopy=False)
    assert best_trial(study, trials).number == best_trial(study).number == 2
    assert [t.number for t in ranked_trials(study, trials)] == [t.number for t in ranked_trials(study)]
    assert trials_keeping_weights(study, 1, trials) == trials_keeping_weights(study, 1) == {0, 2}
    assert best_trial(study, []) is None
