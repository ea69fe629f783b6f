"""The trial lifecycle in one worker process: what a trial records, how each failure ends, folders and weights, a
full disk under the database (retries and resuming: test_retries.py)."""
from __future__ import annotations

import contextlib
import errno
import gc
import time
import weakref
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tests.search.conftest import fake_training
from tests.search.worker_setup import KERNEL, Setup, _states
from trainer import DataError, NonFiniteLossError


# -- what a finished trial holds --------------------------------------------------------------------
def test_a_real_trial_records_its_run_and_hands_its_files_to_the_store(tmp_path, warm_cache):
    setup = Setup(tmp_path, warm_cache, extra=KERNEL)
    assert setup.run(trials=1) == 0
    trial = setup.study.trials[0]
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["baseline"] is True
    values = [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
    assert values == sorted(values) and trial.value == values[-1]  # the running best: never falls
    attrs = trial.user_attrs
    assert attrs["epochs_run"] == 2 and attrs["threads"] == 1 and attrs["resumed_from_epoch"] == 0
    assert Path(attrs["run_dir"]) == setup.runs / "trial-0" and any((setup.runs / "trial-0" / "tb").iterdir())
    assert attrs["kernel_time_s"] == pytest.approx(attrs["inference_cost"] * 25500, rel=1e-3, abs=0.1)
    assert attrs["feature_cost"] > 0 and attrs["model_cost"] > 0
    assert trial.constraints["kernel_time"] < 0 and attrs["feasible"] is True
    # weights and predictions stay (it is a top trial); the resume state is gone once the trial finished
    assert setup.files.has(0, "best.pth") and setup.files.has(0, "val_predictions.npz")
    assert not setup.files.has(0, "last.pth") and not (setup.runs / "trial-0" / "last.pth").exists()
    registered = {m.filename for m in optuna.artifacts.get_all_artifact_meta(trial, storage=setup.storage)}
    assert registered == {"config.json", "val_predictions.npz"}
    assert "#0   COMPLETE" in setup.out.getvalue()


def test_the_reported_value_is_the_running_best_and_equals_the_return(tmp_path, monkeypatch):
    train = fake_training({3e-3: [0.4, 0.7, 0.5, 0.6]})
    setup = Setup(tmp_path, epochs=4, train=train)
    setup.run(trials=1)
    trial = setup.study.trials[0]
    assert trial.intermediate_values == {1: 0.4, 2: 0.7, 3: 0.7, 4: 0.7} and trial.value == 0.7


class TrainingClock:
    """The worker's ``time`` with a monotonic clock that moves only while a trial trains: the test does not
    depend on how long the worker's own start-up takes on a loaded box (0.7 s once, with a 0.6 s timeout)."""

    def __init__(self, seconds_a_trial: float):
        self.now, self.seconds_a_trial = 0.0, seconds_a_trial

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str):
        return getattr(time, name)

    def training(self, *args, **kwargs):
        self.now += self.seconds_a_trial
        return fake_training()(*args, **kwargs)


def test_timeout_stops_taking_new_trials(tmp_path, monkeypatch):
    clock = TrainingClock(seconds_a_trial=0.4)
    monkeypatch.setattr("search.worker.lifecycle.time", clock)
    setup = Setup(tmp_path, train=clock.training)
    assert setup.run(timeout=0.6) == 0
    output = setup.out.getvalue()
    assert "timeout reached" in output and "#0   COMPLETE" in output and "#1   COMPLETE" in output
    assert "#2 " not in output and len(setup.study.trials) == 2  # trial 1 started at 0.4 s; a third at 0.8 s


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_no_pruning_after_the_final_epoch(tmp_path, monkeypatch):
    train = fake_training()
    setup = Setup(tmp_path, epochs=1, train=train)
    setup.study.pruner = AlwaysPrune()
    setup.run(trials=1)
    assert _states(setup.study) == [TrialState.COMPLETE]  # its whole budget ran: the result is kept


def test_a_trial_over_the_kernel_budget_stops_after_epoch_one_as_infeasible(tmp_path, monkeypatch):
    train = fake_training(inference_cost=0.5)
    setup = Setup(tmp_path, epochs=4, extra=KERNEL, train=train)
    setup.run(trials=1)
    trial = setup.study.trials[0]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["epochs_run"] == 1
    assert trial.user_attrs["feasible"] is False and trial.constraints["kernel_time"] == pytest.approx(12750 - 1800)
    assert trial.user_attrs["reason"] == "over the kernel budget: projected 12,750 s > 1,800 s"


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.mark.parametrize("error, code", [(None, 0), (DataError("train_curated: unreadable"), 2)])
def test_the_worker_freezes_what_outlives_its_trials_and_thaws_it_on_the_way_out(tmp_path, error, code):
    """Garbage from before the run is collected, not frozen for good; a caller that goes on gets its collector back."""
    frozen_during = []

    def train(*args, **kwargs):
        frozen_during.append(gc.get_freeze_count())
        return fake_training(error=error)(*args, **kwargs)

    setup = Setup(tmp_path, train=train)
    gc.disable()  # no automatic collection: only the worker's own may free the cycle
    try:
        garbage = Cycle()
        gone = weakref.ref(garbage)
        del garbage
        assert gone() is not None
        assert setup.run(trials=2) == code
    finally:
        gc.enable()
    assert frozen_during and all(count > 0 for count in frozen_during)
    assert gc.get_freeze_count() == 0 and gone() is None


# -- failures: recorded on the trial, the worker goes on ---------------------------------------------
def test_a_trial_diverging_in_its_first_epoch_records_zero_epochs_run(tmp_path):
    setup = Setup(tmp_path, epochs=3, train=fake_training(error=NonFiniteLossError("training loss became nan")))
    setup.run(trials=1)
    trial = setup.study.trials[0]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["reason"].startswith("diverged: ")
    assert trial.user_attrs["epochs_run"] == 0


@pytest.mark.parametrize("error, state, reason", [
    (NonFiniteLossError("training loss became nan at step 3"), TrialState.PRUNED, "diverged: training loss became nan"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), TrialState.FAIL,
     "out of memory: CUDA out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried to "
                  "allocate 12 GB"), TrialState.FAIL, "out of memory: [enforce fail"),
    (MemoryError("Unable to allocate 9.1 GiB for an array"), TrialState.FAIL, "out of memory: Unable to allocate"),
])
@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_worker_goes_on(tmp_path, monkeypatch, error, state, reason):
    fakes = iter([fake_training(error=error, at_epoch=2), fake_training()])
    def train(*args, **kwargs):
        return next(fakes)(*args, **kwargs)
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    setup = Setup(tmp_path, epochs=3, train=train)
    assert setup.run(trials=1 if state == TrialState.FAIL else 2) == 0
    first = setup.study.trials[0]
    assert first.state == state and first.user_attrs["reason"].startswith(reason)
    assert setup.study.trials[-1].state == TrialState.COMPLETE
    assert emptied == ([True] if state == TrialState.FAIL else [])
    if state == TrialState.FAIL:  # an out-of-memory attempt that made progress (epoch 1) is retried
        assert setup.study.trials[1].user_attrs["retry_of"] == 0


@pytest.mark.slow
def test_an_impossible_config_fails_and_is_never_retried(tmp_path, monkeypatch):
    train = fake_training()
    setup = Setup(tmp_path, space='"features.n_fft" = { choices = [1764, 512] }\n"features.hop" = { choices = [220, 1024] }\n',
                  train=train)
    setup.study.enqueue_trial({"features.n_fft": 512, "features.hop": 1024})  # each valid alone, not together
    assert setup.run(trials=2) == 0
    failed = [t for t in setup.study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["reason"].startswith("config: ")
    assert "features.hop=1024 must not exceed features.n_fft=512" in failed[0].user_attrs["reason"]
    assert not [t for t in setup.study.trials if t.user_attrs.get("retry_of") == failed[0].number]


def test_a_bug_is_recorded_and_surfaces(tmp_path, monkeypatch):
    train = fake_training(error=ZeroDivisionError("oops"))
    setup = Setup(tmp_path, train=train)
    with pytest.raises(ZeroDivisionError):
        setup.run(trials=1)
    assert setup.study.trials[0].user_attrs["reason"] == "error: ZeroDivisionError: oops"


@pytest.mark.parametrize("error, expected", [
    (DataError("train_curated: 30 of 100 clips are unreadable"), "error: data: train_curated: 30 of 100"),
    (OSError(errno.ENOSPC, "No space left on device", "/studies/life/runs/x/trial-0/last.pth"),
     "error: disk full: no space left for /studies/life/runs/x/trial-0/last.pth"),
    # a copy into the artifact store names its source first: the full disk is the destination's
    (OSError(errno.ENOSPC, "No space left on device", "/studies/life/runs/x/trial-0/last.pth", None,
             "/artifacts/uid/0/last.pth.tmp"), "error: disk full: no space left for /artifacts/uid/0/last.pth.tmp"),
    # torch.save raises ENOSPC without a file name: the places the trial writes to are named instead
    (OSError(errno.ENOSPC, "No space left on device"), "no space left for the files of trial 0 (its folder "),
])
def test_problems_every_trial_would_hit_stop_the_worker_with_one_line(tmp_path, monkeypatch, capsys, error, expected):
    train = fake_training(error=error)
    setup = Setup(tmp_path, train=train)
    assert setup.run(trials=3) == 2
    failed, retry = setup.study.trials[:2]
    assert failed.state == TrialState.FAIL and failed.user_attrs["baseline"] is True
    # queued again, so once the data or the disk is fixed the study gets its baseline after all
    assert retry.state == TrialState.WAITING and retry.user_attrs == {
        "baseline": True, "retry_of": 0, "retry_reason": failed.user_attrs["reason"]}
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and expected in line


def test_a_data_folder_that_disappears_stops_the_worker(tmp_path, monkeypatch, capsys):
    train = fake_training()
    data = tmp_path / "data"
    data.mkdir()
    setup = Setup(tmp_path, data, train=train)
    data.rmdir()
    assert setup.run(trials=2) == 2
    assert f"error: data: the data folder {data} is gone" in capsys.readouterr().err


def test_a_changed_spec_file_stops_the_worker(tmp_path, monkeypatch, capsys):
    def edit_then_train(*args, **kwargs):
        setup.spec.path.write_text(setup.spec.path.read_text().replace("epochs = 2", "epochs = 3"))
        return fake_training()(*args, **kwargs)

    train = edit_then_train
    setup = Setup(tmp_path, train=train)
    assert setup.run(trials=5) == 2
    assert len(setup.study.trials) == 1 and "changed since this worker started" in capsys.readouterr().err


# -- folders and weights ---------------------------------------------------------------------------
def test_two_studies_of_one_name_in_two_storages_never_share_folders(tmp_path, monkeypatch):
    train = fake_training()
    one, two = Setup(tmp_path / "a", train=train), Setup(tmp_path / "b", train=train)
    assert one.handle.uid() != two.handle.uid() and one.runs.name != two.runs.name


@pytest.mark.slow
def test_only_the_top_trials_keep_their_weights(tmp_path, monkeypatch):
    curves = {lr: [lr * 100] for lr in (1e-3, 2e-3, 3e-3, 4e-3, 5e-3)}
    train = fake_training(curves)
    setup = Setup(tmp_path, epochs=1, study="keep_weights = 2\n", train=train)
    for lr in (1e-3, 5e-3, 2e-3, 4e-3):
        setup.study.enqueue_trial({"optim.lr": lr, "model.head": "linear"})
    assert setup.run(trials=5) == 0
    by_lr = {t.params["optim.lr"]: t.number for t in setup.study.trials}
    kept = {lr for lr, number in by_lr.items() if setup.files.has(number, "best.pth")}
    assert kept == {5e-3, 4e-3, 3e-3}  # the top 2, and the baseline (lr 3e-3) as the reference
    assert all(setup.files.has(n, "val_predictions.npz") for n in by_lr.values())  # predictions stay


@pytest.mark.slow
def test_trials_stops_at_exactly_the_total(tmp_path, monkeypatch):
    train = fake_training()
    setup = Setup(tmp_path, train=train)
    assert setup.run(trials=3) == 0
    assert len(setup.study.trials) == 3
    assert "done: the study has its 3 finished trials" in setup.out.getvalue()


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a disk that really fills up (root only; CI runs as root)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_under_the_study_database_fails_the_trial_queues_its_retry_and_exits_2(small_disk, capsys):
    """The default layout: studies/<study>.db beside the trial folders, and the disk fills mid-trial."""
    filler = small_disk / "filler"
    inner, filled = fake_training(), []

    def train(config, data_dir=None, *, on_epoch=None, **kwargs):
        def fill_at_epoch_2(epoch, metrics):
            if epoch == 2 and not filled:
                filled.append(epoch)
                with open(filler, "wb") as out:
                    with contextlib.suppress(OSError):
                        while True:
                            out.write(bytes(1 << 16))
            on_epoch(epoch, metrics)
        return inner(config, data_dir, on_epoch=fill_at_epoch_2, **kwargs)

    setup = Setup(small_disk, train=train, epochs=4)
    assert setup.worker.reserve is not None
    assert setup.run(trials=2) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: disk full: the study database ")
    assert "to queue trial 0 for retry" in lines[0] and "free space and start the worker again" in lines[0]
    failed, retry = setup.study.trials
    assert failed.state == TrialState.FAIL and failed.user_attrs["reason"].startswith("disk full: the study database")
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0
    assert not list(small_disk.rglob(".tmp-*"))
    filler.unlink()  # space again: the next worker restores the reserve and runs the retry
    assert setup.run(trials=1) == 0
    assert setup.worker.reserve.path.stat().st_size == setup.worker.reserve.SIZE
    assert setup.study.trials[1].state == TrialState.COMPLETE
