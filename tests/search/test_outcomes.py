"""The table of outcomes (search.worker.outcomes) is what the worker does: each row driven through a real worker,
its trial's state, reason, retry, count against --max-retry and the worker's exit checked against the row."""
from __future__ import annotations

import contextlib
import errno
import io
import signal
import sqlite3
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from search.study.locate import locate
from search.worker.build import build_worker
from search.worker.failures import counts_against, stale_trial_retry
from search.worker.lifecycle import Worker
from search.worker.outcomes import BY_REASON, EXIT_2, EXIT_SIGNAL, GOES_ON, OUTCOMES, RAISES, Outcome, outcome_of
from search.worker.signals import Interrupted
from tests.search.conftest import fake_training, write_spec
from trainer import CheckpointError, ConfigError, DataError, NonFiniteLossError

KERNEL = "[kernel]\nbudget_s = 3600\ntest_audio_s = 25500\nsafety = 0.5\n"


def _locked() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("UPDATE trials", {}, sqlite3.OperationalError("database is locked"))


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


# How each row's attempt is made to end: the first attempt's training raises this (None: it trains to the end).
RAISED = {
    "complete": None,
    "storage": _locked(),
    "over the kernel budget": None,  # inference cost 0.5 s per clip: 12,750 s > 1,800 s after epoch 1
    "pruned": None,  # AlwaysPrune
    "diverged": NonFiniteLossError("training loss became nan at step 3"),
    "config": ConfigError("features.hop=1024 must not exceed features.n_fft=512"),
    "checkpoint": CheckpointError("last.pth: not a checkpoint"),
    "data": DataError("train_curated: 30 of 100 clips are unreadable"),
    "disk full": OSError(errno.ENOSPC, "No space left on device", "/runs/trial-0/last.pth"),
    "out of memory": MemoryError("Unable to allocate 9.1 GiB for an array"),
    "interrupted": Interrupted(signal.SIGTERM),
    "error": ZeroDivisionError("oops"),
}
EXIT_CODES = {GOES_ON: 0, EXIT_2: 2, EXIT_SIGNAL: 128 + signal.SIGTERM}


def _worker(tmp_path: Path, train, *, max_retry: int = 3, extra: str = "") -> Worker:
    studies = tmp_path / "studies"
    write_spec(studies, "ends", epochs=2, extra=extra)
    return build_worker(locate("ends", studies, spec_required=True), tmp_path, device="cpu", threads=1,
                        sampler=optuna.samplers.RandomSampler(seed=0), max_retry=max_retry, worker_id="test:1",
                        stream=io.StringIO(), train=train)


def test_every_row_has_a_way_to_be_driven_here():
    assert set(RAISED) | {"heartbeat"} == set(BY_REASON)


@pytest.mark.parametrize("outcome", [o for o in OUTCOMES if o.reason != "heartbeat"], ids=lambda o: o.reason)
def test_an_attempt_ends_as_its_row_says(tmp_path, capsys, outcome: Outcome):
    first = fake_training(error=RAISED[outcome.reason], inference_cost=0.5 if outcome.reason.startswith("over") else 0.001)
    trainers = iter([first, fake_training()])
    worker = _worker(tmp_path, lambda *args, **kwargs: next(trainers)(*args, **kwargs),
                     extra=KERNEL if outcome.reason.startswith("over") else "")
    if outcome.reason == "pruned":
        worker.study.pruner = AlwaysPrune()
    if outcome.stops == RAISES:
        with pytest.raises(type(RAISED[outcome.reason])):
            worker.run(trials=1)
    else:
        assert worker.run(trials=1) == EXIT_CODES[outcome.stops], capsys.readouterr()
    trials = worker.study.get_trials(deepcopy=False)
    attempt = trials[0]
    assert attempt.state == outcome.state
    reason = attempt.user_attrs.get("reason")
    if outcome.state == TrialState.COMPLETE:
        assert reason is None
    else:
        assert reason.startswith(outcome.reason) and outcome_of(reason) is outcome
    retries = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert bool(retries) == outcome.retried
    assert counts_against(attempt) == outcome.counts  # it failed before its first epoch: no progress
    if outcome.stops in (EXIT_2,):
        assert capsys.readouterr().err.strip().startswith("error: ")


def test_a_dead_workers_trial_is_retried_and_counts(tmp_path):
    """The heartbeat row: no exception in this worker; the storage's stale check fails the trial, with no reason."""
    worker = _worker(tmp_path, fake_training())
    study = worker.study
    dead = study.ask()
    study.tell(dead, state=TrialState.FAIL)  # what Optuna's stale-trial check leaves
    attempt = study.get_trials(deepcopy=False)[dead.number]
    with contextlib.redirect_stdout(io.StringIO()):
        stale_trial_retry(3)(study, attempt)
    row = BY_REASON["heartbeat"]
    assert outcome_of(attempt.user_attrs.get("reason")) is row and attempt.state == row.state
    retry = study.get_trials(deepcopy=False)[-1]
    assert row.retried and retry.user_attrs == {"baseline": True, "retry_of": 0, "retry_reason": "heartbeat"}
    assert counts_against(attempt) == row.counts


def test_storage_failures_never_count_against_max_retry(tmp_path, capsys):
    """The README's promise: an attempt that failed because the storage did never counts. Before the table, such
    an attempt had no reason and counted as a dead worker's, so the trial was dropped after --max-retry of them."""
    worker = _worker(tmp_path, fake_training(error=_locked()), max_retry=1)
    for _ in range(4):  # more than max_retry + 1 attempts, each failed by the storage before its first epoch
        assert worker.run(trials=1) == 2
        assert "storage unreachable or failing: database is locked; trial" in capsys.readouterr().err
    trials = worker.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL] * 4 + [TrialState.WAITING]
    assert all(t.user_attrs["reason"] == "storage: database is locked" for t in trials[:4])
    assert trials[4].user_attrs["retry_of"] == 3 and trials[4].system_attrs["retry_history"] == [0, 1, 2, 3]


def test_an_attempt_whose_reason_the_storage_refused_counts_as_what_its_retry_was_queued_for(tmp_path):
    """The storage failed the reason's write too: the retry's ``retry_reason`` says why the attempt ended."""
    from search.worker.failures import requeue

    worker = _worker(tmp_path, fake_training())
    study = worker.study
    for _ in range(3):
        trial = study.ask()
        study.tell(trial, state=TrialState.FAIL)  # no reason recorded
        assert isinstance(requeue(study, study.get_trials(deepcopy=False)[trial.number], reason="storage",
                                  max_retry=1), int)
    assert study.get_trials(deepcopy=False)[-1].system_attrs["retry_history"] == [0, 1, 2]
