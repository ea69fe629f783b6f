"""Ensemble selection: greedy picks on hand-made predictions, the kernel-time budget, skipped and refused
trials, bagging, the report's description; then a real tiny study through search.best, the export and
benchmarks/bench_ensemble.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.best import main as best_main
from search.kaggle.ensemble import Budget, EnsembleError, load_candidates, select, select_from_study
from search.kaggle.ensemble_report import describe, predict_models, report_section, write_curve
from search.kaggle.export import run_kernel
from search.kaggle.kernel_main import load_export, member_state_dicts, pool_probabilities
from search.spec import load_spec
from search.study.artifacts import TrialFiles, open_artifact_store
from search.study.record import load_study
from tests.conftest import TINY_OVERRIDES
from tests.search.conftest import worker, write_spec
from trainer import TrainConfig, lwlrap, read_labelled_csv, read_test_fnames

ROOT = Path(__file__).resolve().parents[2]
N_CLIPS = 40
A, B, C, D = 1, 2, 3, 4  # trial numbers: A and B each know half the clips, C a little of all, D nothing


def hand_made_predictions() -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Targets (one label per clip) and predictions: A ranks the true label first on clips 0-19 only, B on
    clips 20-39 only, C moderately on all of them, D is noise. Alone C is best; A and B together are perfect."""
    rng = np.random.default_rng(0)
    targets = np.zeros((N_CLIPS, 80))
    labels = np.arange(N_CLIPS) % 10
    targets[np.arange(N_CLIPS), labels] = 1
    probs = {}
    for number, known, true_range in ((A, range(0, 20), (0.9, 0.9)), (B, range(20, 40), (0.9, 0.9)),
                                      (C, range(N_CLIPS), (0.35, 0.65)), (D, range(0), (0, 0))):
        p = rng.uniform(0.0, 0.5, (N_CLIPS, 80))
        for clip in known:
            p[clip, labels[clip]] = rng.uniform(*true_range)
        probs[number] = p
    return targets, probs


def config_with(n_mels: int) -> TrainConfig:
    return TrainConfig().with_overrides({**TINY_OVERRIDES, "features.n_mels": n_mels})


def hand_made_study(tmp_path: Path, probs: dict[int, np.ndarray], *, split: dict[int, str] | None = None,
                    feasible: dict[int, bool] | None = None, weights: tuple[int, ...] = ()) -> tuple[optuna.Study, TrialFiles]:
    """A study whose COMPLETE trials carry ``probs`` as stored validation predictions. A, B and D share one
    log-mel setting (feature cost 0.01 s per s of audio, network 0.01), C has another (0.01 + 0.03)."""
    study = optuna.create_study(direction="maximize")
    files = TrialFiles(open_artifact_store(tmp_path / "artifacts"), "uid")
    study.add_trial(create_trial(state=TrialState.PRUNED, value=None, params={}, distributions={}))  # trial 0
    for number in range(1, 7):
        ok = (feasible or {}).get(number, True)
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=0.5 + number / 100, params={}, distributions={},
            user_attrs={"config": config_with(24 if number == C else 32).to_json(), "feature_cost": 0.01,
                        "model_cost": 0.03 if number == C else 0.01, "threads": 1},
            system_attrs={"constraints:kernel_time": -1.0 if ok else 5.0}))
        if number in probs:
            path = tmp_path / f"npz-{number}" / "val_predictions.npz"
            path.parent.mkdir()
            np.savez(path, probs=probs[number].astype(np.float16), fnames=np.array([f"{k}.wav" for k in range(N_CLIPS)]),
                     split=np.array((split or {}).get(number, "split-1")), epoch=np.array(2), lwlrap=np.array(0.5))
            files.push(number, path)
        if number in weights:
            (tmp_path / "best.pth").write_bytes(b"weights")
            files.push(number, tmp_path / "best.pth")
    return study, files


@pytest.fixture()
def hand_made(tmp_path):
    targets, probs = hand_made_predictions()
    study, files = hand_made_study(tmp_path, probs)
    pool = load_candidates(study, files, lambda fnames, split: targets)
    return targets, probs, pool


@pytest.mark.parametrize("pooling", ["mean", "geometric"])
def test_greedy_selection_picks_the_complementary_members(hand_made, pooling):
    targets, probs, pool = hand_made
    alone = {n: lwlrap(targets, p.astype(np.float16).astype(np.float64)) for n, p in probs.items()}
    assert alone[C] > max(alone[A], alone[B], alone[D])  # the set-up: C is the single best
    assert [c.number for c in pool.candidates][0] == C

    selection = select(pool, rounds=6, budget=Budget(1000.0, None), pooling=pooling, single=C)
    assert selection.steps[0].trial == C  # round 1: the best single model
    assert {A, B} <= set(selection.weights) and D not in selection.weights
    assert sum(selection.weights.values()) == pytest.approx(1.0)
    assert selection.lwlrap > alone[C] + 0.1 and selection.single_lwlrap == pytest.approx(alone[C])
    kept = selection.steps[selection.best_round[0] - 1]
    assert kept.lwlrap == pytest.approx(selection.lwlrap)  # what the path scored is what the weights give
    assert selection.lwlrap == pytest.approx(lwlrap(targets, selection.probabilities()))
    counts = {n: sum(s.trial == n for s in selection.steps[:selection.best_round[0]]) for n in selection.weights}
    assert selection.weights == pytest.approx({n: c / selection.best_round[0] for n, c in counts.items()})


def test_budget_refuses_members_that_would_overrun_the_kernel_time(hand_made):
    targets, probs, pool = hand_made
    members = pool.by_number()
    budget = Budget(test_audio_s=1000.0, limit_s=35.0)
    # A and B share one log-mel setting: its cost counts once; C has its own.
    assert budget.projected_s([members[A], members[B]]) == pytest.approx(1000 * (0.01 + 0.01 + 0.01))
    assert budget.projected_s([members[A], members[C]]) == pytest.approx(1000 * (0.01 + 0.01 + 0.01 + 0.03))
    selection = select(pool, rounds=4, budget=budget, single=C)
    assert C not in selection.weights and set(selection.weights) == {A, B}
    assert selection.projected_s == pytest.approx(30.0) and selection.projected_s <= 35.0
    assert all(step.projected_s <= 35.0 for step in selection.steps)
    assert any(f"round 1: trial {C} refused" in note and "> the budget of 35 s" in note for note in selection.notes)
    fallback = select(pool, rounds=1, budget=Budget(1000.0, None), single=6)  # trial 6 stored no predictions
    assert fallback.single == C and "best trial 6 has no stored validation predictions" in " ".join(fallback.notes)
    with pytest.raises(EnsembleError, match="no trial fits the kernel time budget of 10 s on its own"):
        select(pool, rounds=2, budget=Budget(1000.0, 10.0))


def test_bagged_selection_is_seeded_and_within_budget(hand_made):
    _, _, pool = hand_made
    budget = Budget(1000.0, 35.0)
    first = select(pool, rounds=4, budget=budget, bags=3, seed=7)
    assert first.weights == select(pool, rounds=4, budget=budget, bags=3, seed=7).weights
    assert sum(first.weights.values()) == pytest.approx(1.0) and first.projected_s <= 35.0
    assert {s.bag for s in first.steps} == {0, 1, 2} and len(first.best_round) == 3
    for bag in range(3):  # each bag picks from its own half of the four candidates
        assert len({s.trial for s in first.steps if s.bag == bag}) <= 2


def test_trials_without_predictions_or_over_budget_are_skipped_with_a_note(tmp_path):
    targets, probs = hand_made_predictions()
    study, files = hand_made_study(tmp_path, {n: p for n, p in probs.items() if n != B} | {5: probs[A]},
                                   feasible={5: False}, weights=(A, C))
    pool = load_candidates(study, files, lambda fnames, split: targets)
    assert sorted(c.number for c in pool.candidates) == [A, C, D]
    assert f"trial {B}: no stored validation predictions (val_predictions.npz); skipped" in pool.notes
    assert any("over the kernel time budget not considered: 5" in note for note in pool.notes)
    reusable = load_candidates(study, files, lambda fnames, split: targets, require_weights=True)
    assert sorted(c.number for c in reusable.candidates) == [A, C]
    assert any("whose best.pth checkpoint retention deleted not considered: 2, 4, 6" in n for n in reusable.notes)


def test_predictions_of_different_validation_splits_are_refused(tmp_path):
    targets, probs = hand_made_predictions()
    study, files = hand_made_study(tmp_path, probs, split={C: "split-2"})
    with pytest.raises(EnsembleError, match=r"different splits \(split split-1: trials 1, 2, 4; split split-2: "
                                            r"trials 3\); their predictions cannot be combined"):
        load_candidates(study, files, lambda fnames, split: targets)
    empty, empty_files = hand_made_study(tmp_path / "empty", {})
    with pytest.raises(EnsembleError, match="no COMPLETE feasible trial has stored validation predictions"):
        load_candidates(empty, empty_files, lambda fnames, split: targets)


def test_description_and_curve(hand_made, tmp_path):
    _, _, pool = hand_made
    selection = select(pool, rounds=4, budget=Budget(1000.0, 35.0), single=C)
    text = "\n".join(describe(selection, "no test_labels.csv here"))
    assert "| 1 | 1 |" in text and "(kept)" in text and "so this gain is optimistic" in text
    assert f"single best trial {C} " in text and "Held-out test gain not measured: no test_labels.csv here" in text
    assert "Projected kernel time: 30 s (budget 35 s)" in text and f"round 1: trial {C} refused" in text
    image = matplotlib.image.imread(write_curve(selection, tmp_path / "curve.png"))
    assert image.shape[0] > 100 and np.ptp(image[..., :3]) > 0



def test_without_a_kernel_section_the_kernel_time_column_is_left_out_and_says_why(hand_made):
    _, _, pool = hand_made
    text = "\n".join(describe(select(pool, rounds=2, budget=Budget(None, None), single=C)))
    assert "| bag | round | added trial | validation lwlrap | members |\n|---|---|---|---|---|\n" in text
    assert "projected kernel s" not in text and "| ? |" not in text
    assert "Kernel time not projected: the study's spec has no [kernel] section" in text

# -- a real tiny study ------------------------------------------------------------------------------
SPACE = ('"optim.lr" = { float = [1e-3, 1e-2], log = true }\n"features.n_mels" = { choices = [24, 32] }\n'
         '"model.head" = { choices = ["linear", "mlp"] }\n')


@pytest.fixture(scope="module")
def real_study(warm_cache, tmp_path_factory) -> Path:
    """Five tiny trials of two log-mel settings, with a kernel budget; every trial keeps its weights."""
    studies = tmp_path_factory.mktemp("studies")
    write_spec(studies, "ens", epochs=2, space=SPACE, extra="[kernel]\nbudget_s = 3600\ntest_audio_s = 10000\n")
    proc = worker(studies, "ens", "--trials", "5", "--seed", "0")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    return studies


def open_real(studies: Path):
    handle = load_study("ens", None, studies)
    spec = load_spec(studies / "ens.toml")
    return handle.study, TrialFiles(open_artifact_store(studies / "ens" / "artifacts"), handle.uid()), spec


@pytest.mark.slow
def test_best_ensemble_exports_the_trials_own_weights_and_the_kernel_matches(real_study, demo_data, session_cache,
                                                                           tmp_path, capsys):
    out = tmp_path / "export"
    code = best_main(["--study", "ens", "--studies-dir", str(real_study), "--ensemble", "4", "--export",
                      "--reuse-checkpoints", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| bag | round | added trial |" in printed and "Held-out test lwlrap (test_labels.csv" in printed
    record = json.loads((out / "export.json").read_text())
    meta = json.loads((out / "config.json").read_text())
    weights = {int(n): w for n, w in record["ensemble"]["weights"].items()}
    assert [(m["trial"], m["checkpoint"]) for m in meta["members"]] == [(n, "trial") for n in weights]
    assert [m["weight"] for m in meta["members"]] == pytest.approx(list(weights.values()))
    assert record["inference"]["clips"] > 0 and record["ensemble"]["projected_kernel_s"] <= 1800
    exported = record["ensemble"]["exported_val_lwlrap"]
    assert exported == pytest.approx(record["ensemble"]["val_lwlrap"], abs=1e-12)
    assert f"exported ensemble: validation lwlrap {exported:.4f} (selection: {exported:.4f})" in printed

    done = run_kernel(out, demo_data / "test", demo_data / "sample_submission.csv", tmp_path / "sub.csv", device="cpu")
    assert f"{len(weights)} member(s)" in done.stdout
    fnames = read_test_fnames(demo_data / "sample_submission.csv")
    scores = np.loadtxt(tmp_path / "sub.csv", delimiter=",", skiprows=1, usecols=range(1, 81))
    configs = [TrainConfig.from_dict(m["train_config"]) for m in meta["members"]]
    per_model, _ = predict_models(configs, member_state_dicts(load_export(out), out),
                                  [demo_data / "test" / f for f in fnames], cache_dir=session_cache, device="cpu")
    np.testing.assert_allclose(scores, pool_probabilities(per_model, "mean", list(weights.values())), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_ensemble_export_retrains_each_member_with_its_exact_config(real_study, tmp_path, capsys):
    code = best_main(["--study", "ens", "--studies-dir", str(real_study), "--ensemble", "2", "--export",
                      "--out", str(tmp_path / "export")])
    printed = capsys.readouterr().out
    assert code == 0
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert {m["checkpoint"] for m in meta["members"]} == {"best"}
    study, _, _ = open_real(real_study)
    for member in meta["members"]:
        trial = study.trials[member["trial"]]
        assert member["val_lwlrap"] == pytest.approx(trial.value, abs=1e-9)  # same config, seed and threads on CPU
        assert f"vs trial {trial.number}'s {trial.value:.4f} (difference +0.0000" in printed


@pytest.mark.slow  # needs the module's real study (workers, a dozen seconds)
def test_cli_refuses_an_impossible_budget_and_bad_rounds(real_study, capsys):
    base = ["--study", "ens", "--studies-dir", str(real_study)]
    assert best_main([*base, "--ensemble", "2", "--max-kernel-s", "0.001"]) == 2
    assert "error: no trial fits the kernel time budget of 0 s on its own" in capsys.readouterr().err
    assert best_main([*base, "--ensemble", "0"]) == 2
    assert "error: --ensemble 0: expected at least 1 selection round" in capsys.readouterr().err


@pytest.mark.slow
def test_report_section_shows_the_curve_and_the_held_out_gain(real_study, demo_data, tmp_path):
    study, files, spec = open_real(real_study)
    lines = report_section(study, files, spec, tmp_path, rounds=3)  # data: the spec's (the demo set)
    text = "\n".join(lines)
    assert lines[0] == "## Ensemble selection" and "Held-out test lwlrap (test_labels.csv" in text
    assert "![Greedy ensemble selection](ensemble_curve.png)" in text and (tmp_path / "ensemble_curve.png").is_file()
    assert "--ensemble 3 --export" in text
    assert report_section(study, files, None, tmp_path)[2].startswith(
        "Not available: the study's spec file was not found, so its data location is unknown")
    empty = optuna.create_study(direction="maximize")
    assert report_section(empty, files, spec, tmp_path, data_dir=demo_data)[2] == (
        "Not available: no trial has completed yet.")
    empty.add_trial(optuna.trial.create_trial(value=0.5))  # completed, but nothing stored for it
    unstored = TrialFiles(files.store, "another-study")
    assert report_section(empty, unstored, spec, tmp_path)[2] == (
        "Not available: no completed trial has stored validation predictions (val_predictions.npz).")


@pytest.mark.slow
def test_bench_ensemble_exports_runs_and_scores_both_kernels(real_study, demo_data, tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ensemble.py"), "--study", "ens",
                          "--studies-dir", str(real_study), "--ensemble", "3", "--reuse-checkpoints", "--device", "cpu",
                          "--out", str(tmp_path / "bench")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    header, _, row = run.stdout.strip().splitlines()[-3:]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert header.startswith("| study | K | members |") and cells[:2] == ["ens", "3"]
    study, files, spec = open_real(real_study)
    selection = select_from_study(study, files, demo_data, spec=spec, rounds=3, require_weights=True)
    assert cells[2] == ", ".join(f"#{n} x{w:.2f}" for n, w in selection.weights.items())
    assert cells[4] == f"{selection.lwlrap:.4f}"
    truth = read_labelled_csv(demo_data / "test_labels.csv", demo_data / "test")
    submission = np.genfromtxt(tmp_path / "bench" / "ensemble-3" / "submission.csv", delimiter=",", dtype=str)
    scores = {row[0]: row[1:].astype(float) for row in submission[1:]}
    assert cells[6] == f"{lwlrap(truth.targets, np.array([scores[p.name] for p in truth.paths])):.4f}"
    assert 0.0 < float(cells[5]) <= 1.0
