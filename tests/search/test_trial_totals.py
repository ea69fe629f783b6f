"""``--trials N`` is exact with panes racing: four workers started together end at N finished trials, on
SQLite and on PostgreSQL, start after start (the slot lock of ``search.worker.slots``)."""
from __future__ import annotations

import io
import multiprocessing
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.study.locate import locate
from search.study.record import FINISHED
from search.study.storage import open_storage
from search.worker import lifecycle
from search.worker.build import build_worker
from search.worker.slots import SlotLock
from tests.search.conftest import fake_training, fresh_database, unique_name, write_spec

PANES = 4
STARTS = 20
TRIALS = 8


def _pane(studies: Path, name: str, url: str, pane: int, start, results) -> None:
    """One worker process: join the study, wait for the others, run to ``TRIALS`` with instant trials."""
    lifecycle.WAIT_POLL_S = 0.1  # instant trials: a pane waiting on the others' last ones need not sleep 2 s
    out = io.StringIO()
    worker = build_worker(locate(name, studies, url, spec_required=True), studies, device="cpu", threads=1,
                          sampler=optuna.samplers.RandomSampler(seed=pane), heartbeat=60, grace=120,
                          worker_id=f"race:{pane}", stream=out, train=fake_training())
    start.wait()
    code = worker.run(trials=TRIALS)
    results.put((code, out.getvalue().strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def processes():
    """Worker processes forked from a clean server that imported the search code once (fast, and never a
    fork of this multi-threaded test process)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["search.worker.build", "tests.search.conftest"])
    return context


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_four_racing_panes_end_at_exactly_the_trials_asked(backend, tmp_path, processes):
    totals, lines = [], []
    with fresh_database(backend, tmp_path) as url:
        for attempt in range(STARTS):
            name = unique_name("race")
            studies = tmp_path / name
            write_spec(studies, name, epochs=1)
            study_url = f"sqlite:///{studies / 'race.db'}" if backend == "sqlite" else url
            start, results = processes.Barrier(PANES), processes.Queue()
            panes = [processes.Process(target=_pane, args=(studies, name, study_url, i, start, results))
                     for i in range(PANES)]
            for pane in panes:
                pane.start()
            ends = [results.get(timeout=120) for _ in panes]
            for pane in panes:
                pane.join(timeout=30)
            study = optuna.load_study(study_name=name, storage=open_storage(study_url))
            totals.append(len(study.get_trials(states=FINISHED)))
            assert not study.get_trials(states=(TrialState.RUNNING,))
            assert [code for code, _ in ends] == [0] * PANES, ends
            lines.extend(line for _, line in ends)
    assert totals == [TRIALS] * STARTS
    assert all(f"the study has its {TRIALS} finished trials" in line for line in lines), lines


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_slot_lock_is_exclusive_and_released_with_its_holder(backend, tmp_path):
    with fresh_database(backend, tmp_path) as url:
        engine = open_storage(url).engine
        first, second = SlotLock(url, engine, "x"), SlotLock(url, engine, "x")
        assert first.exact and second.exact
        first.acquire()
        first.acquire()  # a no-op while held: a worker never waits for itself
        waiter = threading.Thread(target=second.acquire)
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive() and not second.held
        first.release()
        waiter.join(timeout=10)
        assert second.held and not first.held
        second.release()
        second.release()
        assert not second.held
        if backend == "postgresql":  # the key is the study's: another study of the database does not wait
            other = SlotLock(url, engine, "another study")
            first.acquire()
            other.acquire()
            assert other.held
            other.release()
            first.release()
        engine.dispose()


def test_a_backend_without_a_slot_lock_says_the_total_may_overshoot(tmp_path):
    assert not SlotLock("mysql://u@h/db", None, "x").exact


def test_the_eta_line_counts_the_studys_own_trials_and_says_when_nothing_is_left():
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from search.worker.console import eta_line

    study = optuna.create_study(direction="maximize")
    for attrs in [{}, {}, {"from_study": "round1", "from_trial": 0}]:
        study.add_trial(create_trial(value=0.5, params={"x": 0.1}, distributions={"x": FloatDistribution(0, 1)},
                                     user_attrs=attrs, state=TrialState.COMPLETE))
    # two of its own, one inherited: 3 more to reach 5, not 2
    assert eta_line(study, 5, 2).startswith("3 more to reach 5")
    assert eta_line(study, 2, 2) == "the study already has its 2 finished trials: nothing to run"
    assert eta_line(study, None, None) == "2 finished so far"
