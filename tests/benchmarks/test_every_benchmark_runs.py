"""Every script in benchmarks/ runs against the current code: each at its smallest size, as ``python -m
benchmarks.<name>`` in a subprocess, exit 0 and the table (or records) it exists to print. Those run elsewhere
are named in COVERED_ELSEWHERE; LIBRARIES are modules the scripts import, not scripts."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness import REPO, run_worker, search_run
from tests.search import conftest as search_fixtures
from tests.search.conftest import write_spec

warm_cache = search_fixtures.warm_cache  # the search tests' warm feature cache, as a fixture of this module too

BENCH = REPO / "benchmarks"
COVERED_ELSEWHERE = {"bench_search_quality": "tests/benchmarks/test_search_quality.py",
                     "bench_cv_value": "tests/benchmarks/test_search_quality.py",
                     "gpu_check": "tests/benchmarks/test_gpu_check.py",
                     "bench_ensemble": "tests/search/test_ensemble.py"}  # over that module's five-trial study
LIBRARIES = {"scale_data": "scale", "harness": "stress", "stress_limits": "stress",
             "quality_strategies": "bench_search_quality"}  # imported by it, never run
NUMBER = r"([0-9][0-9,]*\.?[0-9]*)"


def bench(script: str, *args: str, timeout: float = 300) -> str:
    """Run ``python -m benchmarks.<script> args`` from the repository root; assert exit 0; its stdout."""
    run = subprocess.run([sys.executable, "-m", f"benchmarks.{script}", *map(str, args)], cwd=REPO,
                         capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, f"{script} exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout


def rows(output: str, first_cell: str) -> list[list[str]]:
    """The cells of each markdown table row of ``output`` whose first cell starts with ``first_cell``."""
    found = []
    for line in output.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0].startswith(first_cell):
                found.append(cells)
    return found


def tiny_spec(folder: Path, name: str, **kwargs) -> Path:
    return write_spec(folder, name, **kwargs)


# -- one case per benchmark (mode) ------------------------------------------------------------------------------
def case_bench_report(tmp_path: Path) -> None:
    out = bench("bench_report", "--trials", "6", "--out", tmp_path / "report")
    (row,) = rows(out, "6")
    complete, pruned, failed = map(int, row[1:4])
    assert complete + pruned + failed == 6 and complete >= 1  # the baseline completes: nothing prunes trial 0
    assert 0.0 <= float(row[4]) < 120.0
    assert (tmp_path / "report" / "index.html").is_file() or any((tmp_path / "report").iterdir())


def case_bench_features(tmp_path: Path, demo_data: Path) -> None:
    out = bench("bench_features", "--data", demo_data, "--clips", "8", "--workers", "1", "--epochs", "1",
                "--batch-size", "4")
    assert "\n8 clips," in out
    for name in ("per-item", "cache: first fill", "cache: a later run", "cache: epoch"):
        (row,) = rows(out, name)
        seconds, per_s = float(row[1]), float(row[2].replace(",", ""))
        assert seconds > 0 and per_s > 0


def case_bench_training(tmp_path: Path, demo_data: Path) -> None:
    out = bench("bench_training", "--threads", "1", "--epochs", "1", "--scale", "0.05",
                "--set", "model.width=0.0625", "--set", "features.crop_frames=64")
    assert "torch threads: 1" in out
    (demo,) = rows(out, "demo config")
    (changed,) = rows(out, "with model.width=0.0625 features.crop_frames=64")
    for row in (demo, changed):
        clips, epoch_s, per_s, inference = int(row[1]), float(row[2]), float(row[3]), float(row[4])
        assert clips > 0 and epoch_s > 0 and per_s > 0 and inference > 0


def case_bench_search_pruning(tmp_path: Path, warm_cache: Path) -> None:
    spec = tiny_spec(tmp_path, "prune", epochs=3)
    curves = tmp_path / "curves.json"
    out = bench("bench_search", "pruning", "--spec", spec, "--trials", "3", "--threads", "1", "--curves", curves)
    recorded = json.loads(curves.read_text())
    assert len(recorded) == 3 and all(len(c) == 3 and all(0.0 < v <= 1.0 for v in c) for c in recorded)
    (none,) = rows(out, "none")
    assert none[1:3] == ["0", "9 (100%)"] and float(none[3].split()[0]) == pytest.approx(max(map(max, recorded)), abs=1e-4)
    assert len(rows(out, "median")) == 2 and rows(out, "ASHA") and rows(out, "hyperband")
    again = bench("bench_search", "pruning", "--spec", spec, "--curves", curves, timeout=60)  # replays, no training
    assert rows(again, "none") == [none]


def case_bench_search_workers(tmp_path: Path, warm_cache: Path) -> None:
    spec = tiny_spec(tmp_path, "workers", epochs=1)
    out = bench("bench_search", "workers", "--spec", spec, "--trials", "2")
    table = rows(out, "1") + rows(out, "2")
    assert [r[0] for r in table] == ["1", "2"]
    for row in table:
        assert int(row[2]) >= 2 and float(row[4]) > 0  # the study's trials all finished
    assert table[0][5] == "1.00x"


def case_bench_search_storage(tmp_path: Path) -> None:
    out = bench("bench_search", "storage", "--spec", tiny_spec(tmp_path, "store"), "--trials", "3")
    assert out.startswith("3 trials, each:")
    table = rows(out, "in-memory") + rows(out, "SQLite")
    assert len(table) == 3 and all(float(r[1]) > 0 for r in table)


def case_bench_export(tmp_path: Path, warm_cache: Path) -> None:
    """One recipe exported as trained (its kept weights), one retrained, and one through a re-score, from a tiny
    finished study named as the search-quality benchmark names its studies. Each recipe's own export is tested in
    tests/search/test_best.py; here, what the benchmark adds: its choice of flags per recipe, its records, its
    table."""
    from search.kaggle.recipes import RECIPES

    studies = tmp_path / "quality" / "studies"
    tiny_spec(studies, "q-demo-ours-r0", epochs=2, study="keep_weights = 10")
    run_worker(search_run("q-demo-ours-r0", studies, "--trials", 3, "--threads", 1), tmp_path / "worker.log",
               timeout=300)
    recipes = ["single", "single-2x"]
    assert RECIPES["single"].as_trained and not RECIPES["single-2x"].as_trained
    out = bench("bench_export", "--from", tmp_path / "quality", "--recipes", *recipes, "--jobs", "2",
                "--out", tmp_path / "bench", timeout=600)
    for name in recipes:
        record = json.loads((tmp_path / "bench" / "records" / f"q-demo-ours-r0-{name}.json").read_text())
        recipe = RECIPES[name]
        assert 0.0 < record["test_lwlrap"] <= 1.0  # its kernel ran on the held-out clips and was scored
        assert record["models"] == recipe.models == 1
        assert record["recipe_epochs"] == 2 * recipe.epochs_scale
        assert record["trained_epochs"] == (0 if recipe.as_trained else record["recipe_epochs"])
        assert record["validation"]["held_out"] is True
    assert [r[1] for r in rows(out, "demo")] == recipes
    assert rows(out, "demo")[0][4] == "+0.0000"  # single against itself

    out = bench("bench_export", "--from", tmp_path / "quality", "--recipes", "single", "--rescore", "2",
                "--out", tmp_path / "bench", timeout=600)
    rescored = json.loads((tmp_path / "bench" / "records" / "q-demo-ours-r0-single-rescore2.json").read_text())
    assert rescored["rescore"] == 2 and len(rescored["rescore_trials"]) == 2
    assert rescored["rescore_epochs"] == 2 * 2  # two trials, one other split each, 2 epochs
    assert rescored["trained_epochs"] == 2  # no kept weights: the chosen trial retrained
    assert [r[1] for r in rows(out, "demo")] == ["single", "single + rescore 2"]


def case_bench_quickstart(tmp_path: Path, warm_cache: Path) -> None:
    spec = tiny_spec(tmp_path / "spec", "quickstart", epochs=2)
    out_dir = tmp_path / "bench"
    out = bench("bench_quickstart", "--data", "demo", "--repeats", "1", "--trials", "2", "--jobs", "1",
                "--spec", spec, "--out", out_dir)
    record = json.loads((out_dir / "records" / "quickstart-demo-r0.json").read_text())
    assert record["trials"] == 2 and record["wall_s"] > 0 and record["threads"] == 1  # the table's runs: one thread
    for key in ("val_baseline", "val_best", "test_baseline", "test_best"):
        assert 0.0 < record[key] <= 1.0
    (row,) = rows(out, "demo")
    assert row[1] == "0" and row[3] == f"{record['test_baseline']:.4f} → {record['test_best']:.4f}"
    assert "demo: the search beat its baseline on held-out test in" in out and "of 1 repeats" in out
    table = bench("bench_quickstart", "--data", "demo", "--out", out_dir, "--table", timeout=60)
    assert rows(table, "demo") == [row]


def case_bench_rounds(tmp_path: Path) -> None:
    out_dir = tmp_path / "bench"
    out = bench("bench_rounds", "--data", "demo", "--repeats", "1", "--trials", "2", "--epochs", "1",
                "--scale", "0.05", "--jobs", "1", "--out", out_dir, timeout=600)
    records = {name: json.loads((out_dir / "records" / f"rounds-demo-{name}-r0.json").read_text())
               for name in ("round1", "cold", "warm")}
    assert all(r["own_trials"] == 2 for r in records.values())
    assert records["cold"]["inherited"] == 0 and records["warm"]["inherited"] == 2  # round 1's, none retrained
    for record in records.values():
        assert record["incumbents"] and all(0.0 < i["test"] <= 1.0 for i in record["incumbents"])
    spec = (out_dir / "studies" / "rounds-demo-warm-r0.toml").read_text()
    assert '"optim.lr" = { float = [5e-4, 2e-3], log = true }' not in spec  # round 2's space is the widened one
    (row,) = rows(out, "demo")
    assert row[1] == "1" and row[-1] == (", ".join(records["round1"]["edge_flagged"]) or "none")
    table = bench("bench_rounds", "--data", "demo", "--trials", "2", "--out", out_dir, "--table", timeout=60)
    assert rows(table, "demo") == [row]


def case_bench_knobs(tmp_path: Path, demo_data: Path) -> None:
    out_dir = tmp_path / "bench"
    args = ("--data", "demo", "--scale", "0.05", "--epochs", "1", "--base-seeds", "2", "--knobs", "optim.eta_min",
            "--jobs", "2", "--out", out_dir)
    out = bench("bench_knobs", *args)
    records = [json.loads(p.read_text()) for p in sorted((out_dir / "records").glob("knobs-demo-*.json"))]
    floors = sorted(r["value"] for r in records if r["knob"] == "optim.eta_min")
    assert floors == [0.0, 5e-05, 0.0001] and len(records) == 5  # and the base at 2 seeds
    for record in records:
        assert record["error"] is None and record["epochs"] == 1 and 0.0 < record["test"] <= 1.0
        assert (record["overrides"].get("optim.schedule") == "cosine") is (record["knob"] != "(base)")
    table = rows(out, "`optim.eta_min`")
    assert len(table) == 4 and sum(int(part.split()[0]) for part in table[-1][1].split(", ")) == 3  # its summary
    again = bench("bench_knobs", *args, timeout=60)  # every record there: trains nothing
    assert again.startswith("0 trainings to run") and rows(again, "`optim.eta_min`") == table


def day_record(out: Path, printed: str) -> dict:
    """The one run a benchmark added to its day's records file in ``out`` (and said so)."""
    (path,) = out.glob("*.json")
    assert f"added this run to {path}" in printed
    (run,) = json.loads(path.read_text())["runs"]
    return run


def case_bench_inference_cost(tmp_path: Path, demo_data: Path) -> None:
    out = bench("bench_inference_cost", "--rounds", "1", "--load-procs", "1", "--scale", "0.05", "--threads", "1",
                "--out", tmp_path / "cost")
    run = day_record(tmp_path / "cost", out)
    assert [(r["threads"], r["condition"]) for r in run["records"]] == [(1, "idle"), (1, "loaded")]
    methods = run["records"][0]["cost_s_per_s_audio"]
    assert methods and all(0 < cost for r in run["records"] for cost in r["cost_s_per_s_audio"].values())
    assert set(run["summary_s_per_1000s_audio"]) == {f"1 thread(s) {name}" for name in methods}


def case_bench_threads(tmp_path: Path, demo_data: Path) -> None:
    out = bench("bench_threads", "--rounds", "1", "--load-procs", "1", "--epochs", "1", "--scale", "0.05",
                "--out", tmp_path / "threads")
    run = day_record(tmp_path / "threads", out)
    policies = ["fixed 2", "fixed 1", "per-epoch"]
    assert sorted((r["policy"], r["condition"]) for r in run["records"]) == sorted(
        (policy, condition) for policy in policies for condition in ("idle", "loaded"))
    for record in run["records"]:
        assert len(record["epoch_s"]) == 1 and record["epoch_s"][0] > 0
        fixed = {"fixed 2": [2], "fixed 1": [1]}.get(record["policy"])
        assert record["epoch_threads"] == fixed if fixed else 1 <= record["epoch_threads"][0] <= os.cpu_count()
    assert list(run["summary_mean_epoch_s"]) == policies


def case_scale(tmp_path: Path) -> None:
    out = bench("scale", "--root", tmp_path / "scale", "--fraction", "0.01", "--mels", "16", "--workers", "2",
                "--steps", "1", "--epochs", "1", "--fill-clips", "4", "--per-item-clips", "2", timeout=600)
    (data,) = rows(out, "data set")
    assert "50 curated" in data[1] and "198 noisy" in data[1]
    (fill,) = rows(out, "cache fill")
    assert "4 wavs" in fill[0] and float(re.match(NUMBER, fill[1]).group(1)) > 0
    (plan,) = rows(out, "memory plan")
    assert "(exact)" in plan[1]  # the plan predicts the banks' file sizes to the byte
    (many,) = rows(out, "2 workers at once")
    ratio = float(re.search(r"\*\*([0-9.]+)x\*\*", many[1]).group(1))
    assert 0.5 < ratio < 3.0
    assert "build status lines:" in out


def case_stress(tmp_path: Path, warm_cache: Path) -> None:
    out = bench("stress", "--backends", "sqlite", "--workers", "2", "--trials", "3", "--chaos-s", "3",
                "--scale", "0.05", "--epochs", "2", "--full-disk-epochs", "8", "--scenarios", "storm", "full-disk",
                timeout=600)  # the out-of-memory scenarios take minutes of worker restarts: run by hand
    results = [json.loads(block) for block in re.findall(r"^\{\n.*?^\}$", out, flags=re.M | re.S)]
    storm, disk, artifacts_disk = results
    assert artifacts_disk["scenario"] == "full disk: artifact store only"
    assert storm["backend"] == "sqlite" and storm["finished"] >= storm["asked"] == 3
    assert storm["duplicates"] == 0 and storm["running"] == 0 and storm["unloadable"] == 0
    assert storm["dashboard_polls"] > 0 and storm["dashboard_errors"] == 0
    assert storm["orphans"] == 0 and storm["temp_files_left"] == 0 and storm["hung_workers"] == 0
    assert disk["scenario"] == "full disk"
    if "skipped" not in disk:  # the tmpfs mount needs root and a kernel that lets this container mount
        assert disk["exit_code"] != 0 and disk["retry_exit_code"] == 0 and disk["retry_state"] == "COMPLETE"
        assert disk["retry_resumed_from_epoch"] >= 1 and disk["temp_files_left"] == 0
    (finished,) = rows(out, "trials finished / asked")
    assert finished[1] == f"{storm['finished']} / 3"


CASES = {
    "bench_report": case_bench_report,
    "bench_features": case_bench_features,
    "bench_training": case_bench_training,
    "bench_search pruning": case_bench_search_pruning,
    "bench_search workers": case_bench_search_workers,
    "bench_search storage": case_bench_search_storage,
    "bench_export": case_bench_export,
    "bench_quickstart": case_bench_quickstart,
    "bench_rounds": case_bench_rounds,
    "bench_knobs": case_bench_knobs,
    "bench_inference_cost": case_bench_inference_cost,
    "bench_threads": case_bench_threads,
    "scale": case_scale,
    "stress": case_stress,
}


@pytest.mark.slow
@pytest.mark.timeout(660)  # scale.py and stress.py get 600 s of their own on a loaded box
@pytest.mark.parametrize("case", list(CASES))
def test_benchmark_runs_at_its_smallest_size(case, request, tmp_path, session_cache):
    function = CASES[case]
    fixtures = [name for name in function.__code__.co_varnames[:function.__code__.co_argcount] if name != "tmp_path"]
    function(tmp_path, *(request.getfixturevalue(name) for name in fixtures))


def test_every_benchmark_script_has_a_case():
    """A new benchmarks/*.py without a case here (or a test elsewhere) fails this."""
    scripts = {p.stem for p in BENCH.glob("*.py")} - {"__init__"}
    cased = {name.split()[0] for name in CASES}
    assert scripts - cased - set(COVERED_ELSEWHERE) - set(LIBRARIES) == set()
    assert cased | set(COVERED_ELSEWHERE) | set(LIBRARIES) <= scripts  # no case for a script that is gone
    for other, test in COVERED_ELSEWHERE.items():
        assert other in (REPO / test).read_text(encoding="utf-8")
    for library, user in LIBRARIES.items():
        assert "__main__" not in (BENCH / f"{library}.py").read_text(encoding="utf-8")  # not a script
        assert f"from benchmarks.{library} import" in (BENCH / f"{user}.py").read_text(encoding="utf-8")
