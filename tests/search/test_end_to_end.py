"""The whole loop on a small real demo study: workers -> TensorBoard runs -> report -> best listing."""
import matplotlib.image
import numpy as np
import pytest

from search.report import main as report_main
from search.study.record import load_study
from search.study.storage import default_storage_url
from tests.search.conftest import load, worker, write_spec
from tests.tensorboard_reader import read_tensorboard, trial_run_dir


def study_handle(studies, name):
    return load_study(name, None, studies)


@pytest.mark.slow
def test_a_real_study_reports_and_lists(tmp_path, warm_cache, capsys):
    studies = tmp_path / "studies"
    write_spec(studies, "e2e", epochs=3, pruner='name = "median"\nn_startup_trials = 1\nn_warmup_steps = 1\nmin_trials = 1')
    proc = worker(studies, "e2e", "--trials", "4")
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output

    study = load(default_storage_url("e2e", studies), "e2e")
    uid = study_handle(studies, "e2e").uid()
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 4
    for trial in finished:
        board = read_tensorboard(trial_run_dir(studies, "e2e", uid, trial.number))
        epochs = trial.user_attrs["epochs_run"]
        assert [step for step, _ in board["scalars"]["lwlrap/val"]] == list(range(1, epochs + 1))
        assert board["metrics"]["hparam/epochs_run"] == epochs
        assert board["hparams"]["optim.epochs"] == 3

    out = tmp_path / "report"
    assert report_main(["--study", "e2e", "--studies-dir", str(studies), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "e2e" in text and "COMPLETE" in text and "python -m search.best --study e2e" in text
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 3
    for png in pngs:
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100 and np.ptp(image[..., :3]) > 0

    from search.best import main as best_main

    capsys.readouterr()
    assert best_main(["--study", "e2e", "--studies-dir", str(studies)]) == 0
    listing = capsys.readouterr().out
    best = max((t for t in finished if t.value is not None and t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert f"{best.value:.4f}" in listing
