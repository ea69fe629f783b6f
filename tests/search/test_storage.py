"""Storage under parallel workers, run against every backend: SQLite file and PostgreSQL."""
from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.study.storage import StorageError, create_or_load_study, default_storage_url, open_storage
from search.worker.failures import requeue
from tests.search.conftest import fresh_database, unique_name


def test_default_url_is_absolute_and_creates_the_studies_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = default_storage_url("demo", Path("studies/nested"))
    assert url == f"sqlite:///{tmp_path / 'studies' / 'nested' / 'demo.db'}"
    assert (tmp_path / "studies" / "nested").is_dir()
    assert default_storage_url("demo", tmp_path / "abs") == f"sqlite:///{tmp_path / 'abs' / 'demo.db'}"


def test_sqlite_runs_in_wal_mode_and_waits_for_a_held_lock(tmp_path):
    url = default_storage_url("s", tmp_path)
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="s")
    assert sqlite3.connect(tmp_path / "s.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    blocker = sqlite3.connect(tmp_path / "s.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")  # a writer that holds the database for a while
    release = threading.Timer(1.0, lambda: blocker.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    study.set_user_attr("after_lock", 1)  # waits for the lock (busy timeout) instead of failing
    release.join()
    assert time.monotonic() - started >= 0.5
    assert optuna.load_study(study_name="s", storage=open_storage(url)).user_attrs["after_lock"] == 1


def _race_to_create(url: str, name: str, queue) -> None:
    storage = open_storage(url, heartbeat_interval=1)
    study, created = create_or_load_study(storage, name, direction="maximize",
                                          on_create=lambda s: s.enqueue_trial({"x": 0.5}))
    for _ in range(5):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.report(x, step=1)
        study.tell(trial, x)
    queue.put(created)


@pytest.mark.slow
def test_many_workers_create_one_study_and_enqueue_once(storage_url):
    name = unique_name("race")
    url = storage_url(name)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_race_to_create, args=(url, name, queue)) for _ in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    created = [queue.get(timeout=5) for _ in workers]
    assert created.count(True) == 1
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).trials
    assert len(trials) == 20 and len({t.number for t in trials}) == 20
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # Exactly once; that it is trial 0 is join_study's job (it makes joiners wait), tested in test_run.py.
    assert sum(t.params == {"x": 0.5} for t in trials) == 1


@pytest.mark.slow
def test_stale_trial_is_failed_and_retried_with_a_link(storage_url):
    name = unique_name("stale")
    url = storage_url(name)
    storage = open_storage(url, heartbeat_interval=1, grace_period=1,
                           on_stale_trial=lambda study, trial: requeue(study, trial, reason="heartbeat"))
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("run_dir", "/somewhere")
    trial.set_user_attr("baseline", True)
    trial.report(0.25, step=1)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name), trial.number)
    storage.record_heartbeat(trial_id)  # then the "worker" dies: no more heartbeats
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)

    failed, retry = study.trials
    assert failed.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.params == failed.params
    assert retry.user_attrs == {"retry_of": failed.number, "retry_reason": "heartbeat", "baseline": True}
    assert retry.system_attrs["failed_trial"] == failed.number
    assert retry.intermediate_values == {}  # its resume re-reports the epochs it keeps


def _open_on_fresh_database(url: str, name: str, queue) -> None:
    try:
        storage = open_storage(url, heartbeat_interval=1)
        create_or_load_study(storage, name, direction="maximize")
        queue.put("ok")
    except Exception as exc:  # reported to the test, which shows it
        queue.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_started_together_on_a_fresh_database_all_get_in(tmp_path, backend):
    """Optuna creates its tables (and PostgreSQL enum types) when a storage opens; N workers opening a
    fresh database at the same moment raced on CREATE TYPE and all but one crashed."""
    with fresh_database(backend, tmp_path) as url:
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        barrier_name = unique_name("fresh")
        workers = [context.Process(target=_open_on_fresh_database, args=(url, barrier_name, queue)) for _ in range(6)]
        for process in workers:
            process.start()
        for process in workers:
            process.join(60)
        results = [queue.get(timeout=5) for _ in workers]
        assert results == ["ok"] * 6, results
        assert [p.exitcode for p in workers] == [0] * 6


def test_an_unreachable_storage_is_one_line(tmp_path):
    with pytest.raises(StorageError) as info:
        open_storage("postgresql://nobody:secret@127.0.0.1:1/nowhere")
    assert "postgresql://nobody:***@127.0.0.1:1/nowhere: cannot open the study storage" in str(info.value)
    assert "secret" not in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(StorageError, match="not a database URL"):
        open_storage("not a url")


def test_every_public_storage_method_is_retried_or_says_why_not():
    """An Optuna upgrade that adds or renames a storage method fails here, not as a lock error in a study."""
    from search.study.storage import NOT_RETRIED, RETRIED

    def public(cls):
        return {name for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name))}

    base = public(optuna.storages.BaseStorage)
    assert set(RETRIED) & set(NOT_RETRIED) == set()
    assert base == (set(RETRIED) | set(NOT_RETRIED)) - {"record_heartbeat"}
    assert "record_heartbeat" in public(optuna.storages.RDBStorage)  # the heartbeat, BaseHeartbeat's
