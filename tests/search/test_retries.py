"""Retries in one worker process: what counts against --max-retry, what is dropped, how a retry resumes (its
predecessor's checkpoint, an unloadable one, one that finished), and trials whose worker died before its first
heartbeat."""
from __future__ import annotations

import contextlib
import datetime as dt
import io
import time
import warnings

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.study.storage import default_storage_url, open_storage
from search.worker.failures import DEFAULT_MAX_RETRY, Dropped, fail_unclaimed_trials, requeue, stale_trial_retry
from tests.search.conftest import fake_training
from tests.search.worker_setup import Setup
from trainer import train_and_evaluate


# -- retries ---------------------------------------------------------------------------------------
def _attempt(study: optuna.Study, *, reason: str, epochs_run: int, resumed_from: int) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("reason", reason)
    trial.set_user_attr("epochs_run", epochs_run)
    trial.set_user_attr("resumed_from_epoch", resumed_from)
    study.tell(trial, state=TrialState.FAIL)
    return study.trials[trial.number]


def test_retries_count_only_fruitless_failures_of_the_trial_itself(tmp_path):
    study = optuna.create_study(storage=open_storage(default_storage_url("r", tmp_path)), study_name="r")
    first = _attempt(study, reason="out of memory: CUDA", epochs_run=0, resumed_from=0)
    chain = [first]
    for _ in range(DEFAULT_MAX_RETRY):
        assert requeue(study, chain[-1], reason="out of memory", max_retry=DEFAULT_MAX_RETRY) is not None
        chain.append(_attempt(study, reason="out of memory: CUDA", epochs_run=0, resumed_from=0))
    # max_retry fruitless out-of-memory attempts after the first: dropped
    assert requeue(study, chain[-1], reason="out of memory", max_retry=DEFAULT_MAX_RETRY) == Dropped(
        DEFAULT_MAX_RETRY + 1, DEFAULT_MAX_RETRY)
    assert study.trials[-1].system_attrs["retry_history"] == [c.number for c in chain[:-1]]


def test_a_trial_whose_worker_dies_before_its_first_epoch_every_time_is_dropped(tmp_path):
    """The kernel's OOM killer takes the worker down at the trial's first batch, attempt after attempt: the trial
    is dropped after max_retry such deaths instead of killing every pane in turn."""
    study = optuna.create_study(storage=open_storage(default_storage_url("k", tmp_path)), study_name="k")
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("baseline", True)
    study.tell(trial, state=TrialState.FAIL)  # what the storage's stale-trial check leaves: no reason, no epoch
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for _ in range(DEFAULT_MAX_RETRY):
            stale_trial_retry(DEFAULT_MAX_RETRY)(study, study.trials[-1])
            died = study.ask()  # the retry, taken by the next worker, which dies too
            assert died.number == study.trials[-1].number and study.trials[-1].user_attrs["retry_reason"] == "heartbeat"
            study.tell(died, state=TrialState.FAIL)
        stale_trial_retry(DEFAULT_MAX_RETRY)(study, study.trials[-1])
    assert len(study.trials) == DEFAULT_MAX_RETRY + 1 and study.trials[-1].state == TrialState.FAIL
    last = out.getvalue().strip().splitlines()[-1]
    assert last == (f"#{DEFAULT_MAX_RETRY} stopped beating (its worker died) and is dropped: {DEFAULT_MAX_RETRY + 1} "
                    f"attempts failed without progress (--max-retry {DEFAULT_MAX_RETRY})")


def test_attempts_that_made_progress_or_were_interrupted_never_count(tmp_path):
    study = optuna.create_study(storage=open_storage(default_storage_url("p", tmp_path)), study_name="p")
    attempt = _attempt(study, reason="interrupted", epochs_run=0, resumed_from=0)
    for index in range(8):  # far beyond max_retry: kill -9s, Ctrl-Cs, and attempts that trained on
        number = requeue(study, attempt, reason="interrupted", max_retry=1)
        assert number is not None
        reason = ("heartbeat", "interrupted", "out of memory: CUDA", "disk full: /x")[index % 4]
        attempt = _attempt(study, reason=reason, epochs_run=index + 1, resumed_from=index)
    assert requeue(study, attempt, reason="interrupted", max_retry=1) is not None
    assert requeue(study, attempt, reason="interrupted", max_retry=1) is None  # but never twice


def test_an_unloadable_checkpoint_restarts_the_trial_from_epoch_zero_saying_so(tmp_path, warm_cache):
    setup = Setup(tmp_path, warm_cache, epochs=2)
    trial = setup.study.ask()  # the baseline: a first attempt that "died" and left a corrupt last.pth
    setup.spec.suggest(trial)
    trial.report(0.3, 1)
    setup.study.tell(trial, state=TrialState.FAIL)
    corrupt = tmp_path / "last.pth"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    setup.files.push(0, corrupt)
    requeue(setup.study, setup.study.trials[0], reason="heartbeat")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert setup.run(trials=1) == 0
    # the failed attempt's epoch-1 value is not the retry's: it reports its own curve, with no value ignored
    assert not [w for w in caught if "already reported" in str(w.message)]
    retry = setup.study.trials[1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] == 0
    assert sorted(retry.intermediate_values) == [1, 2]
    assert retry.user_attrs["resume_note"].startswith("last.pth of trial 0 could not be loaded (")
    assert "starting from epoch 0" in setup.out.getvalue()


@pytest.mark.slow
def test_a_checkpoint_that_finished_its_budget_completes_without_training(tmp_path, warm_cache):
    setup = Setup(tmp_path, warm_cache, epochs=2)
    assert setup.run(trials=1) == 0  # a real run, to have a real last.pth of a finished budget
    done = setup.runs / "trial-0"
    assert not (done / "last.pth").exists()
    # replay "killed after the last epoch was saved, before the trial was told": the same run again
    # in a scratch folder, its last.pth handed to the store under a failed attempt's number
    from search.worker.objective import train_and_evaluate

    config = setup.spec.base_config()
    result = train_and_evaluate(config, warm_cache, workdir=tmp_path / "scratch", threads=1, progress=False,
                                verbose=False)
    setup.study.enqueue_trial(setup.spec.baseline_params())
    trial = setup.study.ask()
    setup.spec.suggest(trial)
    setup.study.tell(trial, state=TrialState.FAIL)
    setup.files.push(trial.number, result.last_path)
    requeue(setup.study, setup.study.trials[trial.number], reason="heartbeat")
    assert setup.run(trials=2) == 0
    retry = setup.study.trials[-1]
    assert retry.state == TrialState.COMPLETE and retry.value == pytest.approx(result.best_lwlrap)
    assert retry.user_attrs["resumed_from_epoch"] == 2 and retry.user_attrs["epochs_run"] == 2


@pytest.mark.slow
def test_a_retry_reports_the_epoch_its_predecessor_saved_but_never_reported(tmp_path, warm_cache):
    """Killed after epoch 2's last.pth reached the store and before epoch 2 was reported: the retry resumes after
    epoch 2 and its curve has epoch 2 too (from the checkpoint), not a gap the pruner and dashboard would see."""
    from search.worker.objective import train_and_evaluate

    class Killed(Exception):
        pass

    def killed_after_two(epoch, metrics):
        if epoch == 2:
            raise Killed

    setup = Setup(tmp_path, warm_cache, epochs=3)
    config = setup.spec.base_config()
    with pytest.raises(Killed):
        train_and_evaluate(config, warm_cache, workdir=tmp_path / "scratch", threads=1, progress=False,
                           verbose=False, on_epoch=killed_after_two)
    saved = torch.load(tmp_path / "scratch" / "last.pth", weights_only=True)
    assert saved["epoch"] == 2
    setup.study.enqueue_trial(setup.spec.baseline_params())
    trial = setup.study.ask()
    setup.spec.suggest(trial)
    trial.report(0.1, 1)  # epoch 1 was reported, epoch 2 was not
    setup.study.tell(trial, state=TrialState.FAIL)
    setup.files.push(trial.number, tmp_path / "scratch" / "last.pth")
    requeue(setup.study, setup.study.trials[trial.number], reason="heartbeat")
    assert setup.run(trials=2) == 0
    retry = setup.study.trials[-1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] == 2
    assert sorted(retry.intermediate_values) == [1, 2, 3]
    assert retry.intermediate_values[2] == pytest.approx(saved["best_lwlrap"])


def test_a_resumed_retry_still_registers_its_config(tmp_path, warm_cache):
    """The trainer writes config.json only when it starts from epoch 0, and a retry starts in a folder of its own:
    a resumed attempt pulls its predecessor's from the store (pushed at its first epoch), so the trial still lists
    it on the dashboard."""
    attempts = []

    def train(config, data_dir=None, *, on_epoch=None, **kwargs):
        attempts.append(kwargs["workdir"])
        if len(attempts) > 1:
            return train_and_evaluate(config, data_dir, on_epoch=on_epoch, **kwargs)

        def out_of_memory_after_epoch_1(epoch, metrics):
            on_epoch(epoch, metrics)
            raise MemoryError("Unable to allocate 9.1 GiB for an array")
        return train_and_evaluate(config, data_dir, on_epoch=out_of_memory_after_epoch_1, **kwargs)

    setup = Setup(tmp_path, warm_cache, epochs=2, train=train)
    assert setup.run(trials=1) == 0
    failed, retry = setup.study.trials
    assert failed.state == TrialState.FAIL and failed.user_attrs["reason"].startswith("out of memory")
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] == 1
    registered = {m.filename for m in optuna.artifacts.get_all_artifact_meta(retry, storage=setup.storage)}
    assert registered == {"config.json", "val_predictions.npz"}


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_retried_not_waited_for(tmp_path, monkeypatch):
    """A worker SIGKILLed between taking the baseline (RUNNING) and its first heartbeat left a trial Optuna's stale
    check never sees (no heartbeat at all): the panes waited for it for ever (the PostgreSQL storm). Now the
    waiting worker fails it after the grace period and runs its retry, the same point."""
    monkeypatch.setattr("search.worker.lifecycle.UNCLAIMED_MIN_S", 0.5)
    setup = Setup(tmp_path, train=fake_training())
    setup.worker.grace = 0.5
    taken = setup.study.ask()  # trial 0, the baseline, taken by a worker that then died
    assert taken.number == 0 and setup.study.trials[0].state == TrialState.RUNNING
    time.sleep(0.6)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert setup.run(trials=1, timeout=30) == 0
    assert "#0 was taken by a worker that died before its first heartbeat: queued for retry as #1" in out.getvalue()
    assert "done: the study has its 1 finished trials" in setup.out.getvalue()
    trials = setup.study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL and trials[1].state == TrialState.COMPLETE
    assert trials[1].user_attrs["baseline"] is True and trials[1].params == setup.spec.baseline_params()


def test_only_old_unclaimed_running_trials_are_failed(tmp_path):
    study = optuna.create_study(storage=open_storage(default_storage_url("u", tmp_path)), study_name="u")
    claimed, unclaimed = study.ask(), study.ask()
    claimed.set_user_attr("worker_id", "host:1")
    soon = dt.datetime.now() + dt.timedelta(seconds=5)
    assert fail_unclaimed_trials(study, study.trials, older_than_s=10, now=soon) == []  # too recent to call dead
    later = dt.datetime.now() + dt.timedelta(seconds=60)
    with contextlib.redirect_stdout(io.StringIO()):
        assert fail_unclaimed_trials(study, study.trials, older_than_s=10, now=later) == [unclaimed.number]
    assert [t.state for t in study.trials[:2]] == [TrialState.RUNNING, TrialState.FAIL]
    assert study.trials[2].state == TrialState.WAITING and study.trials[2].user_attrs["retry_of"] == 1
