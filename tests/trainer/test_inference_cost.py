"""The inference cost a budget decision uses is timed so that other processes' load does not change it, and the
loop applies a per-epoch thread policy."""
from __future__ import annotations

import time

import pytest
import torch

from trainer import train_and_evaluate
from trainer.config import FeatureConfig
from trainer.inference import ONE_THREAD_CPU_TIME, WALL_TIME, measure_feature_cost, timed_work


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_cpu_work_runs_on_one_thread_and_the_trial_gets_its_threads_back(two_threads):
    value, _, method = timed_work(torch.device("cpu"), torch.get_num_threads)
    assert value == 1 and method == ONE_THREAD_CPU_TIME
    assert torch.get_num_threads() == 2


def test_threads_come_back_when_the_work_fails(two_threads):
    def fails():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        timed_work(torch.device("cpu"), fails)
    assert torch.get_num_threads() == 2


def test_time_spent_waiting_is_not_counted_on_cpu():
    # A thread that waits for a core is not computing, like one that sleeps: neither counts, so a busy box
    # cannot inflate the cost. Wall time would count the whole 0.3 s.
    _, spent, _ = timed_work(torch.device("cpu"), lambda: time.sleep(0.3))
    assert spent < 0.1


def test_other_devices_are_timed_by_wall_clock():
    _, spent, method = timed_work(torch.device("meta"), lambda: time.sleep(0.05))
    assert method == WALL_TIME and spent >= 0.04  # the sleep, which CPU time would not count


def test_feature_cost_says_how_it_was_timed():
    cost, method = measure_feature_cost(FeatureConfig(), torch.device("cpu"), seconds=1.0)
    assert cost > 0 and method == ONE_THREAD_CPU_TIME


def test_loop_asks_the_policy_at_each_epoch_and_records_threads_and_method(tiny_config, demo_data, tmp_path):
    answers = iter([2, 1])
    asked = []

    def policy() -> int:
        asked.append(torch.get_num_threads())  # what the previous epoch ran with
        return next(answers)

    result = train_and_evaluate(tiny_config, demo_data, workdir=tmp_path, threads=1, epoch_threads=policy,
                                progress=False, verbose=False)
    assert asked == [1, 2]
    assert [h["threads"] for h in result.history] == [2, 1]
    assert [h["inference_cost_method"] for h in result.history] == [ONE_THREAD_CPU_TIME] * 2
    assert result.inference_cost_method == ONE_THREAD_CPU_TIME
