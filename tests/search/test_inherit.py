"""Tuning in rounds (search.study.inherit, search.run --from): what a new study takes from the previous one."""
from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from search import panes
from search.kaggle.ensemble import load_candidates
from search.run import main
from search.spec import load_spec
from search.study.artifacts import TrialFiles, open_artifact_store
from search.study.inherit import INHERITED_ATTR, Source, inside
from search.study.join import UsageError, join_study
from search.study.locate import locate
from search.study.storage import default_storage_url, open_storage
from search.views.notes import study_note
from search.views.status import StatusView
from search.worker.build import build_worker
from tests.search.conftest import write_spec
from trainer import TrainConfig

NARROW = ('"optim.lr" = { float = [1e-3, 4e-3], log = true }\n"model.head" = { choices = ["linear", "mlp"] }\n'
          '"model.head_hidden" = { int = [8, 32], when = { "model.head" = "mlp" } }\n')
WIDE = '"optim.lr" = { float = [1e-3, 1e-2], log = true }\n"model.head" = { choices = ["linear"] }\n'
ASHA = 'name = "asha"\nmin_resource = 1\nreduction_factor = 3\nmin_early_stopping_rate = 0\nmin_trials = 2'


def _old_trial(spec, params, *, state=TrialState.COMPLETE, value=0.5, curve=None, epochs=None, rung=None):
    config = spec.config_for(params)
    if epochs is not None:
        config = config.with_overrides({"optim.epochs": epochs})
    distributions = {p.key: p.distribution for p in spec.space if p.key in params}
    return create_trial(state=state, value=value if state == TrialState.COMPLETE else None, params=params,
                        distributions=distributions, intermediate_values=curve or {1: value, 2: value},
                        user_attrs={"config": config.to_json(), "epochs_run": 2},
                        system_attrs={"constraints:kernel_time": -1.0,
                                      **({"completed_rung_0": rung} if rung is not None else {})})


@pytest.fixture()
def rounds(tmp_path):
    """Round 1 (narrow space) with five finished trials, and round 2's spec (wider lr, one head only)."""
    studies = tmp_path / "studies"
    old_spec = load_spec(write_spec(studies, "round1", space=NARROW, pruner=ASHA))
    old = optuna.create_study(storage=open_storage(default_storage_url("round1", studies)), study_name="round1",
                              direction="maximize")
    old.add_trial(_old_trial(old_spec, {"optim.lr": 3e-3, "model.head": "linear"}, value=0.60))
    old.add_trial(_old_trial(old_spec, {"optim.lr": 4e-3, "model.head": "linear"}, value=0.70))  # the best
    old.add_trial(_old_trial(old_spec, {"optim.lr": 2e-3, "model.head": "linear"}, state=TrialState.PRUNED,
                             curve={1: 0.9}, rung=0.9))
    old.add_trial(_old_trial(old_spec, {"optim.lr": 2e-3, "model.head": "mlp", "model.head_hidden": 16},
                             value=0.65))  # mlp: outside round 2's space
    old.add_trial(_old_trial(old_spec, {"optim.lr": 1.5e-3, "model.head": "linear"}, value=0.55, epochs=3))
    old.add_trial(create_trial(state=TrialState.FAIL, params={}, distributions={}))
    new_spec = load_spec(write_spec(studies, "round2", space=WIDE, pruner=ASHA))
    return studies, old, new_spec


def test_the_new_round_takes_the_trials_its_space_holds_with_their_curves(rounds, capsys):
    studies, old, spec = rounds
    storage = open_storage(default_storage_url("round2", studies))
    study = join_study(storage, spec, inherit_from=Source(old))
    line = capsys.readouterr().out.strip()
    assert line == ("inherited 3 trials of study 'round1' (2 complete, 1 pruned); left out 1 outside this spec's "
                    "space, 1 trained another config (base or epochs differ)")
    trials = study.get_trials(deepcopy=False)
    baseline = trials[0]
    assert baseline.state == TrialState.WAITING and baseline.user_attrs["baseline"] is True  # its own [base]
    copies = [t for t in trials if "from_study" in t.user_attrs]
    assert [(t.user_attrs["from_trial"], t.state) for t in copies] == [
        (0, TrialState.COMPLETE), (1, TrialState.COMPLETE), (2, TrialState.PRUNED)]
    for copy in copies:
        assert copy.user_attrs["from_study"] == "round1" and "baseline" not in copy.user_attrs
        assert copy.distributions["optim.lr"] == FloatDistribution(1e-3, 1e-2, log=True)  # round 2's
        assert copy.distributions["model.head"] == CategoricalDistribution(["linear"])
        assert copy.constraints == {"kernel_time": -1.0}
    assert copies[2].intermediate_values == {1: 0.9} and copies[2].system_attrs["completed_rung_0"] == 0.9
    assert study.best_trial.value == 0.70 and study.best_trial.user_attrs["from_trial"] == 1
    assert storage.get_study_system_attrs(study._study_id)[INHERITED_ATTR] == {
        "study": "round1", "added": 3, "left_out": 2}

    again = join_study(open_storage(default_storage_url("round2", studies)), spec, inherit_from=Source(old))
    assert len(again.get_trials(deepcopy=False)) == len(trials)  # a second --from adds nothing twice


def test_inherited_pruned_trials_feed_the_pruner_rungs(rounds):
    studies, old, spec = rounds
    warm = join_study(open_storage(default_storage_url("round2", studies)), spec, inherit_from=Source(old))
    cold_spec = load_spec(write_spec(studies, "cold", space=WIDE, pruner=ASHA))
    cold = join_study(open_storage(default_storage_url("cold", studies)), cold_spec)
    for study in (warm, cold):
        study.pruner = spec.make_pruner()
    decisions = []
    for study in (warm, cold):
        trial = study.ask()
        trial.report(0.1, 1)  # far below what round 1 reached at epoch 1
        decisions.append(trial.should_prune())
    assert decisions == [True, False]  # the cold study has no other trial at the rung yet


def test_the_best_of_round_one_is_queued_when_it_was_not_inherited(tmp_path, capsys):
    studies = tmp_path / "studies"
    old_spec = load_spec(write_spec(studies, "r1", space=NARROW))
    old = optuna.create_study(storage=open_storage(default_storage_url("r1", studies)), study_name="r1",
                              direction="maximize")
    old.add_trial(_old_trial(old_spec, {"optim.lr": 4e-3, "model.head": "linear"}, value=0.7, epochs=5))
    spec = load_spec(write_spec(studies, "r2", space=WIDE))  # 2 epochs: the 5-epoch trial is not its config
    study = join_study(open_storage(default_storage_url("r2", studies)), spec, inherit_from=Source(old))
    assert "its best, #0, queued first after the baseline" in capsys.readouterr().out
    waiting = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING]
    assert waiting[1].system_attrs["fixed_params"] == {"optim.lr": 4e-3, "model.head": "linear"}
    assert "the best of study 'r1'" in waiting[1].user_attrs["startup"]


def test_from_refusals_are_one_line(rounds, capsys):
    studies, _, _ = rounds
    args = ["--studies-dir", str(studies), "--trials", "1"]
    assert main(["--study", "round2", "--from", "nope", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --from nope: no study database") and "nope.db" in err[0]
    assert main(["--study", "round2", "--from", "round2", *args]) == 2
    assert capsys.readouterr().err.strip() == "error: --from round2: a study cannot inherit from itself"
    spec = load_spec(studies / "round2.toml")
    join_study(open_storage(default_storage_url("round2", studies)), spec)  # created without --from
    with pytest.raises(UsageError, match="--from round1: study 'round2' exists already \\(created without --from\\)"):
        join_study(open_storage(default_storage_url("round2", studies)), spec,
                   inherit_from=Source(optuna.load_study(study_name="round1",
                                                  storage=open_storage(default_storage_url("round1", studies)))))


def test_panes_from_creates_the_next_round_before_any_pane_starts(rounds, monkeypatch, capsys):
    """search.panes --from: the study exists with round 1's trials when the panes (and the dashboard) start."""
    studies, _, _ = rounds
    started = []
    monkeypatch.setattr(panes, "cuda_device_count", lambda: 0)
    monkeypatch.setattr(panes.TmuxServer, "installed", staticmethod(lambda: True))
    monkeypatch.setattr(panes.TmuxServer, "session_study", lambda self, session: None)

    def create(self, session, windows, **kwargs):
        study = optuna.load_study(study_name="round2", storage=open_storage(default_storage_url("round2", studies)))
        started.append((session, sum("from_study" in t.user_attrs for t in study.get_trials(deepcopy=False))))
    monkeypatch.setattr(panes.TmuxServer, "create", create)
    argv = ["--study", "round2", "--studies-dir", str(studies), "--trials", "4", "--no-attach"]
    assert panes.main([*argv, "--from", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: --from nope: no study database") and not started
    assert panes.main([*argv, "--from", "round1"]) == 0
    assert started == [("search-round2", 3)]
    assert capsys.readouterr().out.startswith("inherited 3 trials of study 'round1' (2 complete, 1 pruned)")


@pytest.mark.slow
def test_a_worker_from_a_real_round_counts_its_own_trials(tmp_path, warm_cache, capsys):
    studies = tmp_path / "studies"
    write_spec(studies, "first", space=NARROW)
    assert main(["--study", "first", "--studies-dir", str(studies), "--trials", "2", "--threads", "1"]) == 0
    write_spec(studies, "second", space='"optim.lr" = { float = [1e-4, 1e-2], log = true }\n'
                                        '"model.head" = { choices = ["linear", "mlp"] }\n'
                                        '"model.head_hidden" = { int = [8, 32], when = { "model.head" = "mlp" } }\n')
    capsys.readouterr()
    assert main(["--study", "second", "--studies-dir", str(studies), "--trials", "1", "--threads", "1",
                 "--from", "first"]) == 0
    out = capsys.readouterr().out
    assert "inherited 2 trials of study 'first' (2 complete)" in out
    assert "the study has its 1 finished trials of its own" in out
    study = optuna.load_study(study_name="second", storage=open_storage(default_storage_url("second", studies)))
    own = [t for t in study.trials if "from_study" not in t.user_attrs and t.state == TrialState.COMPLETE]
    assert len(own) == 1 and own[0].user_attrs.get("baseline") is True
    copies = [t for t in study.trials if "from_study" in t.user_attrs]
    assert len(copies) == 2
    location = locate("second", studies)
    files = location.reader_files(location.open())  # round 1's files, read where round 1 keeps them
    assert all(files.has(t.number, "val_predictions.npz") and files.has(t.number, "best.pth") for t in copies)
    assert all(t.user_attrs["files_from"]["artifacts"] == str((studies / "first" / "artifacts").resolve())
               for t in copies)


@pytest.mark.parametrize("value, expected", [(2e-3, True), (1e-2, True), (1.1e-2, False), (float("nan"), False),
                                             ("x", False), (True, False)])
def test_inside_a_float_range(value, expected):
    assert inside(FloatDistribution(1e-3, 1e-2, log=True), value) is expected


def test_the_status_view_note_and_pane_summary_count_inherited_trials(rounds, capsys):
    studies, old, spec = rounds
    worker = build_worker(locate("round2", studies, spec_required=True), studies, device="cpu", worker_id="host:1",
                          inherit_from=Source(old))
    study = worker.study
    capsys.readouterr()
    screen = "\n".join(StatusView.of(worker.handle, spec).lines())
    assert "3 of them inherited from study 'round1'" in " ".join(screen.split())
    assert all(len(line) <= 80 for line in screen.splitlines())
    assert "3 of them inherited from study 'round1' (`search.run --from`)" in study_note(study)
    worker.console.summary(study, "done")
    assert "(3 of them inherited from study 'round1')" in capsys.readouterr().out


def _predictions(folder, split):
    folder.mkdir(parents=True, exist_ok=True)
    probs = np.tile(np.linspace(0.1, 0.9, 80, dtype=np.float16), (4, 1))
    np.savez(folder / "val_predictions.npz", probs=probs, fnames=np.array([f"{k}.wav" for k in range(4)]),
             split=np.array(split), epoch=np.array(1), lwlrap=np.array(0.5))
    return folder / "val_predictions.npz"


def test_inherited_predictions_are_read_in_place_and_used_only_on_the_same_split(tmp_path):
    """Round 2's own trial and two inherited ones, whose files stay in round 1's store: the one validated on
    round 2's split is a candidate, the other (another data set) is left out with a note; nothing is copied."""
    old_files = TrialFiles(open_artifact_store(tmp_path / "old-artifacts"), "old-uid")
    new_files = TrialFiles(open_artifact_store(tmp_path / "new-artifacts"), "new-uid")
    new_files.push(0, _predictions(tmp_path / "own", "split-A"))
    old_files.push(5, _predictions(tmp_path / "old5", "split-A"))
    old_files.push(6, _predictions(tmp_path / "old6", "split-B"))
    config = TrainConfig().to_json()
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.6, user_attrs={"config": config}))
    for number in (5, 6):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.7, user_attrs={
            "config": config, "from_study": "round1", "from_trial": number,
            "files_from": {"artifacts": str(tmp_path / "old-artifacts"), "uid": "old-uid", "trial": number}}))
    files = new_files.with_references(study.get_trials(deepcopy=False))
    pool = load_candidates(study, files, lambda fnames, split: np.eye(4, 80, dtype=np.float64))
    assert sorted(c.number for c in pool.candidates) == [0, 1] and pool.split == "split-A"
    assert any("1 inherited trial(s) validated on another split" in note and note.endswith(": 2")
               for note in pool.notes)
    assert not files.remove(1, "val_predictions.npz") and old_files.has(5, "val_predictions.npz")  # never removed
    assert not (tmp_path / "new-artifacts" / "new-uid" / "1").exists()  # read in place, not copied


def test_a_round_inherits_only_trials_validated_on_the_same_folds(rounds, capsys):
    """A one-split trial's value is one split's lwlrap; a cross-validated study's is out-of-fold: not comparable."""
    studies, old, _ = rounds
    cv_spec = load_spec(write_spec(studies, "round2cv", space=WIDE, pruner=ASHA, study="folds = 3"))
    study = join_study(open_storage(default_storage_url("round2cv", studies)), cv_spec, inherit_from=Source(old))
    line = capsys.readouterr().out.strip()
    assert line.startswith("inherited 0 trials of study 'round1'") and "5 validated on other folds" in line
    assert not [t for t in study.get_trials(deepcopy=False) if "from_study" in t.user_attrs]
    assert all("the best of study" not in str(t.user_attrs.get("startup")) for t in study.get_trials(deepcopy=False))
