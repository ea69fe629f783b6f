"""The worker's thread policy: a pane's share of the cores, cut to what other processes leave free."""
from __future__ import annotations

import pytest

from search.worker import threads
from search.worker.threads import threads_for_load, threads_now
from search.worker.trial_run import choose_threads


@pytest.mark.parametrize("busy_elsewhere, cores, panes, expected", [
    (0, 2, 1, 2),     # an idle 2-core box, one pane: both cores
    (1, 2, 1, 1),     # another job appeared: 2 threads would wait on each other's time slices
    (0.4, 2, 1, 1),   # part of a core busy is still busy
    (0, 2, 2, 1),     # two panes share two cores
    (5, 2, 1, 1),     # a swamped box: never fewer than one
    (0, 8, 2, 4),
    (2, 8, 2, 3),     # 6 free cores between two panes
    (0, 2, 4, 1),     # more panes than cores
    (-1, 4, 1, 4),    # a reading below zero counts as idle
])
def test_threads_for_load(busy_elsewhere, cores, panes, expected):
    assert threads_for_load(busy_elsewhere, cores, panes) == expected


@pytest.fixture()
def box(tmp_path, monkeypatch):
    """A fake /proc/loadavg and core count: write(runnable) sets the runnable count, this thread included."""
    loadavg = tmp_path / "loadavg"
    monkeypatch.setattr(threads, "LOADAVG", loadavg)
    monkeypatch.setattr(threads, "SAMPLE_GAP_S", 0.0)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    return lambda runnable: loadavg.write_text(f"0.50 0.40 0.30 {runnable}/321 4242\n")


def test_this_thread_and_the_other_panes_are_not_foreign_load(box):
    box(1)
    assert threads_now(1) == 4
    box(1 + 2)  # the other pane trains on its share of 2
    assert threads_now(2) == 2
    box(1 + 2 + 1)  # and one foreign thread
    assert threads_now(2) == 1


def test_foreign_load_cuts_the_threads_at_the_next_decision(box):
    box(1)
    assert choose_threads(None, panes_on_host=1) == 4
    box(1 + 2)
    assert choose_threads(None, panes_on_host=1) == 2


def test_explicit_threads_are_kept_whatever_the_load(box):
    box(40)
    assert choose_threads(3, panes_on_host=1) == 3


def test_without_proc_loadavg_the_load_average_is_read(box, tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "LOADAVG", tmp_path / "missing")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    assert threads_now(1) == 2


def test_the_worker_hands_the_trainer_a_policy_that_follows_the_box(box, tmp_path):
    import io

    import optuna

    from search.study.locate import locate
    from search.worker.build import build_worker
    from tests.search.conftest import fake_training, write_spec

    answers = []

    def train(config, data_dir=None, *, epoch_threads=None, **kwargs):
        box(1)
        answers.append(epoch_threads())
        box(1 + 3)  # foreign load appears mid-trial
        answers.append(epoch_threads())
        return fake_training()(config, data_dir, **kwargs)

    studies = tmp_path / "studies"
    for name, explicit in (("auto", None), ("fixed", 3)):
        write_spec(studies, name)
        worker = build_worker(locate(name, studies, spec_required=True), tmp_path, device="cpu", threads=explicit,
                              sampler=optuna.samplers.RandomSampler(seed=0), worker_id="test:1",
                              stream=io.StringIO(), train=train)
        worker.run(trials=1)
    assert answers == [4, 1, 3, 3]  # --threads 3 is kept whatever the load
