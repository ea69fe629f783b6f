"""Proposals that stack what helped: the changes that beat the baseline at the same step, stacked onto it once the
startup trials are done, with leave-one-out neighbours; queued once each."""
from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from search.spec import load_spec
from search.spec.strategy import stacked_points, winning_changes
from search.study.stacking import STACKED_ATTR, queue_stacked_points
from tests.search.conftest import write_spec

DISTS = {"a": CategoricalDistribution([0, 1]), "b": CategoricalDistribution([0, 1]),
         "c": FloatDistribution(0.0, 1.0), "d": CategoricalDistribution([0, 1])}
BASE = {"a": 0, "b": 0, "c": 0.5, "d": 0}


def _trial(number, params, values, state=TrialState.PRUNED, **attrs):
    trial = create_trial(state=state, params={**BASE, **params}, distributions=DISTS, intermediate_values=values,
                         value=max(values.values()) if state == TrialState.COMPLETE else None, user_attrs=attrs)
    trial.number = number
    return trial


def test_a_change_wins_when_it_beat_the_baseline_at_the_last_step_both_reported():
    baseline = _trial(0, {}, {3: 0.50, 9: 0.60, 27: 0.70}, TrialState.COMPLETE, baseline=True)
    trials = [baseline,
              _trial(1, {"a": 1}, {3: 0.55}),                 # cut at epoch 3, but ahead of the baseline there
              _trial(2, {"b": 1}, {3: 0.60, 9: 0.58}),        # ahead at 3, behind at 9: judged at 9, lost
              _trial(3, {"c": 0.9, "d": 1}, {3: 0.51}),       # two changes that came together win together
              _trial(4, {"c": 0.7}, {3: 0.56})]               # a bigger gain keeps knob c
    won = winning_changes(baseline, trials, BASE)
    assert won == {"a": (1, pytest.approx(0.05)), "c": (0.7, pytest.approx(0.06)), "d": (1, pytest.approx(0.01))}


def test_the_stack_holds_every_winner_and_its_neighbours_drop_the_weakest_first():
    won = {"a": (1, 0.05), "c": (0.7, 0.06), "d": (1, 0.01)}
    points = stacked_points(BASE, won, neighbours=2, active=dict)
    assert points[0] == ({"a": 1, "b": 0, "c": 0.7, "d": 1}, "stack: a=1, c=0.7, d=1")
    assert points[1:] == [({"a": 1, "b": 0, "c": 0.7, "d": 0}, "stack without d: a=1, c=0.7"),
                          ({"a": 0, "b": 0, "c": 0.7, "d": 1}, "stack without a: c=0.7, d=1")]
    assert stacked_points(BASE, {"a": (1, 0.05)}, neighbours=2, active=dict) == []  # one winner is its own trial


def _spec(tmp_path, stack="true"):
    return load_spec(write_spec(tmp_path, "stk", startup=f"near_baseline = 2\nmax_changes = 1\nstack = {stack}"))


def test_the_study_queues_the_stack_once_the_startup_trials_are_done_and_only_once(tmp_path):
    spec = _spec(tmp_path)
    base = spec.baseline_params()
    keys = list(base)
    study = optuna.create_study(direction="maximize")
    dists = {p.key: p.distribution for p in spec.space}
    other = {k: next(c for c in spec.param(k).distribution.choices if c != base[k])
             if hasattr(spec.param(k).distribution, "choices") else spec.param(k).distribution.high for k in keys[:2]}

    def add(params, values, **attrs):
        study.add_trial(create_trial(state=TrialState.PRUNED, params={**base, **params}, user_attrs=attrs,
                                     distributions={k: dists[k] for k in {**base, **params}},
                                     intermediate_values=values))

    add({}, {1: 0.5, 2: 0.6}, baseline=True)
    add({keys[0]: other[keys[0]]}, {1: 0.55}, startup=keys[0])
    assert queue_stacked_points(study, spec) == []  # one startup trial still to finish
    add({keys[1]: other[keys[1]]}, {1: 0.52}, startup=keys[1])
    queued = queue_stacked_points(study, spec)
    assert len(queued) == 1 and queued[0].startswith("stack: ") and all(k in queued[0] for k in keys[:2])
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs[STACKED_ATTR].startswith("stack")
    assert queue_stacked_points(study, spec) == []  # queued already: not again
    assert queue_stacked_points(study, _spec(tmp_path / "off", stack="false")) == []
