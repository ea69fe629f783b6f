"""The search strategy: startup near the baseline, explicit sampler settings, a pruner that waits for a quorum."""
from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.spec import load_spec
from search.spec.strategy import RungQuorumPruner, make_sampler
from search.study.join import join_study
from search.study.storage import default_storage_url, open_storage
from tests.search.conftest import write_spec

STUDIES = Path(__file__).resolve().parents[2] / "studies"


@pytest.mark.parametrize("name", ["demo", "fat2019"])
def test_startup_points_change_one_or_two_knobs_of_the_baseline(name):
    spec = load_spec(STUDIES / f"{name}.toml")
    baseline = spec.baseline_params()
    points = spec.startup_points()
    assert len(points) == spec.startup["near_baseline"]
    knobs_seen = set()
    for params, changed in points:
        differing = {k for k in params if params[k] != baseline.get(k)} | (set(baseline) - set(params))
        assert 1 <= len(changed) <= spec.startup["max_changes"]
        assert set(changed) <= differing  # every named knob really changed
        # the rest is the baseline, apart from knobs a change switched off (conditional params)
        assert differing - set(changed) <= {p.key for p in spec.space if p.when}
        spec.config_for(params)  # a valid config
        knobs_seen.update(changed)
    assert len(knobs_seen) >= len(points)  # they explore different knobs, not one knob again and again
    assert spec.startup_points() == points  # deterministic


def test_the_creator_queues_baseline_then_startup_points_once(tmp_path):
    studies = tmp_path / "studies"
    spec = load_spec(write_spec(studies, "start", startup="near_baseline = 3\nmax_changes = 1\nseed = 4"))
    url = default_storage_url("start", studies)
    study = join_study(open_storage(url), spec)
    join_study(open_storage(url), spec)  # a second worker joins: nothing is queued again
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 4 and waiting[0].user_attrs == {"baseline": True}
    assert [t.user_attrs["startup"] for t in waiting[1:]] == [", ".join(c) for _, c in spec.startup_points()]
    trial = study.ask()  # the queue is taken in order: the baseline first
    assert spec.suggest(trial) == spec.baseline_params()


def test_sampler_settings_come_from_the_spec_not_library_defaults(tmp_path, monkeypatch):
    seen = {}

    class Recording(optuna.samplers.RandomSampler):
        def __init__(self, **kwargs):
            seen.update(kwargs)
            super().__init__(seed=kwargs.get("seed"))

    monkeypatch.setattr(optuna.samplers, "TPESampler", Recording)
    make_sampler({"name": "tpe", "seed": 3, "group": False})
    assert seen == {"seed": 3, "n_startup_trials": 10, "multivariate": True, "group": False, "constant_liar": True}
    assert isinstance(make_sampler({"name": "gp", "seed": 1}), optuna.samplers.GPSampler)


def _report(study: optuna.Study, values: list[float], pruner: optuna.pruners.BasePruner) -> tuple[int, bool]:
    """Report ``values`` epoch by epoch; returns the epoch reached and whether it was pruned there."""
    trial = study.ask()
    for epoch, value in enumerate(values, start=1):
        trial.report(value, epoch)
        if pruner.prune(study, study.get_trials(deepcopy=False)[trial.number]):
            study.tell(trial, state=TrialState.PRUNED)
            return epoch, True
    study.tell(trial, max(values))
    return len(values), False


def test_no_prune_decision_at_a_rung_before_the_quorum_reached_it():
    inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    pruner = RungQuorumPruner(inner, min_trials=3)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    assert _report(study, [0.9, 0.9, 0.9], pruner) == (3, False)
    # a slow starter: plain ASHA cuts it at epoch 1 against the single trial ahead of it
    assert _report(study, [0.1, 0.5, 0.95], pruner) == (3, False)
    assert _report(study, [0.8, 0.8, 0.8], pruner) == (3, False)
    # three trials have reached epoch 1 now: the quorum lets ASHA decide
    assert _report(study, [0.05, 0.05, 0.05], pruner) == (1, True)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_quorum_counts_running_trials_that_reached_the_epoch():
    pruner = RungQuorumPruner(AlwaysPrune(), min_trials=1)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    running = study.ask()
    trial = study.ask()
    trial.report(0.1, 1)
    assert not pruner.prune(study, study.get_trials(deepcopy=False)[trial.number])
    running.report(0.9, 1)  # another trial, still running, has reached epoch 1
    assert pruner.prune(study, study.get_trials(deepcopy=False)[trial.number])


@pytest.mark.parametrize("name", ["demo", "quickstart", "fat2019"])
def test_a_shipped_specs_sampler_is_made_without_an_experimental_warning(name):
    """``search.report`` on a study with no complete trial printed Optuna's ExperimentalWarning for TPE's ``group``."""
    spec = load_spec(Path(__file__).parents[2] / "studies" / f"{name}.toml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec.make_sampler()
    assert [str(w.message) for w in caught] == []
