"""Cross-validated trials end to end: a study whose trials train every curated fold, report the out-of-fold lwlrap,
race at fold boundaries, resume at their fold after a kill, and export their fold models as trained."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from optuna.trial import TrialState

from search.best import main as best_main
from search.report import main as report_main
from search.run import main as run_main
from search.study.folds import curated_targets
from search.study.storage import default_storage_url
from tests.search.conftest import load, wait_for, worker, write_spec
from trainer import lwlrap


@pytest.mark.slow
def test_a_cross_validated_study_reports_out_of_fold_lwlrap_and_exports_its_fold_models_untrained(
        tmp_path, warm_cache, capsys):
    studies = tmp_path / "studies"
    write_spec(studies, "cv", epochs=2, study="folds = 2")
    assert run_main(["--study", "cv", "--studies-dir", str(studies), "--trials", "2", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "fold 2/2 epoch 2/2" in printed  # the pane line says which fold
    trials = load(default_storage_url("cv", studies), "cv").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:
        attrs = trial.user_attrs
        assert attrs["folds"] == 2 and attrs["folds_done"] == 2 and len(attrs["fold_lwlrap"]) == 2
        assert attrs["epochs_run"] == 4 and set(trial.intermediate_values) == {1, 2, 4}
        assert trial.value == pytest.approx(attrs["oof_lwlrap"])
        assert trial.intermediate_values[4] == pytest.approx(trial.value)
    # the value is the lwlrap of the pooled out-of-fold predictions, every curated clip held out once
    run_dir = Path(trials[0].user_attrs["run_dir"])
    with np.load(run_dir / "val_predictions.npz") as stored:
        fnames = [str(f) for f in stored["fnames"]]
        targets = curated_targets(warm_cache)
        assert sorted(fnames) == sorted(targets) and stored["fold"].tolist().count(1) > 0
        assert lwlrap(np.stack([targets[f] for f in fnames]), stored["probs"].astype(np.float64)) == pytest.approx(
            trials[0].value, abs=1e-6)

    # the listing and the report show each trial's folds beside its out-of-fold value
    assert best_main(["--study", "cv", "--studies-dir", str(studies)]) == 0
    assert "out-of-fold lwlrap" in capsys.readouterr().out
    assert report_main(["--study", "cv", "--studies-dir", str(studies), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| rank | trial | out-of-fold lwlrap | per fold | spread |" in report
    assert "ships its 2 fold models as trained" in report
    assert "every one of them at its full budget would take 8:" in report  # 2 trials x 2 folds x 2 epochs
    capsys.readouterr()

    out = tmp_path / "export"
    assert best_main(["--study", "cv", "--studies-dir", str(studies), "--export", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "recipe cv-folds (the default" in err and "nothing is retrained" in err
    record = json.loads((out / "export.json").read_text())
    assert record["trained_epochs"] == 0 and record["cross_validation"]["folds"] == 2
    assert record["cross_validation"]["epochs_saved"] == 4
    assert sorted(p.name for p in out.glob("*.pth")) == ["best.pth"]
    pooled = torch.load(out / "best.pth", weights_only=True)
    assert {key.split(".", 2)[1] for key in pooled} == {"0", "1"}
    meta = json.loads((out / "config.json").read_text())
    assert [m["train_config"]["data"]["val_fold"] for m in meta["members"]] == [0, 1]
    assert not (tmp_path / "export-runs").exists()  # nothing was trained

    # the ensemble selects on the out-of-fold predictions (every curated clip) and ships its members' fold models
    ensemble = tmp_path / "ensemble"
    assert best_main(["--study", "cv", "--studies-dir", str(studies), "--export", "--recipe", "ensemble-8",
                      "--out", str(ensemble)]) == 0
    printed = capsys.readouterr().out
    assert f"({len(targets)} clips, split" in printed  # all curated clips, not a 1/K split
    meta = json.loads((ensemble / "config.json").read_text())
    chosen = {m["trial"] for m in meta["members"]}
    assert len(meta["members"]) == 2 * len(chosen)
    assert sorted((m["trial"], m["val_fold"]) for m in meta["members"]) == sorted(
        (n, k) for n in chosen for k in (0, 1))
    assert sum(m["weight"] for m in meta["members"]) == pytest.approx(1.0)


def _folds_done(url: str, name: str) -> int:
    try:
        trials = load(url, name).trials
    except KeyError:
        return -1
    return int(trials[0].user_attrs.get("folds_done", 0)) if trials else -1


@pytest.mark.slow
def test_a_kill_between_folds_loses_no_finished_fold_and_the_retry_completes_every_fold(tmp_path, warm_cache):
    studies = tmp_path / "studies"
    write_spec(studies, "cvkill", epochs=3, study="folds = 3")
    url = default_storage_url("cvkill", studies)
    first = worker(studies, "cvkill", "--trials", "1")
    wait_for(lambda: _folds_done(url, "cvkill") >= 1, 120, "fold 1 of trial 0 to finish")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    done_before = _folds_done(url, "cvkill")
    time.sleep(2.5)  # the grace period after the last heartbeat

    second = worker(studies, "cvkill", "--trials", "1")
    output = second.communicate(timeout=180)[0]
    assert second.returncode == 0, output
    original, retry = load(url, "cvkill").trials
    assert original.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from_trial"] == 0
    assert retry.user_attrs["resumed_from_epoch"] >= done_before * 3  # the finished folds were not trained again
    assert f"resumes trial 0 at fold {done_before + 1}/3" in output
    assert retry.user_attrs["folds_done"] == 3 and len(retry.user_attrs["fold_lwlrap"]) == 3
    assert set(retry.intermediate_values) == {1, 2, 3, 6, 9}
    # every fold model is stored under the retry and loads: the export ships all three, untrained, and its
    # kernel (timed on test clips) runs them
    out = tmp_path / "export"
    assert best_main(["--study", "cvkill", "--studies-dir", str(studies), "--export", "--out", str(out)]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert [m["trial"] for m in meta["members"]] == [retry.number] * 3
    assert json.loads((out / "export.json").read_text())["inference"]["clips"] > 0
