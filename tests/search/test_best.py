"""search.best: listing, choosing the best feasible trial, and --export on a tiny demo study."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.best import main
from search.kaggle.export import member_configs, retrain_config
from search.kaggle.recipes import DEFAULT_RECIPES, RECIPES
from search.kaggle.study_export import choose_trial
from search.study.storage import default_storage_url, open_storage
from tests.conftest import TINY_OVERRIDES
from trainer import train_and_evaluate
from trainer.config import ConfigError, TrainConfig

LR = FloatDistribution(1e-3, 1e-2, log=True)
SPEC = """
[study]
name = "demo"
data = "demo"
data_scale = 0.05
epochs = 2

[base]
{base}

[space]
"optim.lr" = {{ float = [1e-3, 1e-2], log = true }}

[kernel]
budget_s = 3600
test_audio_s = 10000
"""


def _trial(value: float | None, lr: float, *, state=TrialState.COMPLETE, feasible: bool = True, **attrs):
    return create_trial(state=state, value=value, params={"optim.lr": lr}, distributions={"optim.lr": LR},
                        user_attrs={"feasible": feasible, "epochs_run": 2, **attrs},
                        system_attrs={"constraints:kernel_time": -100.0 if feasible else 250.0})


@pytest.fixture(scope="module")
def studies(demo_data, session_cache, tmp_path_factory) -> Path:
    """A study whose baseline (trial 0) really ran; trial 1 scores higher but is over the kernel budget."""
    studies = tmp_path_factory.mktemp("studies")
    base = "\n".join(f'"{k}" = {json.dumps(v)}' for k, v in TINY_OVERRIDES.items() if k != "optim.epochs")
    (studies / "demo.toml").write_text(SPEC.format(base=base))
    config = TrainConfig().with_overrides(TINY_OVERRIDES)
    result = train_and_evaluate(config, demo_data, workdir=studies / "demo" / "trials" / "0", progress=False,
                                verbose=False, cache_dir=session_cache)
    study = optuna.create_study(storage=open_storage(default_storage_url("demo", studies)), study_name="demo",
                                direction="maximize")
    study.add_trial(_trial(result.best_lwlrap, 3e-3, is_baseline=True, config=config.to_json(),
                           run_dir=str(studies / "demo" / "trials" / "0"), kernel_time_s=12.0))
    study.add_trial(_trial(0.99, 5e-3, feasible=False, kernel_time_s=4000.0,
                           config=config.with_overrides({"optim.lr": 5e-3}).to_json()))
    study.add_trial(_trial(None, 2e-3, state=TrialState.PRUNED))
    return studies


@pytest.mark.slow
def test_listing_ranks_trials_and_skips_infeasible_ones(studies, capsys):
    assert main(["--study", "demo", "--studies-dir", str(studies)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows[:2]] == ["1", "0"]  # ranked by lwlrap: the infeasible one on top
    assert "infeasible" in " ".join(rows[0]) and "optim.lr=0.005" in " ".join(rows[0])
    assert "(baseline)" in " ".join(rows[1])
    assert "best feasible trial: 0" in out
    assert json.loads(out[out.index("{"):])["optim"]["lr"] == 3e-3  # the best config, in full


@pytest.mark.slow
def test_export_retrains_the_best_feasible_trial(studies, tmp_path, capsys):
    out = tmp_path / "export"
    code = main(["--study", "demo", "--studies-dir", str(studies), "--export", "--recipe", "single", "--out", str(out),
                 "--kaggle-user", "someone"])
    assert code == 0
    printed = capsys.readouterr().out
    study = optuna.load_study(study_name="demo", storage=open_storage(default_storage_url("demo", studies)))
    record = json.loads((out / "export.json").read_text())
    assert record["trial"] == 0 and record["retrained_config_equals_trial"]
    assert record["retrained_lwlrap"] == pytest.approx(study.trials[0].value, abs=1e-9)  # same seed, CPU
    assert "retrained lwlrap" in printed and "difference +0.0000" in printed
    assert record["inference"]["seconds_per_clip"] > 0 and record["inference"]["projected_for_clips"] == 3361

    state = torch.load(out / "best.pth", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    meta = json.loads((out / "config.json").read_text())
    assert meta["format"] == "fat2019-search-export/3" and meta["pooling"] == "mean"
    assert [(m["file"], m["prefix"], m["weight"], m["trial"]) for m in meta["members"]] == [("best.pth", "", 1.0, 0)]
    assert TrainConfig.from_dict(meta["members"][0]["train_config"]) == TrainConfig().with_overrides(TINY_OVERRIDES)
    assert len(meta["labels"]) == 80
    dataset = json.loads((out / "dataset-metadata.json").read_text())
    assert dataset["id"] == "someone/fat2019-demo" and 6 <= len(dataset["title"]) <= 50 and dataset["licenses"]
    assert f"kaggle datasets create -p {out}" in (out / "SUBMIT.md").read_text()
    assert (out / "kernel.py").is_file()


@pytest.mark.slow
def test_export_of_a_seed_ensemble_with_full_curated(studies, tmp_path, capsys):
    out = tmp_path / "export"
    code = main(["--study", "demo", "--studies-dir", str(studies), "--export", "--out", str(out), "--seeds", "2",
                 "--epochs", "1", "--full-curated", "--pooling", "geometric", "--trial", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "config.json").read_text())
    assert meta["pooling"] == "geometric"
    assert [(m["file"], m["prefix"], m["seed"], m["checkpoint"], m["weight"]) for m in meta["members"]] == [
        ("best.pth", "members.0.", 0, "last", 0.5), ("best.pth", "members.1.", 1, "last", 0.5)]
    configs = [TrainConfig.from_dict(m["train_config"]) for m in meta["members"]]
    assert [(c.seed, c.optim.epochs, c.data.full_curated) for c in configs] == [(0, 1, True), (1, 1, True)]
    assert sorted(p.name for p in out.glob("*.pth")) == ["best.pth"]
    pooled = torch.load(out / "best.pth", weights_only=True)  # one plain state_dict, each member under its prefix
    assert {key.split(".", 2)[1] for key in pooled} == {"0", "1"}
    assert "not a held-out score" in printed and "the configs differ" in printed
    dataset = json.loads((out / "dataset-metadata.json").read_text())
    assert dataset["id"].startswith("YOUR-KAGGLE-USERNAME/")
    assert "YOUR-KAGGLE-USERNAME" in (out / "SUBMIT.md").read_text()


def test_choose_trial_refuses_infeasible_and_unfinished(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.add_trial(_trial(0.9, 5e-3, feasible=False))
    study.add_trial(_trial(None, 2e-3, state=TrialState.PRUNED))
    with pytest.raises(LookupError, match="exceed the kernel time budget"):
        choose_trial(study)
    with pytest.raises(LookupError, match="--trial 1: it is PRUNED"):
        choose_trial(study, 1)
    with pytest.raises(LookupError, match="--trial 7: study .* has no such trial"):
        choose_trial(study, 7)
    assert choose_trial(study, 0).number == 0  # asked for by number: exported (with a warning in the CLI)


def test_member_configs_for_seeds_and_folds():
    base = TrainConfig().with_overrides(TINY_OVERRIDES)
    seeds = member_configs(base, seeds=3, epochs=5)
    assert [c.seed for c in seeds] == [0, 1, 2] and {c.optim.epochs for c in seeds} == {5}
    folds = member_configs(base, folds=4)
    assert [(c.data.n_folds, c.data.val_fold) for c in folds] == [(4, 0), (4, 1), (4, 2), (4, 3)]
    assert member_configs(base) == [base]
    with pytest.raises(ConfigError, match="--folds with --full-curated"):
        member_configs(base, folds=3, full_curated=True)
    with pytest.raises(ConfigError, match="--seeds and --folds"):
        member_configs(base, seeds=2, folds=3)


def test_cli_errors_are_one_line(studies, tmp_path, capsys):
    assert main(["--study", "nope", "--studies-dir", str(studies)]) == 2
    assert "error: " in capsys.readouterr().err
    code = main(["--study", "demo", "--studies-dir", str(studies), "--export", "--out", str(tmp_path / "x"),
                 "--dataset-slug", "Bad Slug"])
    assert code == 2
    assert "--dataset-slug 'Bad Slug'" in capsys.readouterr().err
    assert main(["--study", "demo", "--studies-dir", str(studies), "--export", "--trial", "999"]) == 2
    printed = capsys.readouterr()
    assert "--trial 999: study 'demo' has no such trial" in printed.err and printed.out == ""  # no listing first


@pytest.mark.parametrize("flags, message", [
    (["--export", "--reuse-checkpoints", "--epochs", "3"], "--reuse-checkpoints exports the trials' own weights; "
                                                          "--epochs, --full-curated and longer recipes ask for retraining"),
    (["--export", "--reuse-checkpoints", "--seeds", "2"], "--seeds and --folds ask for retraining"),
    (["--export", "--reuse-checkpoints", "--trial", "0"], "--reuse-checkpoints: trial(s) 0 have no stored best.pth"),
    (["--ensemble", "3", "--trial", "0"], "--ensemble selects its members from the whole study; --trial exports"),
    (["--ensemble", "3", "--folds", "3"], "--folds exports one trial's config"),
    (["--bags", "2"], "--bags applies to --ensemble K only"),
    (["--max-kernel-s", "100"], "--max-kernel-s applies to --ensemble K only"),
])
def test_conflicting_export_flags_are_refused_in_one_line(studies, tmp_path, capsys, flags, message):
    assert main(["--study", "demo", "--studies-dir", str(studies), "--out", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_export_without_recipe_flags_trains_the_default_recipe(studies, tmp_path, capsys):
    """Trial 0's model projects 12 kernel seconds: the measured best recipe fits the budget and is trained."""
    out = tmp_path / "export"
    assert main(["--study", "demo", "--studies-dir", str(studies), "--export", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    record = json.loads((out / "export.json").read_text())
    recipe = RECIPES[DEFAULT_RECIPES[0]]
    assert record["recipe"] == recipe.name and f"recipe {recipe.name} (the default: the best on held-out" in err
    members = [m["train_config"] for m in json.loads((out / "config.json").read_text())["members"]]
    assert len(members) == recipe.models
    assert {m["optim"]["epochs"] for m in members} == {2 * recipe.epochs_scale}  # the trial's 2 epochs, scaled
    assert record["trained_epochs"] == 2 * recipe.epochs_scale * recipe.models and record["train_wall_s"] > 0
    assert record["validation"]["held_out"] is not recipe.full_curated


@pytest.mark.slow
def test_the_default_recipe_falls_back_to_one_model_when_the_first_would_not_fit(costly_study, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["--study", "demo", "--studies-dir", str(costly_study), "--export", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    last = RECIPES[DEFAULT_RECIPES[-1]]
    assert json.loads((out / "export.json").read_text())["recipe"] == last.name
    assert f"{DEFAULT_RECIPES[0]} would not fit: 5 models x 1,000 s (trial 0's projected kernel time)" in err
    assert len(json.loads((out / "config.json").read_text())["members"]) == 1


@pytest.mark.slow
def test_a_longer_recipe_stretches_the_trial_and_full_curated_says_what_stands_in(studies, tmp_path, capsys):
    out = tmp_path / "longer"
    assert main(["--study", "demo", "--studies-dir", str(studies), "--export", "--recipe", "single-2x",
                 "--out", str(out)]) == 0
    member = json.loads((out / "config.json").read_text())["members"][0]
    assert member["train_config"]["optim"]["epochs"] == 4  # the trial's 2, doubled
    record = json.loads((out / "export.json").read_text())
    assert record["recipe"] == "single-2x" and record["validation"] == {"held_out": True}
    assert record["trained_epochs"] == 4

    out = tmp_path / "full"
    assert main(["--study", "demo", "--studies-dir", str(studies), "--export", "--recipe", "full-curated",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    study = optuna.load_study(study_name="demo", storage=open_storage(default_storage_url("demo", studies)))
    validation = json.loads((out / "export.json").read_text())["validation"]
    assert validation["held_out"] is False and validation["stands_in"] == study.trials[0].value
    assert "trial 0's reported lwlrap" in validation["stands_in_source"]
    assert "no held-out validation: the models trained on the validation clips" in printed


def test_retrain_config_scales_epochs_and_warmup():
    base = TrainConfig().with_overrides({**TINY_OVERRIDES, "optim.epochs": 10, "optim.warmup_epochs": 2,
                                         "optim.schedule": "cosine"})
    longer = retrain_config(base, epochs_scale=3)
    assert (longer.optim.epochs, longer.optim.warmup_epochs) == (30, 6)
    assert longer.diff(base).keys() == {"optim.epochs", "optim.warmup_epochs"}
    with pytest.raises(ConfigError, match="--epochs 5 and a recipe at 3x"):
        retrain_config(base, epochs=5, epochs_scale=3)


def test_every_recipe_is_consistent():
    for name, recipe in RECIPES.items():
        assert recipe.name == name and recipe.epochs_scale >= 1
        assert not (recipe.folds and recipe.seeds > 1) and not (recipe.folds and recipe.full_curated)
        assert recipe.as_trained == (name in ("single", "ensemble-8", "cv-folds"))
    assert set(DEFAULT_RECIPES) <= set(RECIPES) and all(RECIPES[n].ensemble is None for n in DEFAULT_RECIPES)
    assert RECIPES[DEFAULT_RECIPES[-1]].models == 1  # the last default always fits the kernel budget


@pytest.fixture()
def costly_study(tmp_path) -> Path:
    """One COMPLETE trial whose model alone takes 1,000 of the budget's 1,800 kernel seconds."""
    (tmp_path / "demo.toml").write_text(SPEC.format(base='"optim.lr" = 3e-3').replace("test_audio_s = 10000",
                                                                                "test_audio_s = 10000\nsafety = 0.5"))
    study = optuna.create_study(storage=open_storage(default_storage_url("demo", tmp_path)), study_name="demo",
                                direction="maximize")
    study.add_trial(_trial(0.7, 3e-3, kernel_time_s=1000.0, config=TrainConfig().with_overrides(
        TINY_OVERRIDES).to_json()))
    return tmp_path


@pytest.mark.parametrize("flags, message", [
    (["--recipe", "folds-5"], "--recipe folds-5: 5 models x 1,000 s (trial 0's projected kernel time) = 5,000 s > "
                              "the kernel budget of 1,800 s"),
    (["--seeds", "2"], "--seeds 2: 2 models x 1,000 s"),
])
def test_a_recipe_over_the_kernel_budget_is_refused_before_training(costly_study, tmp_path, capsys, flags, message):
    out = tmp_path / "x"
    assert main(["--study", "demo", "--studies-dir", str(costly_study), "--export", "--out", str(out), *flags]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and err[0].startswith(f"error: {message}") and err[0].endswith("; choose fewer models")
    assert not out.exists() and not (tmp_path / "x-runs").exists()  # nothing trained


@pytest.mark.parametrize("flags, message", [
    (["--export", "--recipe", "single-2x", "--epochs", "3"], "--recipe single-2x decides what is trained; --epochs "
                                                             "too: choose one"),
    (["--export", "--recipe", "seeds-3", "--reuse-checkpoints"], "--recipe seeds-3 decides what is trained; "
                                                                 "--reuse-checkpoints too"),
    (["--export", "--recipe", "ensemble-8", "--trial", "0"], "--recipe ensemble-8 selects its members from the whole "
                                                             "study; --trial exports one trial's config"),
    (["--recipe", "single-3x"], "--recipe single-3x says what --export trains: add --export"),
])
def test_conflicting_recipe_flags_are_refused_in_one_line(studies, tmp_path, capsys, flags, message):
    assert main(["--study", "demo", "--studies-dir", str(studies), "--out", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}")
    assert not (tmp_path / "x").exists()
