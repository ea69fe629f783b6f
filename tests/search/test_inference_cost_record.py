"""A trial records how its inference cost was timed, next to the cost, on both paths that record it."""
from __future__ import annotations

import dataclasses
import io

import optuna
from optuna.trial import TrialState

from search.study.locate import locate
from search.worker.build import build_worker
from tests.search.conftest import fake_training, write_spec

KERNEL = "[kernel]\nbudget_s = 3600\ntest_audio_s = 25500\nsafety = 0.5\n"


def timed_by(method: str, inference_cost: float):
    """fake_training whose epochs and result say their cost was timed by ``method``, as the trainer's do."""
    fake = fake_training(inference_cost=inference_cost)

    def train(config, data_dir=None, *, on_epoch=None, **kwargs):
        result = fake(config, data_dir, on_epoch=lambda epoch, metrics: on_epoch(
            epoch, {**metrics, "inference_cost_method": method}), **kwargs)
        return dataclasses.replace(result, inference_cost_method=method)
    return train


def run_one(tmp_path, train) -> optuna.trial.FrozenTrial:
    studies = tmp_path / "studies"
    write_spec(studies, "cost", epochs=3, extra=KERNEL)
    worker = build_worker(locate("cost", studies, spec_required=True), tmp_path, device="cpu", threads=1,
                          sampler=optuna.samplers.RandomSampler(seed=0), worker_id="test:1", stream=io.StringIO(),
                          train=train)
    worker.run(trials=1)
    return worker.handle.study.trials[0]


def test_a_finished_trial_says_how_its_cost_was_timed(tmp_path):
    trial = run_one(tmp_path, timed_by("cpu-time-1-thread", 0.001))
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["inference_cost_method"] == "cpu-time-1-thread"


def test_a_trial_refused_over_the_kernel_budget_says_it_too(tmp_path):
    trial = run_one(tmp_path, timed_by("wall-time", 0.5))
    assert trial.state == TrialState.PRUNED and trial.user_attrs["feasible"] is False
    assert trial.user_attrs["inference_cost_method"] == "wall-time"


def test_a_trainer_that_does_not_say_records_no_method(tmp_path):
    trial = run_one(tmp_path, fake_training())
    assert "inference_cost" in trial.user_attrs and "inference_cost_method" not in trial.user_attrs
