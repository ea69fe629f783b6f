"""benchmarks/bench_search_quality.py and its strategies (benchmarks/quality_strategies.py): every strategy is a valid
spec, the budget counts search plus export epochs, the targets are checked from the medians, and a tiny run of
each kind of strategy goes end to end (studies, default exports, kernels, table, checks, plot)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from optuna.distributions import CategoricalDistribution

from benchmarks import quality_strategies as q
from benchmarks.harness import REPO, STUDIES, write_spec
from search.kaggle.recipes import RECIPES
from search.spec import load_spec


@pytest.mark.parametrize("strategy", list(q.STRATEGIES))
def test_every_strategy_is_a_spec_the_worker_accepts(strategy, tmp_path):
    run = q.Run("demo", strategy, 1, folds=4)
    spec = load_spec(write_spec(tmp_path / f"{strategy}.toml", q.spec_tables(run, 1.0)))
    entry = q.STRATEGIES[strategy]
    assert spec.base["data.val_fraction"] == q.VAL_FRACTION
    config = spec.base_config()  # every override a TrainConfig key with a valid value (else ConfigError)
    if "train_once" in entry:
        assert spec.epochs == entry["train_once"]["optim.epochs"] and spec.base["seed"] == 1 and spec.folds is None
        assert {k: config.flat()[k] for k in entry["train_once"]} == entry["train_once"]
    else:
        assert spec.epochs == entry["epochs"]
        assert spec.folds == (4 if entry.get("cv") else None)
        assert spec.sampler["name"] == entry["sampler"]["name"] and spec.pruner["name"] == entry["pruner"]["name"]
        assert {k: spec.startup[k] for k in entry["startup"]} == entry["startup"]
    spec.make_sampler(0), spec.make_pruner()  # what a worker builds from it (a bad setting raises here)


@pytest.mark.parametrize("name", ["demo", "quickstart", "fat2019"])
def test_ours_is_the_search_every_shipped_spec_runs(name):
    """The table's `ours` row measures what users get: each shipped spec's epochs, sampler, startup and pruner."""
    ours = q.STRATEGIES["ours"]
    spec = load_spec(STUDIES / f"{name}.toml")
    assert spec.epochs == ours["epochs"]
    assert {k: spec.sampler[k] for k in ours["sampler"]} == ours["sampler"]
    assert {k: spec.startup[k] for k in ours["startup"]} == ours["startup"]
    assert {k: spec.pruner[k] for k in ours["pruner"]} == ours["pruner"]


def test_stacked_sweep_is_points_of_the_demo_space():
    """The expert line stacks values the knob sweep tried: each a key of the demo space, inside its range."""
    space = {p.key: p.distribution for p in load_spec(q.DEMO_SPEC).space}
    for key, value in q.STACKED_SWEEP.items():
        d = space[key]
        assert value in d.choices if isinstance(d, CategoricalDistribution) else d.low <= value <= d.high, key


def test_what_a_default_export_costs():
    assert q.export_epochs(RECIPES["folds-5"], 30) == 150  # five fold models retrained at the trial's epochs
    assert q.export_epochs(RECIPES["full-curated-2x"], 30) == 60
    assert q.export_epochs(RECIPES["cv-folds"], 30) == 0  # a cross-validated trial's own fold models
    with pytest.raises(ValueError, match="ensemble-8"):
        q.export_epochs(RECIPES["ensemble-8"], 30)
    assert q.planned_export_epochs(q.Run("demo", "ours", 0)) == 150  # today's ours at 30B ships at 45B
    assert q.planned_export_epochs(q.Run("demo", "ours-cv", 0)) == 0
    assert q.planned_export_epochs(q.Run("demo", "no-search", 0, epochs=2)) == 10


def _change(epochs, trial, export, test=None):
    return {"epochs": epochs, "trial": trial, "val": 0.0, "recipe": "folds-5", "export_epochs": export,
            **({} if test is None else {"test": test})}


def test_what_ships_at_a_budget_is_the_best_whose_export_still_fits():
    changes = [_change(30, 0, 150), _change(90, 3, 150), _change(200, 9, 150)]
    assert q.shipped(changes, 179, 500) is None  # the baseline plus its export: 180 epochs
    assert [q.shipped(changes, b, 500)["trial"] for b in (180, 239, 240, 349, 350, 600)] == [0, 0, 3, 3, 9, 9]
    assert q.shipped(changes, 300, 149) is None  # the study stopped at 149 < 300 - 150: trial 3 might have lost
    assert q.shipped(changes, 299, 149)["trial"] == 3  # ... here it had: every trial within 149 epochs is known
    free = [_change(150, 0, 0), _change(400, 5, 0)]  # cross-validated trials: the export is free
    assert q.shipped(free, 149, 600) is None and q.shipped(free, 150, 600)["trial"] == 0
    assert q.shipped(free, 400, 600)["trial"] == 5
    once = [_change(30, 0, 150)]  # one training: complete whatever the budget
    assert q.shipped(once, 179, None) is None and q.shipped(once, 10_000, None)["trial"] == 0


def _record(label, changes, searched, trials=(), data="demo"):
    return {"data": data, "label": label, "incumbents": changes, "searched_epochs": searched,
            "trials": [{"epochs": e} for e in trials]}


def test_held_out_score_trials_and_medians_at_a_budget():
    record = _record("ours", [_change(30, 0, 150, 0.70), _change(60, 1, 150, 0.75), _change(90, 3, 150)], 300,
                     trials=[30, 30, 3, 30, 30])
    assert q.held_out_at(record, 150) is None and q.held_out_at(record, 180) == 0.70
    assert q.held_out_at(record, 210) == 0.75
    assert q.held_out_at(record, 240) is None  # trial 3 ships there, but it was never exported
    assert q.trials_searched(record, 210) == 2 and q.trials_searched(record, 300) == 5
    assert q.trials_searched(record, 100) is None
    other = _record("ours", [_change(30, 0, 150, 0.60)], 300)
    late = _record("ours", [_change(60, 0, 150, 0.80)], 300)
    found = q.medians([record, other, late], [180, 210])
    assert found == {"demo": {"ours": {210: pytest.approx(0.75)}}}  # at 180 one repeat ships nothing yet


def _found(**lines):
    return {"demo": {name.replace("_", "-"): dict(points) for name, points in lines.items()}}


def test_the_targets_pass_and_fail_on_the_medians():
    budgets = [150, 200, 300, 450, 600]
    found = _found(ours=[(200, 0.74), (300, 0.76), (450, 0.77), (600, 0.78)],
                   no_search=[(200, 0.72), (300, 0.72), (450, 0.72), (600, 0.72)],
                   stacked_sweep=[(200, 0.80), (300, 0.80), (450, 0.80), (600, 0.80)])
    found["demo"]["ours-cv-stack K=5"] = {150: 0.70, 200: 0.745, 300: 0.76, 450: 0.797, 600: 0.81}
    found["demo"]["ours-cv K=5"] = {300: 0.75, 450: 0.75, 600: 0.75}
    lines = q.target_checks(found, budgets)
    stack = [line for line in lines if "ours-cv-stack" in line]
    assert [line[:4] for line in stack] == ["PASS", "PASS", "PASS", "PASS"]
    assert "at 20B: 0.7450 vs 0.7200 (+0.0250)" in stack[1] and "at 45B: 0.7970 vs 0.7200" in stack[2]
    assert "15B" not in stack[0]  # ours ships nothing at 15B: nothing to be level with
    plain = [line for line in lines if "ours-cv K=5" in line]
    assert [line[:4] for line in plain] == ["FAIL", "n/a ", "FAIL", "FAIL"]  # nothing at 20B where ours ships
    assert "20B nothing vs 0.7400" in plain[0]
    assert all(line.split()[1] == "demo" for line in lines) and len(lines) == 8
    assert q.target_checks(_found(ours=[(200, 0.7)]), budgets) == []  # no candidate in the records


# One strategy of each kind: a one-split search shipped with the default export (five retrained fold models),
# a cross-validated search shipping its own fold models (free), and one training shipped the default way (a
# flat line). The others differ from these only in their spec, which the tests above build.
TINY_STRATEGIES = ("ours", "ours-cv", "no-search")


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 2 min on a loaded 2-core box: the exports and kernels are processes
def test_a_tiny_run_of_each_kind_of_strategy_end_to_end(tmp_path, session_cache):
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "benchmarks.bench_search_quality", "--data", "demo", "--strategies",
               *TINY_STRATEGIES, "--repeats", "1", "--budgets", "0.5", "1", "--epochs", "1", "--folds", "2",
               "--scale", "0.05", "--jobs", "2", "--out", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    records = {s: json.loads((out / "records" / f"{name}.json").read_text()) for s, name in (
        ("ours", "q-demo-ours-e1-r0"), ("ours-cv", "q-demo-ours-cv-k2-e1-r0"), ("no-search", "q-demo-no-search-e1-r0"))}
    ours, cv, once = records["ours"], records["ours-cv"], records["no-search"]
    # the one-split search stopped at 10 epochs less its folds-5 export's 5; its baseline plus that costs 6
    assert ours["searched_epochs"] >= 5 and all(c["export_epochs"] == 5 for c in ours["incumbents"])
    assert q.held_out_at(ours, 5) is None and 0.0 < q.held_out_at(ours, 10) <= 1.0
    # the cross-validated one ran to the whole budget, each finished trial on both folds, its exports free
    assert cv["searched_epochs"] >= 10 and all(c["export_epochs"] == 0 for c in cv["incumbents"])
    assert all(t["folds_done"] == 2 for t in cv["trials"] if t["state"] == "COMPLETE")
    assert 0.0 < q.held_out_at(cv, 5) <= 1.0 and 0.0 < q.held_out_at(cv, 10) <= 1.0
    # one training: 1 epoch plus a 5-epoch export, a flat line from 6 epochs on
    assert once["searched_epochs"] is None and len(once["trials"]) == 1
    assert q.held_out_at(once, 5) is None and 0.0 < q.held_out_at(once, 10) <= 1.0
    for name, record in records.items():  # each shipped export was run by its kernel and scored, once
        for change in record["incumbents"]:
            if "test" in change:
                cached = out / "exports" / f"{q.Run('demo', name, 0, 2, 1).name}-t{change['trial']}-{change['recipe']}.json"
                assert json.loads(cached.read_text())["trained_epochs"] == change["export_epochs"]
    assert "| demo | ours | 1 | — |" in run.stdout and "| demo | ours-cv K=2 | 1 |" in run.stdout
    assert "| demo | no-search | 1 | — |" in run.stdout
    assert "demo ours-cv K=2: level with ours" in run.stdout  # the target lines, for the candidate it ran
    assert (out / "anytime.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = subprocess.run([*command, "--table"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and table.stdout == run.stdout[run.stdout.index("| data |"):]  # from the records
    # which value of a cross-validated trial ranks as test does: every complete trial exported (free) and scored
    values = subprocess.run([sys.executable, "-m", "benchmarks.bench_cv_value", "--out", str(out), "--min-trials", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert values.returncode == 0, values.stdout[-2000:] + values.stderr[-2000:]
    (study,) = json.loads((out / "cv-value.json").read_text())
    complete = [t["number"] for t in cv["trials"] if t["state"] == "COMPLETE"]
    assert study["study"] == "q-demo-ours-cv-k2-e1-r0" and [r["trial"] for r in study["rows"]] == complete
    assert all(0.0 < r["test"] <= 1.0 and r["mean"] is not None for r in study["rows"])
    assert f"| q-demo-ours-cv-k2-e1-r0 | {len(complete)} |" in values.stdout


def test_kendall_tau_is_scipys_tau_b():
    from scipy.stats import kendalltau

    from benchmarks.bench_cv_value import kendall_tau
    xs, ys = [0.1, 0.4, 0.4, 0.2, 0.9, 0.5], [0.3, 0.1, 0.5, 0.5, 0.8, 0.2]  # ties in both
    assert kendall_tau(xs, ys) == pytest.approx(kendalltau(xs, ys).statistic)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0 and kendall_tau([1, 1], [2, 3]) == 0.0
