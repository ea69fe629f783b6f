"""Cross-validated trials in the spec: ``[study] folds`` and its refusals, the fold configs, and the race at fold
boundaries that decides which trials pay for the next fold."""
from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.spec import SpecError, load_spec
from search.spec.strategy import FoldRacePruner, RungQuorumPruner, make_pruner
from tests.search.conftest import write_spec


def test_folds_make_one_config_per_fold_and_a_longer_curve(tmp_path):
    spec = load_spec(write_spec(tmp_path, "cv", epochs=3, study="folds = 4"))
    assert spec.folds == 4 and spec.steps == 12
    config = spec.config_for(spec.baseline_params())
    folds = [spec.fold_config(config, k) for k in range(4)]
    assert [(c.data.n_folds, c.data.val_fold) for c in folds] == [(4, 0), (4, 1), (4, 2), (4, 3)]
    assert all(c.with_overrides({"data.n_folds": None, "data.val_fold": None}) == config for c in folds)


def test_without_folds_a_trial_is_one_split_as_before(tmp_path):
    spec = load_spec(write_spec(tmp_path, "one", epochs=3))
    config = spec.config_for(spec.baseline_params())
    assert spec.folds is None and spec.steps == 3 and spec.fold_config(config, 0) is config


def test_a_change_of_folds_is_another_study(tmp_path):
    a = load_spec(write_spec(tmp_path / "a", "cv", study="folds = 3"))
    b = load_spec(write_spec(tmp_path / "b", "cv", study="folds = 5"))
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize("study, extra_base, space, message", [
    ("folds = 1", "", "", r"\[study\] folds=1: expected the curated folds each trial cross-validates \(an integer >= 2\)"),
    ("folds = 21", "", "", r"\[study\] folds=21: expected at most 20"),
    ('folds = "5"', "", "", r"\[study\] folds='5': expected"),
    ("folds = 5", '"data.full_curated" = true', "", r'\[base\] "data.full_curated": \[study\] folds = 5 deals'),
    ("folds = 5", '"data.n_folds" = 5\n"data.val_fold" = 0', "", r'\[base\] "data.n_folds"'),
    ("folds = 5", "", '"data.val_fold" = { int = [0, 4] }', r'\[space\] "data.val_fold": .* cannot be searched'),
])
def test_folds_that_cannot_work_are_one_line_naming_the_key(tmp_path, study, extra_base, space, message):
    path = write_spec(tmp_path, "bad", study=study)
    text = path.read_text().replace("[base]\n", f"[base]\n{extra_base}\n", 1)
    if space:
        text = text.replace("[space]\n", f"[space]\n{space}\n", 1)
    path.write_text(text)
    with pytest.raises(SpecError, match=message) as caught:
        load_spec(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_the_pruner_races_folds_only_when_the_spec_has_folds(tmp_path):
    assert isinstance(make_pruner({"name": "asha"}, 6, folds=3), FoldRacePruner)
    assert isinstance(make_pruner({"name": "median"}, 6, folds=3), FoldRacePruner)
    assert isinstance(make_pruner({"name": "asha"}, 6), RungQuorumPruner)
    assert isinstance(make_pruner({"name": "none"}, 6, folds=3), optuna.pruners.NopPruner)  # every trial pays all


def _study_with_boundary_values(values: list[float], step: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}
    for number, value in enumerate(values):
        study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": 0.5}, distributions=dist,
                                     intermediate_values={3: value, step: value}))
    return study


def _judge(pruner: FoldRacePruner, study: optuna.Study, steps: dict[int, float]) -> bool:
    trial = create_trial(state=TrialState.RUNNING, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                         intermediate_values=steps)
    trial.number = 999
    return pruner.prune(study, trial)


def test_at_a_fold_boundary_only_the_top_share_goes_on_once_the_quorum_is_there():
    pruner = FoldRacePruner(optuna.pruners.NopPruner(), epochs=3, folds=3, reduction_factor=2, min_trials=3)
    study = _study_with_boundary_values([0.5, 0.6, 0.7], step=6)  # three trials finished fold 1 (step 6)
    assert not _judge(pruner, study, {3: 0.1, 6: 0.65})    # 4 values, the top 2 go on: 0.7 and this 0.65
    assert _judge(pruner, study, {3: 0.9, 6: 0.55})        # 3rd of 4 at the boundary: cut, whatever fold 0 said
    assert not _judge(pruner, study, {3: 0.1, 6: 0.6})     # a tie with the last kept value goes on
    few = _study_with_boundary_values([0.9, 0.95], step=6)
    assert not _judge(pruner, few, {3: 0.1, 6: 0.1})       # no quorum yet: equal folds first


def test_inside_fold_zero_the_inner_pruner_judges_and_inside_later_folds_nobody_does():
    class Always(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    pruner = FoldRacePruner(Always(), epochs=3, folds=3, reduction_factor=2, min_trials=0)
    study = _study_with_boundary_values([0.9, 0.9, 0.9], step=6)
    assert _judge(pruner, study, {2: 0.1})                 # fold 0, epoch 2: the epoch pruner's call
    assert not _judge(pruner, study, {2: 0.1, 3: 0.95})    # the end of fold 0 is a fold boundary: raced
    assert not _judge(pruner, study, {3: 0.1, 4: 0.1})     # inside fold 1: never judged
    assert not _judge(pruner, study, {3: 0.1, 9: 0.1})     # after the last fold: the trial completes


def test_the_fold_race_has_its_own_quorum_which_defaults_to_the_rungs():
    rungs_only = make_pruner({"name": "asha", "min_trials": 4}, 3, folds=3)
    own = make_pruner({"name": "asha", "min_trials": 4, "fold_min_trials": 1}, 3, folds=3)
    assert (rungs_only.min_trials, own.min_trials) == (4, 1)
    baseline_only = _study_with_boundary_values([0.7], step=3)  # the baseline alone finished fold 0
    assert not _judge(rungs_only, baseline_only, {3: 0.6})      # quorum 4 not there: a worse trial pays fold 1
    assert _judge(own, baseline_only, {3: 0.6})                 # quorum 1: behind the baseline, it stops
    assert not _judge(own, baseline_only, {3: 0.8})             # ahead of it, it goes on
    with pytest.raises(ValueError, match="fold_min_trials=-1"):
        make_pruner({"name": "asha", "fold_min_trials": -1}, 3, folds=3)
