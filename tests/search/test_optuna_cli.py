"""Optuna's own CLI reads our studies: the storage is plain Optuna RDB, no private format."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.study.storage import default_storage_url, open_storage

OPTUNA = str(Path(sys.executable).parent / "optuna")


def _optuna(*args: str) -> list[dict]:
    result = subprocess.run([OPTUNA, *args, "--format", "json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_optuna_studies_and_trials_read_a_study(tmp_path):
    url = default_storage_url("fat2019", tmp_path / "studies")
    assert url == f"sqlite:///{tmp_path / 'studies' / 'fat2019.db'}"
    study = optuna.create_study(study_name="fat2019", storage=open_storage(url), direction="maximize")
    for lr, value in ((1e-3, 0.41), (3e-3, 0.47)):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, params={"optim.lr": lr},
                                     distributions={"optim.lr": FloatDistribution(1e-4, 1e-2, log=True)},
                                     user_attrs={"epochs_run": 6}))

    studies = _optuna("studies", "--storage", url)
    assert [(s["name"], s["n_trials"], s["direction"]) for s in studies] == [("fat2019", 2, ["MAXIMIZE"])]

    trials = _optuna("trials", "--study-name", "fat2019", "--storage", url)
    assert [t["value"] for t in trials] == [0.41, 0.47]
    assert [t["params"]["optim.lr"] for t in trials] == [1e-3, 3e-3]
    assert trials[0]["user_attrs"] == {"epochs_run": 6} and trials[0]["state"] == "COMPLETE"
