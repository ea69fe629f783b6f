"""benchmarks/bench_search_quality.py: its strategies are valid specs, its budget arithmetic is right, and a tiny
run of each kind of strategy goes end to end (studies, exports, kernels, table, plot)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import bench_search_quality as bench
from benchmarks.harness import REPO, STUDIES, write_spec
from search.spec import load_spec


@pytest.mark.parametrize("strategy", list(bench.STRATEGIES))
def test_every_strategy_is_a_spec_the_worker_accepts(strategy, tmp_path):
    spec = load_spec(write_spec(tmp_path / f"{strategy}.toml", bench.spec_tables(bench.Run("demo", strategy, 1), 1.0)))
    entry = bench.STRATEGIES[strategy]
    assert spec.base["data.val_fraction"] == bench.VAL_FRACTION
    if "recipe" in entry:
        assert spec.epochs == entry["recipe"]["optim.epochs"] and spec.base["seed"] == 1
        assert spec.base["optim.batch_size"] == 64 and spec.base["augment.mixup_alpha"] == 1.0
    else:
        assert spec.epochs == entry["epochs"]
        assert spec.sampler["name"] == entry["sampler"]["name"] and spec.pruner["name"] == entry["pruner"]["name"]
        assert spec.startup["near_baseline"] == entry["startup"]["near_baseline"]
    spec.make_sampler(0), spec.make_pruner()  # what a worker builds from it (a bad setting raises here)


@pytest.mark.parametrize("name", ["demo", "quickstart", "fat2019"])
def test_ours_is_the_search_every_shipped_spec_runs(name):
    """The table's `ours` row measures what users get: each shipped spec's epochs, sampler, startup and pruner."""
    ours = bench.STRATEGIES["ours"]
    spec = load_spec(STUDIES / f"{name}.toml")
    assert spec.epochs == ours["epochs"]
    assert {k: spec.sampler[k] for k in ours["sampler"]} == ours["sampler"]
    assert {k: spec.startup[k] for k in ours["startup"]} == ours["startup"]
    assert {k: spec.pruner[k] for k in ours["pruner"]} == ours["pruner"]


def _record(strategy, budget, incumbents):
    return {"data": "demo", "strategy": strategy, "repeat": 0, "budget_epochs": budget, "trials": [],
            "incumbents": [{"epochs": e, "trial": n, "val": 0.0, "test": t} for e, n, t in incumbents]}


def test_what_a_study_would_have_exported_at_a_budget():
    record = _record("ours", 150, [(10, 0, 0.5), (40, 3, 0.6), (120, 9, 0.7)])
    assert bench.test_at(record, 9) is None  # nothing finished yet
    assert [bench.test_at(record, e) for e in (10, 39, 40, 119, 150)] == [0.5, 0.5, 0.6, 0.6, 0.7]
    assert bench.test_at(record, 300) is None  # this repeat stopped at 150 epochs
    recipe = _record("seed-recipe", 10, [(30, 0, 0.8)])
    assert bench.test_at(recipe, 20) is None and bench.test_at(recipe, 300) == 0.8  # one training, cost 30


# One strategy per path through the benchmark: a search whose best changes within the budget (random), one whose
# first trial outlasts it (ours: its 30-epoch baseline, nothing to export within 20 epochs) and a single training
# (seed-recipe). The other strategies differ from these only in their spec, which the tests above build.
TINY_STRATEGIES = ("random", "ours", "seed-recipe")


@pytest.mark.slow
@pytest.mark.timeout(900)  # three studies, two of 30-epoch trainings, on a loaded 2-core box
def test_a_tiny_run_of_each_kind_of_strategy_end_to_end(tmp_path, session_cache):
    out = tmp_path / "bench"
    run = subprocess.run([sys.executable, "-m", "benchmarks.bench_search_quality", "--data", "demo",
                          "--strategies", *TINY_STRATEGIES, "--repeats", "1", "--budgets", "1", "2",
                          "--scale", "0.05", "--jobs", "2", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for strategy in TINY_STRATEGIES:
        record = json.loads((out / "records" / f"q-demo-{strategy}-r0.json").read_text())
        spent = sum(t["epochs"] for t in record["trials"])
        assert spent >= (30 if strategy == "seed-recipe" else 20)  # ran to its budget (the recipe: one training)
        if strategy == "ours":  # its baseline trains its whole 30 epochs: nothing to export within 20
            assert record["trials"][0]["epochs"] == 30 and not record["incumbents"]
        else:
            assert record["incumbents"]
        for incumbent in record["incumbents"]:
            assert 0.0 < incumbent["test"] <= 1.0
            assert (out / "exports" / f"q-demo-{strategy}-r0-{incumbent['trial']}.json").exists()
        assert f"| demo | {strategy} | 1 |" in run.stdout
    assert (out / "anytime.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
