"""Which GPU a worker takes: the choice from the GPU list and the study's running trials (no CUDA needed), and
the ``device`` every trial records."""
from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.run import main
from search.worker.gpu_choice import (
    DeviceChoice,
    GpuInfo,
    choose_gpu,
    device_for_worker,
    gpu_index,
    running_devices_on_host,
)
from tests.search.conftest import fake_training, write_spec
from trainer import ConfigError, resolve_device

GiB = 2**30


def gpus(*free_gib: float) -> list[GpuInfo]:
    """A box whose GPU i has ``free_gib[i]`` GiB free of 80."""
    return [GpuInfo(index, int(free * GiB), 80 * GiB) for index, free in enumerate(free_gib)]


def study_with_running(devices_by_worker: list[tuple[str, str]], *, name: str = "s",
                       storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """A study whose RUNNING trials were started by these (worker_id, device) pairs."""
    study = optuna.create_study(study_name=name, storage=storage or optuna.storages.InMemoryStorage())
    for worker_id, device in devices_by_worker:
        trial = study.ask()
        trial.set_user_attr("worker_id", worker_id)
        trial.set_user_attr("device", device)
    return study


# -- the rule ---------------------------------------------------------------------------------------
def test_an_idle_box_takes_the_gpu_with_the_most_free_memory():
    choice = choose_gpu(gpus(40.0, 79.1, 60.0, 79.1), running_devices=[])
    assert choice == DeviceChoice("cuda:1", "0 of this study's workers on it, 79.1 GiB free; 4 GPUs")
    assert str(choice) == "cuda:1 (0 of this study's workers on it, 79.1 GiB free; 4 GPUs)"  # the start line's


def test_two_panes_on_cuda0_send_the_next_to_cuda1_even_with_less_free_memory():
    choice = choose_gpu(gpus(70.0, 20.0), running_devices=["cuda:0", "cuda:0"])
    assert choice.device == "cuda:1" and choice.reason.startswith("0 of this study's workers on it, 20.0 GiB free")
    assert choose_gpu(gpus(70.0, 20.0), ["cuda:0", "cuda:0", "cuda:1"]).device == "cuda:1"  # 1 worker beats 2
    assert choose_gpu(gpus(70.0, 20.0), ["cuda:0", "cuda:1"]).device == "cuda:0"  # 1 each: the free memory decides


def test_ties_are_broken_by_free_memory_then_the_lowest_index():
    assert choose_gpu(gpus(10.0, 30.0, 20.0), ["cuda:0", "cuda:1", "cuda:2"]).device == "cuda:1"
    assert choose_gpu(gpus(30.0, 30.0, 30.0), ["cuda:0"]).device == "cuda:1"
    one = choose_gpu(gpus(30.0), ["cuda:0", "cuda:0"])
    assert one.device == "cuda:0" and one.reason.endswith("2 of this study's workers on it, 30.0 GiB free; 1 GPU")


@pytest.mark.parametrize("device, index", [("cuda:2", 2), ("cuda", 0), ("cpu", None), ("mps", None), ("cuda:x", None)])
def test_a_recorded_device_names_its_gpu(device, index):
    assert gpu_index(device) == index


def test_devices_of_gpus_this_box_does_not_show_and_cpu_trials_do_not_count():
    # cuda:5 is a GPU of a pane with another CUDA_VISIBLE_DEVICES; a bare cuda is torch's current device, cuda:0
    assert choose_gpu(gpus(50.0, 50.0), ["cpu", "cuda:5", "cuda"]).device == "cuda:1"


# -- the study's running trials -----------------------------------------------------------------------
def test_only_trials_of_this_host_are_counted():
    study = study_with_running([("gpubox:11", "cuda:0"), ("gpubox:12", "cuda:1"), ("other:13", "cuda:2"),
                                ("gpubox2:14", "cuda:3"), ("gpubox:15", "cpu")])
    study.ask().set_user_attr("worker_id", "gpubox:16")  # asked, not yet started: no device to count
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert running_devices_on_host(running, "gpubox:99") == ["cuda:0", "cuda:1", "cpu"]
    assert running_devices_on_host(running, "other:1") == ["cuda:2"]


def test_the_worker_counts_its_own_studys_running_trials_on_its_own_host():
    """The path search.run takes after joining, with a lister standing in for torch's GPU list."""
    storage = optuna.storages.InMemoryStorage()
    mine = study_with_running([("gpubox:11", "cuda:0"), ("elsewhere:12", "cuda:1"), ("elsewhere:13", "cuda:1")],
                              storage=storage)
    finished = mine.ask()
    finished.set_user_attr("worker_id", "gpubox:14")
    finished.set_user_attr("device", "cuda:1")
    mine.tell(finished, 0.5)  # a finished trial frees its GPU
    study_with_running([("gpubox:21", "cuda:1"), ("gpubox:22", "cuda:1")], name="another study", storage=storage)
    two_equal = lambda: gpus(40.0, 40.0)  # noqa: E731
    choice = device_for_worker("cuda", mine, "gpubox:99", list_gpus=two_equal)
    assert choice == DeviceChoice("cuda:1", "0 of this study's workers on it, 40.0 GiB free; 2 GPUs")
    assert device_for_worker("auto", mine, "gpubox:99", list_gpus=two_equal) == choice
    assert device_for_worker("cuda", mine, "elsewhere:99", list_gpus=two_equal).device == "cuda:0"


def test_cuda_n_pins_however_busy_its_gpu_is():
    study = study_with_running([("gpubox:11", "cuda:1"), ("gpubox:12", "cuda:1")])
    pinned = device_for_worker("cuda:1", study, "gpubox:99", list_gpus=lambda: gpus(10.0, 70.0))
    assert str(pinned) == "cuda:1 (pinned by --device)"


@pytest.mark.parametrize("seen, says", [(2, "torch sees 2 GPUs, cuda:0 to cuda:1"), (1, "torch sees 1 GPU, cuda:0")])
def test_a_pinned_gpu_torch_does_not_see_is_refused_in_one_line(monkeypatch, seen, says):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a box with ``seen`` GPUs, as torch reports it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: seen)
    with pytest.raises(ConfigError) as refused:
        resolve_device("cuda:2")
    assert str(refused.value) == f"device 'cuda:2': {says} (CUDA_VISIBLE_DEVICES restricts and renumbers them)"
    assert str(resolve_device(f"cuda:{seen - 1}")) == f"cuda:{seen - 1}"  # the last GPU it sees is fine


@pytest.mark.skipif(torch.cuda.device_count() > 2, reason="needs a machine where torch sees at most 2 GPUs")
def test_the_cli_refuses_a_pinned_gpu_torch_does_not_see_before_it_touches_the_study(tmp_path, capsys):
    write_spec(tmp_path, "pin")
    assert main(["--study", "pin", "--studies-dir", str(tmp_path), "--trials", "1", "--device", "cuda:2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device 'cuda:2': torch sees ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pin.db").exists()


def test_cpu_is_used_as_asked_without_listing_gpus():
    def no_lister() -> list[GpuInfo]:
        raise AssertionError("a cpu worker has no GPU to choose")

    assert str(device_for_worker("cpu", study_with_running([]), "gpubox:1", list_gpus=no_lister)) == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_auto_without_a_gpu_says_why_it_is_not_on_one():
    choice = device_for_worker("auto", study_with_running([]), "gpubox:1", list_gpus=lambda: [])
    assert choice.device == str(resolve_device("auto")) and choice.reason == "auto: torch sees no CUDA GPU"


# -- what a trial records ------------------------------------------------------------------------------
def test_a_worker_through_the_cli_records_its_device_on_every_trial(tmp_path, warm_cache, capsys):
    studies = tmp_path / "studies"
    write_spec(studies, "dev", epochs=1)
    assert main(["--study", "dev", "--studies-dir", str(studies), "--trials", "1", "--threads", "1",
                 "--device", "cpu"]) == 0
    start_line = next(line for line in capsys.readouterr().out.splitlines() if " joined study dev " in line)
    assert ", device cpu; " in start_line
    (trial,) = optuna.load_study(study_name="dev", storage=f"sqlite:///{studies / 'dev.db'}").trials
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["device"] == "cpu"


def test_without_a_device_a_trial_records_the_one_its_config_resolves_to(tmp_path):
    from search.study.locate import locate
    from search.worker.build import build_worker
    from search.worker.objective import Objective

    studies = tmp_path / "studies"
    write_spec(studies, "cfg", epochs=1)
    worker = build_worker(locate("cfg", studies, spec_required=True), tmp_path, threads=1, worker_id="box:1")
    spec = worker.spec
    trained_on = []

    def train(config, data_dir=None, **kwargs):
        trained_on.append(kwargs["device"])
        return fake_training()(config, data_dir, **kwargs)

    # an Objective without the worker's device: each config's own, resolved
    assert worker.run(Objective(spec, tmp_path, worker.start, device=None, train=train), trials=1) == 0
    expected = str(resolve_device(spec.base_config().device))  # the config's "auto": cpu here, cuda on a GPU box
    assert worker.study.trials[0].user_attrs["device"] == expected and trained_on == [expected]
