"""search.run workers as processes: parallel panes, kill -9, Ctrl-C, SIGTERM, refusals, one-line errors."""
from __future__ import annotations

import signal
import time

import pytest
import torch
from optuna.trial import TrialState

from search.run import main
from search.spec import load_spec
from search.study.join import UsageError, join_study
from search.study.storage import default_storage_url, open_storage
from tests.search.conftest import load, unique_name, wait_for, worker, write_spec


# -- joining a study --------------------------------------------------------------------------------
def test_a_worker_with_a_different_spec_is_refused_unless_forced(tmp_path, capsys):
    studies = tmp_path / "studies"
    spec = load_spec(write_spec(studies, "mismatch"))
    url = default_storage_url("mismatch", studies)
    join_study(open_storage(url), spec)
    write_spec(studies, "mismatch", epochs=3, space='"optim.lr" = { float = [1e-4, 5e-2], log = true }\n')
    changed = load_spec(studies / "mismatch.toml")
    with pytest.raises(UsageError, match="study.epochs: study has 2, this spec has 3") as info:
        join_study(open_storage(url), changed)
    assert "space.optim.lr" in str(info.value) and "--force" in str(info.value)
    assert main(["--study", "mismatch", "--studies-dir", str(studies), "--trials", "1"]) == 2
    assert "differs from the spec" in capsys.readouterr().err
    study = join_study(open_storage(url), changed, force=True)
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == 1


# -- workers as processes ---------------------------------------------------------------------------
def _epochs_of_first_trial(url: str, name: str) -> int:
    try:
        trials = load(url, name).trials
    except KeyError:  # the worker has not created the study yet
        return -1
    return len(trials[0].intermediate_values) if trials else -1


@pytest.mark.slow
def test_three_workers_share_one_study_and_stop_at_exactly_the_total(tmp_path, warm_cache, storage_url):
    studies = tmp_path / "studies"
    name = unique_name("par")
    write_spec(studies, name, pruner='name = "median"\nn_startup_trials = 1\nn_warmup_steps = 1\nmin_trials = 1',
               startup="near_baseline = 2")
    url = storage_url(name)
    procs = [worker(studies, name, "--trials", "6", "--storage", url) for _ in range(3)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert all("done: the study has its 6 finished trials" in out for out in outputs)
    trials = load(url, name).trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6  # not one more: a worker starts a trial only while finished + running < 6
    assert len({t.number for t in trials}) == len(trials)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    baseline = [t for t in trials if t.user_attrs.get("baseline")]
    assert [t.number for t in baseline] == [0]
    assert baseline[0].params == load_spec(studies / f"{name}.toml").baseline_params()
    assert any("#0   COMPLETE" in out and "(baseline)" in out for out in outputs)


def _worker_in_a_trial(tmp_path, name: str, trials: int, epochs: int):
    """A worker on a 12-epoch study, returned once its first trial has reported ``epochs`` epochs."""
    studies = tmp_path / "studies"
    write_spec(studies, name, epochs=12)
    url = default_storage_url(name, studies)
    proc = worker(studies, name, "--trials", str(trials))
    wait_for(lambda: _epochs_of_first_trial(url, name) >= epochs, 60, f"{epochs} epoch(s) of trial 0")
    return proc, studies, url


@pytest.mark.slow
def test_killed_worker_trial_is_failed_retried_and_resumed(tmp_path, warm_cache):
    first, studies, url = _worker_in_a_trial(tmp_path, "kill", trials=1, epochs=2)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    reported = len(load(url, "kill").trials[0].intermediate_values)
    time.sleep(2.5)  # the 2 s grace period after the last heartbeat

    second = worker(studies, "kill", "--trials", "1")
    output = second.communicate(timeout=90)[0]
    assert second.returncode == 0, output
    original, retry = load(url, "kill").trials
    assert original.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["retry_of"] == 0 and retry.system_attrs["failed_trial"] == 0
    assert retry.user_attrs["resumed_from_trial"] == 0
    assert retry.user_attrs["resumed_from_epoch"] >= reported >= 2  # not from epoch 0
    assert retry.user_attrs["epochs_run"] == 12 and set(retry.intermediate_values) == set(range(1, 13))
    assert "#0 stopped beating (its worker died): queued for retry as #1" in output


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_fails_the_trial_as_interrupted_queues_its_retry_and_exits(tmp_path, warm_cache, sig, code):
    proc, _, url = _worker_in_a_trial(tmp_path, "intr", trials=3, epochs=1)
    proc.send_signal(sig)
    output = proc.communicate(timeout=30)[0]
    assert proc.returncode == code, output
    assert "interrupted after" in output and f"{signal.Signals(sig).name}: stopping the running trial" in output
    trials = load(url, "intr").trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["reason"] == "interrupted"
    retry = trials[1]
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["baseline"] is True  # the study still gets its baseline
    assert retry.intermediate_values == {}  # until it resumes: then the epochs its checkpoint keeps


@pytest.mark.slow
def test_a_double_ctrl_c_still_queues_the_retry(tmp_path, warm_cache):
    proc, _, url = _worker_in_a_trial(tmp_path, "double", trials=3, epochs=1)
    proc.send_signal(signal.SIGINT)
    seen = []
    while not any("SIGINT: stopping the running trial" in line for line in seen):
        seen.append(proc.stdout.readline())
    proc.send_signal(signal.SIGINT)  # the impatient second press, while the first one is being handled
    output = "".join(seen) + proc.communicate(timeout=30)[0]
    assert proc.returncode == 130, output
    trials = load(url, "double").trials
    assert trials[0].state == TrialState.FAIL and trials[1].state == TrialState.WAITING
    assert trials[1].user_attrs["retry_of"] == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_device_torch_cannot_see_is_refused_at_start(tmp_path, capsys):
    from search.run import main

    write_spec(tmp_path, "dev")
    assert main(["--study", "dev", "--studies-dir", str(tmp_path), "--trials", "1", "--device", "cuda"]) == 2
    assert "device 'cuda': torch sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "dev.db").exists()  # refused before it touched the study


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    write_spec(tmp_path, "errs")
    assert main(["--study", "errs", "--studies-dir", str(tmp_path), "--trials", "1",
                 "--storage", "postgresql://fat:secret@127.0.0.1:1/none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: postgresql://fat:***@127.0.0.1:1/none: cannot open the study storage")
    assert "secret" not in err and len(err.strip().splitlines()) == 1
    assert main(["--study", "errz", "--studies-dir", str(tmp_path), "--trials", "1"]) == 2
    assert "study spec not found; did you mean 'errs'? specs in" in capsys.readouterr().err
    (tmp_path / "latin1.toml").write_bytes('[study]\nname = "caf\xe9"\n'.encode("latin-1"))
    assert main(["--study", "latin1", "--studies-dir", str(tmp_path), "--trials", "1"]) == 2
    assert "latin1.toml: not UTF-8 text" in capsys.readouterr().err


def test_a_studies_folder_that_cannot_be_written_is_one_line(tmp_path, capsys):
    write_spec(tmp_path, "ro")
    (tmp_path / "ro").write_text("a file where the study's folder should go")  # like a read-only folder: EEXIST
    assert main(["--study", "ro", "--studies-dir", str(tmp_path), "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(tmp_path / "ro") in err


def test_a_background_writer_on_a_full_disk_prints_no_traceback(capsys):
    """TensorBoard's event thread dies on a full disk and hands the error to the training thread (one line, exit 2);
    its own traceback would bury that line. Other errors in threads still print theirs."""
    import errno
    import threading

    from search.run import quiet_full_disk_in_threads

    def die(exc: BaseException) -> None:
        def run() -> None:
            raise exc
        thread = threading.Thread(target=run)
        previous, threading.excepthook = threading.excepthook, quiet_full_disk_in_threads
        try:
            thread.start()
            thread.join()
        finally:
            threading.excepthook = previous

    die(OSError(errno.ENOSPC, "No space left on device"))
    assert capsys.readouterr().err == ""
    die(ZeroDivisionError("a bug"))
    assert "ZeroDivisionError: a bug" in capsys.readouterr().err
