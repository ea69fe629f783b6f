"""The objective (in-process) and search.run workers (subprocesses): parallel panes, kill -9, Ctrl-C, refusals."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import search.objective as objective_module
from search.objective import Objective, TrialFailed, is_feasible
from search.run import UsageError, join_study, main
from search.spec import load_spec
from search.storage import default_storage_url, open_storage
from trainer import NonFiniteLossError, Result

from tests.search.conftest import load, unique_name, wait_for, worker, write_spec

KERNEL = "[kernel]\nbudget_s = 3600\ntest_audio_s = 25500\nsafety = 0.5\n"


def _objective(tmp_path: Path, data: Path, **spec_args) -> tuple[Objective, optuna.Study]:
    spec = load_spec(write_spec(tmp_path / "studies", "obj", **spec_args))
    study = optuna.create_study(direction="maximize", pruner=spec.make_pruner(),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(spec.baseline_params())
    return Objective(spec, data, trials_dir=tmp_path / "trials", tensorboard_dir=tmp_path / "tb", threads=1,
                     worker_id="test-worker"), study


def _fake_training(scores: dict[float, list[float]] | None = None, *, error: BaseException | None = None,
                   inference_cost: float = 0.001):
    """A stand-in for train_and_evaluate: per-epoch lwlrap chosen by the trial's lr."""
    def fake(config, data_dir=None, *, on_epoch=None, workdir=None, **kwargs):
        if error is not None:
            raise error
        history = (scores or {}).get(config.optim.lr, [0.5] * config.optim.epochs)
        for epoch, value in enumerate(history, start=1):
            on_epoch(epoch, {"lwlrap": value, "best_lwlrap": max(history[:epoch]), "train_loss": 0.1,
                             "epoch_time": 0.01})
        return Result(best_lwlrap=max(history), last_lwlrap=history[-1], best_epoch=history.index(max(history)) + 1,
                      epochs_run=len(history), history=[], wall_time=0.1, epoch_time=0.01,
                      best_path=Path(workdir) / "best.pth", last_path=Path(workdir) / "last.pth",
                      feature_cache_key="k", inference_cost=inference_cost)
    return fake


# -- the objective, in-process --------------------------------------------------------------------
def test_objective_trains_reports_each_epoch_and_records_attrs(tmp_path, warm_cache):
    objective, study = _objective(tmp_path, warm_cache, extra=KERNEL)
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert set(trial.intermediate_values) == {1, 2} and trial.value == max(trial.intermediate_values.values())
    attrs = trial.user_attrs
    assert attrs["epochs_run"] == 2 and attrs["worker_id"] == "test-worker" and attrs["wall_time"] > 0
    assert Path(attrs["run_dir"]) == tmp_path / "trials" / "0" and (tmp_path / "trials" / "0" / "last.pth").exists()
    assert any((tmp_path / "tb" / "trial-0").iterdir())
    assert len(attrs["feature_cache_key"]) > 0 and attrs["host"]
    assert attrs["kernel_time_s"] == pytest.approx(attrs["inference_cost"] * 25500, rel=1e-3, abs=0.1)
    assert attrs["feasible"] is True and is_feasible(trial)


def test_pruner_cuts_a_trial_that_lags_the_median(tmp_path, monkeypatch):
    scores = {3e-3: [0.5, 0.6, 0.7], 1e-3: [0.5, 0.6, 0.7], 2e-3: [0.5, 0.6, 0.7], 1e-4: [0.1, 0.1, 0.1]}
    monkeypatch.setattr(objective_module, "train_and_evaluate", _fake_training(scores))
    objective, study = _objective(tmp_path, None, epochs=3, pruner='name = "median"\nn_startup_trials = 2\n'
                                                                    'n_warmup_steps = 1')
    for lr in (1e-3, 2e-3, 1e-4):
        study.enqueue_trial({"optim.lr": lr, "model.head": "linear"})
    study.optimize(objective, n_trials=4)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert study.trials[3].user_attrs["epochs_run"] == 1  # warm-up: cut at epoch 1, not before


def test_nan_loss_prunes_with_reason_and_the_worker_goes_on(tmp_path, monkeypatch):
    fakes = iter([_fake_training(error=NonFiniteLossError("loss is nan")), _fake_training()])
    monkeypatch.setattr(objective_module, "train_and_evaluate", lambda *a, **k: next(fakes)(*a, **k))
    objective, study = _objective(tmp_path, None)
    study.optimize(objective, n_trials=2, catch=(TrialFailed,))
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["reason"] == "nan"


def test_out_of_memory_fails_with_reason_empties_cache_and_goes_on(tmp_path, monkeypatch):
    fakes = iter([_fake_training(error=torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")),
                  _fake_training()])
    emptied = []
    monkeypatch.setattr(objective_module, "train_and_evaluate", lambda *a, **k: next(fakes)(*a, **k))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    objective, study = _objective(tmp_path, None)
    study.optimize(objective, n_trials=2, catch=(TrialFailed,))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["reason"].startswith("out of memory: CUDA out of memory")
    assert emptied == [True]


def test_kernel_budget_marks_slow_trials_infeasible(tmp_path, monkeypatch):
    monkeypatch.setattr(objective_module, "train_and_evaluate", _fake_training(inference_cost=0.5))
    objective, study = _objective(tmp_path, None, extra=KERNEL)
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.user_attrs["kernel_time_s"] == pytest.approx(12750.0)
    assert trial.user_attrs["feasible"] is False and not is_feasible(trial)
    assert trial.constraints["kernel_time"] == pytest.approx(12750.0 - 1800.0)


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


def test_three_workers_share_one_study(tmp_path, warm_cache, storage_url):
    studies = tmp_path / "studies"
    name = unique_name("par")
    write_spec(studies, name, pruner='name = "median"\nn_startup_trials = 1\nn_warmup_steps = 1')
    url = storage_url(name)
    procs = [worker(studies, name, "--trials", "6", "--storage", url) for _ in range(3)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert all("done: the study has 6 finished trials" in out for out in outputs)
    trials = load(url, name).trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 6 <= len(finished) <= 8
    assert len({t.number for t in trials}) == len(trials)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    baseline = [t for t in trials if t.user_attrs.get("baseline")]
    assert [t.number for t in baseline] == [0]
    assert baseline[0].params == load_spec(studies / f"{name}.toml").baseline_params()
    assert any("#0 COMPLETE" in out and "(baseline)" in out for out in outputs)


def test_killed_worker_trial_is_failed_retried_and_resumed(tmp_path, warm_cache):
    studies = tmp_path / "studies"
    write_spec(studies, "kill", epochs=12)
    url = default_storage_url("kill", studies)
    first = worker(studies, "kill", "--trials", "1")
    wait_for(lambda: _epochs_of_first_trial(url, "kill") >= 2, 60, "two epochs of trial 0")
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


def test_ctrl_c_fails_the_trial_as_interrupted_queues_its_retry_and_exits_130(tmp_path, warm_cache):
    studies = tmp_path / "studies"
    write_spec(studies, "intr", epochs=12)
    url = default_storage_url("intr", studies)
    proc = worker(studies, "intr", "--trials", "3")
    wait_for(lambda: _epochs_of_first_trial(url, "intr") >= 1, 60, "an epoch of trial 0")
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 130, output
    assert "interrupted after" in output
    trials = load(url, "intr").trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["reason"] == "interrupted"
    retry = trials[1]
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0
    assert retry.intermediate_values == trials[0].intermediate_values


def test_timeout_stops_taking_new_trials(tmp_path, warm_cache, monkeypatch, capsys):
    def slow(*args, **kwargs):
        time.sleep(0.4)
        return _fake_training()(*args, **kwargs)

    monkeypatch.setattr(objective_module, "train_and_evaluate", slow)
    studies = tmp_path / "studies"
    write_spec(studies, "timeout")
    handler = signal.getsignal(signal.SIGINT)
    try:
        code = main(["--study", "timeout", "--studies-dir", str(studies), "--timeout", "0.6", "--seed", "3",
                     "--data", "demo", "--device", "cpu", "--threads", "1"])
    finally:
        signal.signal(signal.SIGINT, handler)
    assert code == 0
    output = capsys.readouterr().out
    assert "timeout 0.6s reached" in output and "#0 COMPLETE" in output
    assert "#2 " not in output  # each trial takes 0.4 s: a third would start after the timeout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_device_torch_cannot_see_is_refused_at_start(tmp_path, capsys):
    from search.run import main

    write_spec(tmp_path, "dev")
    assert main(["--study", "dev", "--studies-dir", str(tmp_path), "--trials", "1", "--device", "cuda"]) == 2
    assert "device 'cuda': torch sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "dev.db").exists()  # refused before it touched the study
