"""benchmarks/bench_rounds.py's reading of its records (the run itself: test_every_benchmark_runs.py)."""
from __future__ import annotations

import pytest

from benchmarks import bench_rounds as bench


def test_trials_to_reach_reads_the_best_after_k_trials_not_a_displaced_incumbent():
    # the inherited incumbents: #3 scored 0.66 on test, then #4 (better on validation) 0.63 displaced it
    warm = {"incumbents": [{"own_trials": 0, "test": 0.60}, {"own_trials": 0, "test": 0.66},
                           {"own_trials": 0, "test": 0.63}, {"own_trials": 7, "test": 0.65},
                           {"own_trials": 12, "test": 0.70}]}
    assert bench.test_after(warm, 0) == 0.63 and bench.test_after(warm, 11) == 0.65
    assert bench.trials_to_reach(warm, 0.64) == 7  # not 0: after 0 own trials the export scores 0.63
    assert bench.trials_to_reach(warm, 0.70) == 12
    assert bench.trials_to_reach(warm, 0.71) is None


def test_round_one_narrows_only_the_space_never_the_base():
    spec = bench.spec_tables(bench.QualityRun("demo", bench.STRATEGY, 0), 1.0)
    narrow = bench.with_space(spec, bench.NARROW)
    assert {k: v for k, v in narrow.items() if k != "space"} == {k: v for k, v in spec.items() if k != "space"}
    assert narrow["space"]["optim.lr"] == {"float": [5e-4, 2e-3], "log": True}
    assert narrow["space"]["features.crop_frames"] == {"int": [128, 256], "log": True}
    assert set(narrow["space"]) == set(spec["space"])
    wide = bench.with_space(narrow, bench.demo_entries(bench.NARROW))
    assert wide["space"] == spec["space"]  # nothing flagged: the demo spec's ranges


def test_a_space_entry_the_spec_lacks_is_refused():
    spec = bench.spec_tables(bench.QualityRun("demo", bench.STRATEGY, 0), 1.0)
    with pytest.raises(KeyError, match="optim.nothing"):
        bench.with_space(spec, {"optim.nothing": {"float": [0.0, 1.0]}})
