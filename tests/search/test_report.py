"""search.report on small studies built with Optuna directly: the markdown's facts and real PNGs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib import image as mpimg
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search.report import main
from search.study.record import SPEC_ATTR, baseline_trial, config_diff, redact
from search.study.storage import open_storage
from search.views.checks import edge_params, widened

SPACE = {
    "optim.lr": FloatDistribution(1e-4, 1e-1, log=True),
    "model.depth": IntDistribution(10, 34),
    "loss.name": CategoricalDistribution(["bce", "focal"]),
}
PNGS = ["optimization_history", "intermediate_values", "param_importances", "parallel_coordinate", "slice"]


def _config(params):
    return json.dumps({"optim": {"lr": params["optim.lr"], "epochs": 4, "batch_size": 16},
                       "model": {"depth": params["model.depth"]}, "loss": {"name": params["loss.name"]}})


def _trial(state, params, curve, **user_attrs):
    value = max(curve.values()) if state == TrialState.COMPLETE else None
    attrs = {"epochs_run": len(curve), "wall_time": 10.0 * len(curve), "config": _config(params), **user_attrs}
    return create_trial(state=state, value=value, params=params, distributions=SPACE,
                        user_attrs=attrs, intermediate_values=curve)


def _study(path, name="demo", epochs=4):
    storage = open_storage(f"sqlite:///{path}")
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    storage.set_study_system_attr(storage.get_study_id_from_name(name), SPEC_ATTR, {"study.epochs": epochs})
    return study


def _demo_study(path, n_complete=8):
    """``n_complete`` completed trials (a baseline, the best at the top of the lr range, others), 2 pruned,
    1 failed (out of memory) and 1 pruned because it diverged."""
    study = _study(path)
    rng = np.random.default_rng(0)
    study.add_trial(_trial(TrialState.COMPLETE, {"optim.lr": 1e-3, "model.depth": 34, "loss.name": "bce"},
                           {1: 0.30, 2: 0.40, 3: 0.45, 4: 0.50}, baseline=True))
    for i in range(n_complete - 2):
        params = {"optim.lr": float(10 ** rng.uniform(-4, -1.8)), "model.depth": int(rng.integers(12, 32)),
                  "loss.name": ["bce", "focal"][i % 2]}
        study.add_trial(_trial(TrialState.COMPLETE, params, {e: 0.1 + 0.08 * e + 0.01 * i for e in range(1, 5)}))
    best = {"optim.lr": 0.095, "model.depth": 20, "loss.name": "focal"}
    study.add_trial(_trial(TrialState.COMPLETE, best, {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8}))
    for _ in range(2):
        study.add_trial(_trial(TrialState.PRUNED, {"optim.lr": 1e-4, "model.depth": 10, "loss.name": "bce"},
                               {1: 0.1, 2: 0.12}))
    study.add_trial(_trial(TrialState.FAIL, best, {1: 0.2}, reason="out of memory: CUDA out of memory"))
    study.add_trial(_trial(TrialState.PRUNED, best, {1: 0.2}, reason="diverged: training loss became nan"))
    return study


def _assert_real_png(path):
    assert path.stat().st_size > 1000
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] >= 200 and pixels.shape[1] >= 300
    assert float(pixels[..., :3].std()) > 0.01, f"{path.name} is a uniform image"


@pytest.mark.slow
def test_report_on_demo_study(tmp_path, capsys):
    study = _demo_study(tmp_path / "demo.db")
    best_number = study.best_trial.number
    out = tmp_path / "report"

    assert main(["--study", "demo", "--storage", f"sqlite:///{tmp_path / 'demo.db'}", "--out", str(out)]) == 0

    text = (out / "report.md").read_text()
    assert "| COMPLETE | 8 |" in text and "| PRUNED | 3 |" in text and "| FAIL | 1 |" in text
    assert "## Top 8 complete trials" in text and f"| 1 | {best_number} | 0.8000 |" in text
    # the full-config diff: lr and depth and loss changed, epochs and batch size did not
    assert "by full config" in text
    assert "| optim.lr | 0.001 | 0.095 |" in text and "| model.depth | 34 | 20 |" in text
    assert "| loss.name | bce | focal |" in text and "optim.epochs" not in text.split("## Best trial")[1].split("```")[0]
    assert f"python -m search.best --study demo --storage 'sqlite:///{tmp_path / 'demo.db'}' --export" in text
    # finished: 8 complete x 4 + 2 pruned x 2 + 1 diverged x 1 = 37 of 11 x 4 = 44 budgeted; the failed one adds 1
    assert "38 epochs trained over 12 trial attempts" in text and "reached 37 epochs" in text
    assert "would take 44: the pruner saved 16%" in text
    assert "`optim.lr` = 0.095 is at the high end of [0.0001, 0.1]" in text
    assert "Failed: 1 of 12 trials (out of memory: 1)." in text
    assert f"Diverged (NaN/inf loss): 1 trials ({best_number + 4})." in text
    assert "| COMPLETE | 8 | 40s |" in text
    assert "PED-ANOVA is stable from about 50" in text
    for name in PNGS:
        assert f"({name}.png)" in text
        _assert_real_png(out / f"{name}.png")
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert str(out / "report.md") in capsys.readouterr().out


def test_report_with_zero_completed_trials(tmp_path, monkeypatch):
    monkeypatch.setenv("FAT2019_STUDIES", str(tmp_path / "studies"))
    study = _study(tmp_path / "studies" / "empty.db", name="empty")
    study.add_trial(_trial(TrialState.FAIL, {"optim.lr": 1e-3, "model.depth": 34, "loss.name": "bce"}, {},
                           reason="out of memory"))

    assert main(["--study", "empty"]) == 0  # default storage and default out: studies/<study>/report/

    out = tmp_path / "studies" / "empty" / "report"
    text = (out / "report.md").read_text()
    assert "No best trial: no trial has completed yet." in text
    assert "Failed: 1 of 1 trials (out of memory: 1)." in text
    assert "- Optimisation history: skipped: no completed or pruned trial has a value yet" in text
    assert "- Parameter importances: skipped: importances need at least 2 completed trials" in text
    assert not list(out.glob("*.png"))


def test_report_with_only_pruned_trials(tmp_path):
    study = _study(tmp_path / "p.db")
    for lr in (1e-3, 1e-2):
        study.add_trial(_trial(TrialState.PRUNED, {"optim.lr": lr, "model.depth": 18, "loss.name": "bce"},
                               {1: 0.1, 2: lr * 10}))
    out = tmp_path / "out"

    assert main(["--study", "demo", "--storage", f"sqlite:///{tmp_path / 'p.db'}", "--out", str(out)]) == 0

    text = (out / "report.md").read_text()
    assert "No best trial: no trial has completed yet." in text and "| PRUNED | 2 |" in text
    assert "reached 4 epochs" in text and "saved 50%" in text
    # pruned trials are drawn at their last value; importances need completed trials
    assert sorted(p.name for p in out.glob("*.png")) == ["intermediate_values.png", "optimization_history.png",
                                                         "parallel_coordinate.png", "slice.png"]
    for png in out.glob("*.png"):
        _assert_real_png(png)
    assert "hollow grey points are pruned trials at their last reported value" in text


def test_too_few_trials_for_importances_is_a_note(tmp_path):
    study = _study(tmp_path / "few.db")
    for lr in (1e-3, 1e-2):  # two trials with the same score: PED-ANOVA cannot tell parameters apart
        study.add_trial(_trial(TrialState.COMPLETE, {"optim.lr": lr, "model.depth": 18, "loss.name": "bce"},
                               {1: 0.3}))
    out = tmp_path / "out"

    assert main(["--study", "demo", "--storage", f"sqlite:///{tmp_path / 'few.db'}", "--out", str(out)]) == 0

    text = (out / "report.md").read_text()
    assert "- Parameter importances: skipped: importances are not informative with 2 completed trials" in text
    assert not (out / "param_importances.png").exists()
    _assert_real_png(out / "optimization_history.png")


def test_missing_study_and_database_are_one_line_errors(tmp_path, capsys):
    assert main(["--study", "nope", "--studies-dir", str(tmp_path)]) == 2
    assert f"no study database {tmp_path / 'nope.db'}" in capsys.readouterr().err
    _study(tmp_path / "other.db", name="other")
    assert main(["--study", "nope", "--storage", f"sqlite:///{tmp_path / 'other.db'}"]) == 2
    assert "study 'nope' not found in sqlite:///" in (err := capsys.readouterr().err) and "studies there: other" in err


def test_baseline_and_diff_without_configs():
    baseline = create_trial(state=TrialState.COMPLETE, value=0.5, params={"optim.lr": 1e-3},
                            distributions={"optim.lr": SPACE["optim.lr"]})
    baseline.number = 0
    other = create_trial(state=TrialState.COMPLETE, value=0.6, params={"optim.lr": 1e-2, "model.depth": 18},
                         distributions={"optim.lr": SPACE["optim.lr"], "model.depth": SPACE["model.depth"]})
    other.number = 1
    assert baseline_trial([other, baseline]) is baseline
    assert config_diff(baseline, other) == ({"model.depth": ("(absent)", 18), "optim.lr": (1e-3, 1e-2)},
                                            "search parameters")
    assert edge_params(other) == []  # lr at 2/3 of the log range, depth at 1/3
    marked = create_trial(state=TrialState.FAIL, params={}, distributions={}, user_attrs={"baseline": True})
    marked.number = 5
    assert baseline_trial([baseline, marked]) is marked
    retried = create_trial(state=TrialState.COMPLETE, value=0.4, params={}, distributions={},
                           user_attrs={"baseline": True, "retry_of": 5})
    retried.number = 9
    assert baseline_trial([baseline, marked, retried]) is retried  # the chain's COMPLETE attempt


@pytest.mark.parametrize("value, side", [(0.0001, "low"), (0.09, "high"), (0.003, None)])
def test_edge_uses_log_scale_of_the_space(value, side):
    trial = create_trial(state=TrialState.COMPLETE, value=0.5, params={"optim.lr": value},
                         distributions={"optim.lr": SPACE["optim.lr"]})
    flagged = edge_params(trial)
    assert [edge.side for edge in flagged] == ([side] if side else [])


EDGE_SPACE = {
    "features.n_fft": CategoricalDistribution([1024, 1764, 2048]),
    "model.activation": CategoricalDistribution(["relu", "silu", "sigmoid"]),
    "features.crop_seconds": CategoricalDistribution(["5", "10", "15"]),  # numbers as strings: still strings
    "data.use_noisy": CategoricalDistribution([False, True]),
    "optim.batch_size": CategoricalDistribution([16, 32]),
    "optim.weight_decay": CategoricalDistribution([0.0, 1e-5, 1e-4, 1e-3]),
    "augment.time_masks": IntDistribution(0, 2),
    "augment.mixup_alpha": FloatDistribution(0.0, 1.0, step=0.1),
    "augment.freq_mask_bins": IntDistribution(2, 12),
    "optim.lr": FloatDistribution(1e-4, 1e-1, log=True),
}


def _edge_trial(value=0.5, **params):
    params = {key.replace("__", "."): v for key, v in params.items()}
    return create_trial(state=TrialState.COMPLETE, value=value, params=params,
                        distributions={key: EDGE_SPACE[key] for key in params})


def test_edge_check_speaks_of_choices_skips_strings_and_off_values(tmp_path):
    study = _study(tmp_path / "edge.db")
    best = dict(features__n_fft=2048, model__activation="sigmoid", features__crop_seconds="15", data__use_noisy=True,
                optim__batch_size=32, optim__weight_decay=1e-5, augment__time_masks=0, augment__mixup_alpha=0.1,
                augment__freq_mask_bins=2, optim__lr=3e-3)
    study.add_trial(_edge_trial(0.8, **best))
    study.add_trial(_edge_trial(0.6, **{**best, "features__n_fft": 1764}))  # never sampled 1024
    out = tmp_path / "out"

    assert main(["--study", "demo", "--storage", f"sqlite:///{tmp_path / 'edge.db'}", "--out", str(out)]) == 0

    checks = (out / "report.md").read_text().split("## Checks after the study")[1].split("## Plots")[0]
    edges = [line for line in checks.splitlines() if line.startswith("- Edge of the space")]
    assert edges == [
        "- Edge of the space: `features.n_fft` = 2048 is the largest of the choices [1024, 1764, 2048]; "
        "add a larger choice and search again.",
        "- Edge of the space: `augment.mixup_alpha` = 0.1 is at the low end of [0, 1], next to 0; "
        "search more finely between 0 and it.",
        "- Edge of the space: `augment.freq_mask_bins` = 2 is at the low end of [2, 12]; "
        "widen the range past it and search again.",
    ]
    assert "- Switched off in the best trial (0 at the bottom of its range or choices, not an edge to widen): " \
           "`augment.time_masks`." in checks
    # the next round widens the one range it can (choices and a range next to 0 are the user's to revise)
    assert "- Next round: copy the spec with `[study] name = \"demo-r2\"`" in checks
    assert '  "augment.freq_mask_bins" = { int = [0, 12] }' in checks.splitlines()
    assert "  `python -m search.run --study demo-r2 --from demo --trials N`" in checks.splitlines()


@pytest.mark.parametrize("dist, value, expected", [
    (FloatDistribution(1e-4, 1e-1, log=True), 9e-2, "{ float = [0.0001, 0.3], log = true }"),
    (FloatDistribution(1e-4, 1e-1, log=True), 1.1e-4, "{ float = [3.33e-05, 0.1], log = true }"),
    (FloatDistribution(0.2, 0.6, step=0.05), 0.6, "{ float = [0.2, 0.8], step = 0.05 }"),
    (FloatDistribution(0.2, 0.6), 0.2, "{ float = [0, 0.6] }"),
    (IntDistribution(64, 1024, log=True), 1024, "{ int = [64, 3072], log = true }"),
    (FloatDistribution(0.0, 1.0), 0.02, None),  # next to 0: search finer, not wider
])
def test_the_next_round_widens_past_the_bound(dist, value, expected):
    trial = create_trial(state=TrialState.COMPLETE, value=0.5, params={"k": value}, distributions={"k": dist})
    (edge,) = edge_params(trial)
    assert widened(edge, dist) == expected


@pytest.mark.parametrize("params, expected", [
    ({"model.activation": "sigmoid"}, []),  # strings are never ordered
    ({"features.crop_seconds": "15"}, []),
    ({"data.use_noisy": True}, []),
    ({"optim.batch_size": 32}, []),  # two choices: every value is an end
    ({"features.n_fft": 1024}, [("low", (1024, 1764, 2048))]),
    ({"features.n_fft": 1764}, []),
    ({"optim.weight_decay": 0.0}, []),  # 0 = off
    ({"optim.weight_decay": 1e-5}, []),  # the second choice, though close to 0 in value
    ({"optim.weight_decay": 1e-3}, [("high", (0.0, 1e-5, 1e-4, 1e-3))]),
    ({"augment.time_masks": 0}, []),  # 0 = off
    ({"augment.time_masks": 2}, [("high", None)]),
    ({"augment.mixup_alpha": 0.0}, []),  # 0 = off
])
def test_edge_params_by_kind(params, expected):
    flagged = edge_params(_edge_trial(**{key.replace(".", "__"): v for key, v in params.items()}))
    assert [(edge.side, edge.choices) for edge in flagged] == expected


def test_edge_bounds_come_from_the_space_not_the_values_seen():
    """2048 is the largest n_fft any trial tried, but fat2019's space goes up to 3528: not an edge."""
    wider = CategoricalDistribution([1024, 1764, 2048, 3528])
    best = create_trial(state=TrialState.COMPLETE, value=0.8, params={"features.n_fft": 2048, "optim.lr": 0.01},
                        distributions={"features.n_fft": wider, "optim.lr": SPACE["optim.lr"]})
    assert edge_params(best) == []  # lr 0.01 is the largest lr seen but sits at 2/3 of [1e-4, 1e-1] (log)


def test_redact_hides_password():
    assert redact("postgresql://fat:s3cret@db:5432/optuna") == "postgresql://fat:***@db:5432/optuna"


def test_reads_the_attrs_search_run_writes(tmp_path):
    """search.run marks the baseline with ``baseline``, reasons with ``reason``, the budget in the spec
    stored as a study system attr, and each trial's full config in its ``config`` user attr."""
    study = _study(tmp_path / "s.db", epochs=3)
    for number, (lr, value, extra) in enumerate([(1e-3, 0.4, {"baseline": True}), (1e-2, 0.6, {})]):
        config = json.dumps({"optim": {"lr": lr, "epochs": 3}, "seed": 0})
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, params={"optim.lr": lr},
                                     distributions={"optim.lr": SPACE["optim.lr"]}, intermediate_values={1: value},
                                     user_attrs={"config": config, "epochs_run": 3, **extra}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"optim.lr": 0.05},
                                 distributions={"optim.lr": SPACE["optim.lr"]}, intermediate_values={1: 0.1},
                                 user_attrs={"epochs_run": 1, "reason": "diverged: training loss became nan"}))
    out = tmp_path / "out"

    assert main(["--study", "demo", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", str(out)]) == 0

    text = (out / "report.md").read_text()
    assert "baseline (trial 0, lwlrap 0.4000), by full config" in text and "| optim.lr | 0.001 | 0.01 |" in text
    assert "reached 7 epochs" in text and "would take 9" in text
    assert "Diverged (NaN/inf loss): 1 trials (2)." in text


def test_an_infeasible_top_trial_is_never_called_best(tmp_path):
    """The top value is over the kernel budget: report, pane summary and search.best all name the best
    feasible trial instead."""
    import io

    from search.kaggle.study_export import choose_trial
    from search.study.record import KERNEL_CONSTRAINT, best_trial
    from search.worker.console import Console

    study = _study(tmp_path / "k.db")
    for number, (value, violation) in enumerate([(0.5, -1.0), (0.9, 500.0), (0.7, -10.0)]):
        trial = study.ask()
        trial.suggest_float("optim.lr", 1e-4, 1e-1, log=True)
        trial.set_user_attr("baseline", number == 0)
        trial.set_constraint(KERNEL_CONSTRAINT, violation)
        study.tell(trial, value)
    assert best_trial(study).number == 2 and choose_trial(study).number == 2
    out = tmp_path / "out"
    assert main(["--study", "demo", "--storage", f"sqlite:///{tmp_path / 'k.db'}", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "Trial 2, lwlrap 0.7000" in text and "| 1 | 1 | 0.9000 |" in text and "over: not exportable" in text
    pane = io.StringIO()
    Console(baseline={}, worker_id="w", stream=pane).summary(study, "done")
    assert "best #2 lwlrap 0.7000 vs baseline #0 0.5000" in pane.getvalue()


@pytest.mark.slow
def test_bench_report_draws_reports_of_synthetic_studies(tmp_path):
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-m", "benchmarks.bench_report", "--trials", "6", "12", "--out", str(tmp_path)],
                         cwd=root, capture_output=True, text=True, timeout=300)  # benchmarks/ is a package
    assert run.returncode == 0, run.stderr[-2000:]
    for trials in (6, 12):
        report = tmp_path / f"report-{trials}"
        assert f"{trials} trials" in (report / "report.md").read_text()
        pictures = sorted(p.name for p in report.glob("*.png"))
        assert {"optimization_history.png", "intermediate_values.png", "parallel_coordinate.png",
                "slice.png"} <= set(pictures), pictures
        for name in pictures:
            _assert_real_png(report / name)


def test_pruning_saved_counts_finished_trials_against_the_full_budget():
    from search.study.record import pruning_saved

    def trial(state, epochs):
        attrs = {} if epochs is None else {"epochs_run": epochs}
        return create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None, user_attrs=attrs,
                            intermediate_values={1: 0.5} if state == TrialState.PRUNED else {})

    trials = [trial(TrialState.COMPLETE, 10), trial(TrialState.PRUNED, 3), trial(TrialState.FAIL, 1)]
    assert pruning_saved(trials, 10) == 1 - 13 / 20  # the failed trial is not a finished one
    assert pruning_saved(trials + [trial(TrialState.PRUNED, None)], 10) is None  # an unknown count: no figure
    assert pruning_saved([], 10) is None


def test_the_top_trials_show_what_each_changed_from_the_baseline(tmp_path):
    from search.study.record import StudyHandle
    from search.views.report import render_markdown

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    study = _demo_study(tmp_path / "demo.db")
    text = render_markdown(StudyHandle(study, open_storage(url), url), [], tmp_path)
    top = text.split("## Top 8 complete trials")[1].split("\n\n")[1].splitlines()
    assert top[0] == "| rank | trial | lwlrap | epochs | time | kernel budget | differs from the baseline |"
    best = next(row for row in top if row.startswith(f"| 1 | {study.best_trial.number} |"))
    assert best.endswith("| lr=0.095 depth=20 loss=focal |")  # as the pane lines: changed params by their short names
    assert next(row for row in top if "| 0 | 0.5000 |" in row).endswith("| (baseline) |")
