"""search.best --rescore: the top trials trained again on another validation split, chosen by the mean score."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.best import main
from search.kaggle import rescore
from search.kaggle.rescore import RESCORE_FILE, rescore_config, rescore_top
from search.study.storage import default_storage_url, open_storage
from tests.conftest import TINY_OVERRIDES
from trainer import ConfigError, TrainConfig

LR = FloatDistribution(1e-4, 1e-1, log=True)
SPEC = """
[study]
name = "picky"
data = "demo"
data_scale = 0.05
epochs = 2

[base]
{base}

[space]
"optim.lr" = {{ float = [1e-4, 1e-1], log = true }}
"""
# trial number -> (its own value, lr, feasible); the fake trainer's re-score is keyed by lr
TRIALS = {0: (0.60, 3e-3, True), 1: (0.62, 5e-3, True), 2: (0.58, 2e-3, True), 3: (0.90, 1e-2, False),
          4: (0.40, 1e-3, True)}
RESCORES = {3e-3: 0.70, 5e-3: 0.50, 2e-3: 0.65, 1e-2: 0.99, 1e-3: 0.99}


def _config(lr: float) -> TrainConfig:
    return TrainConfig().with_overrides({**TINY_OVERRIDES, "optim.lr": lr})


@pytest.fixture()
def studies(tmp_path) -> Path:
    """Trial 1 is the study's best; trial 3 scores higher but is over the kernel budget; 4 is last."""
    studies = tmp_path / "studies"
    studies.mkdir()
    base = "\n".join(f'"{k}" = {json.dumps(v)}' for k, v in TINY_OVERRIDES.items() if k != "optim.epochs")
    (studies / "picky.toml").write_text(SPEC.format(base=base))
    study = optuna.create_study(storage=open_storage(default_storage_url("picky", studies)), study_name="picky",
                                direction="maximize")
    for value, lr, feasible in TRIALS.values():
        study.add_trial(create_trial(value=value, params={"optim.lr": lr}, distributions={"optim.lr": LR},
                                     user_attrs={"config": _config(lr).to_json(), "epochs_run": 2, "threads": 1},
                                     system_attrs={"constraints:kernel_time": -1.0 if feasible else 1.0}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"optim.lr": 4e-3}, distributions={"optim.lr": LR},
                                 intermediate_values={0: 0.95}))
    return studies


@pytest.fixture()
def trainings(monkeypatch) -> list[TrainConfig]:
    """Replaces the re-scoring's training: returns RESCORES[lr] and records each config it was asked to train."""
    trained: list[TrainConfig] = []

    def fake(config, data_dir, **kwargs):
        trained.append(config)
        return SimpleNamespace(best_lwlrap=RESCORES[config.optim.lr])
    monkeypatch.setattr(rescore, "train_and_evaluate", fake)
    return trained


def _study(studies: Path) -> optuna.Study:
    return optuna.load_study(study_name="picky", storage=open_storage(default_storage_url("picky", studies)))


def test_another_split_seed_and_seed_or_the_next_fold():
    config = _config(3e-3)
    again = rescore_config(config, 2)
    assert again.data.split_seed == config.data.split_seed + 2 and again.seed == config.seed + 2
    assert again.diff(config).keys() == {"data.split_seed", "seed"}  # nothing else: the epochs stay the trial's
    folds = config.with_overrides({"data.n_folds": 5, "data.val_fold": 4})
    assert rescore_config(folds, 1).data.val_fold == 0 and rescore_config(folds, 1).data.split_seed == 0
    with pytest.raises(ConfigError, match="only data.n_folds=5 folds"):
        rescore_config(folds, 5)


def test_the_top_feasible_trials_are_chosen_by_their_mean_not_their_first_value(studies, tmp_path, trainings):
    ranked = rescore_top(_study(studies), tmp_path / "folder", tmp_path, 3)
    # top 3 feasible by value: 1 (0.62), 0 (0.60), 2 (0.58); infeasible 3 and fourth-best 4 are not trained
    assert sorted(c.optim.lr for c in trainings) == [2e-3, 3e-3, 5e-3]
    assert [r.trial.number for r in ranked] == [0, 2, 1]  # means 0.65, 0.615, 0.56: the study's best drops
    assert ranked[0].rescores == (0.70,) and ranked[0].score == pytest.approx(0.65)
    assert all(c.data.split_seed == 1 and c.seed == 1 for c in trainings)
    kept = json.loads((tmp_path / "folder" / RESCORE_FILE).read_text())
    assert kept["0/1"]["lwlrap"] == 0.70 and kept["0/1"]["trial_lwlrap"] == 0.60


def test_rescores_are_kept_and_only_new_splits_are_trained(studies, tmp_path, trainings):
    rescore_top(_study(studies), tmp_path, tmp_path, 2)
    assert len(trainings) == 2
    rescore_top(_study(studies), tmp_path, tmp_path, 2)
    assert len(trainings) == 2  # read back from rescore.json
    ranked = rescore_top(_study(studies), tmp_path, tmp_path, 2, splits=2)
    assert len(trainings) == 4 and all(c.data.split_seed == 2 for c in trainings[2:])
    assert ranked[0].rescores == (0.70, 0.70)


def test_a_broken_rescore_file_is_one_clear_error(studies, tmp_path, trainings):
    (tmp_path / RESCORE_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="rescore.json: not JSON .*delete it to re-score from scratch"):
        rescore_top(_study(studies), tmp_path, tmp_path, 2)
    assert not trainings


def test_the_listing_prints_the_rescore_table_and_the_choice(studies, trainings, capsys):
    assert main(["--study", "picky", "--studies-dir", str(studies), "--rescore", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out[out.index("re-scored"):].splitlines()[1:4]]
    assert [r[0] for r in rows] == ["0", "2", "1"] and rows[0][1:] == ["0.6000", "0.7000", "0.6500"]
    assert "chosen by the mean: trial 0 (trial 0 replaces the study's best, trial 1)" in out
    assert (studies / "picky" / RESCORE_FILE).is_file()


@pytest.mark.parametrize("flags, message", [
    (["--rescore", "3", "--trial", "0"], "--rescore 3 chooses the trial among the top 3; --trial 0 names one"),
    (["--rescore", "3", "--ensemble", "2"], "--ensemble selects its members from the whole study; --rescore"),
    (["--rescore-splits", "2"], "--rescore-splits applies to --rescore K only"),
    (["--rescore", "1"], "--rescore 1: expected at least 2 trials to compare"),
    (["--rescore", "2", "--rescore-splits", "0"], "--rescore-splits 0: expected at least 1"),
])
def test_rescore_flag_mistakes_are_one_line(studies, trainings, capsys, flags, message):
    assert main(["--study", "picky", "--studies-dir", str(studies), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not trainings


@pytest.mark.slow
def test_export_after_rescore_exports_the_rescored_choice(studies, trainings, tmp_path, demo_data, capsys):
    out = tmp_path / "export"
    assert main(["--study", "picky", "--studies-dir", str(studies), "--rescore", "3", "--export", "--recipe", "single",
                 "--out", str(out)]) == 0
    record = json.loads((out / "export.json").read_text())
    assert record["trial"] == 0  # not the study's best, trial 1
    assert record["rescore"]["0"] == {"trial_lwlrap": 0.60, "rescores": [0.70], "mean": pytest.approx(0.65),
                                      "epochs_each": _config(3e-3).optim.epochs}
    exported = json.loads((out / "config.json").read_text())["members"][0]
    assert TrainConfig.from_dict(exported["train_config"]) == _config(3e-3)  # its own split, not the re-score's
