"""python -m benchmarks.gpu_check --tiny runs every step at toy size on CPU (its tests step: the first of the tests
it would run, the suite runs them all): exit 0, every step in the JSON with figures or an explicit skip reason,
and the one table printed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import gpu_check
from benchmarks.harness import REPO

STEPS = ("tests", "baseline", "panes", "kernel")


@pytest.mark.slow
@pytest.mark.timeout(600)  # the subprocess's own limit is 540 s
def test_gpu_check_tiny_runs_every_step(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--panes", "1,2",
                          "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=540,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, f"gpu_check exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    report = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))
    steps = report["steps"]
    assert list(steps) == list(STEPS)
    for name, record in steps.items():
        assert "error" not in record, (name, record)
        assert ("figures" in record) != ("skipped" in record), (name, record)
        assert record["seconds"] > 0
        if "skipped" in record:
            assert record["skipped"].startswith("skipped: "), (name, record)
    # --tiny runs every step on CPU; only a GPU's own figures are skipped, each with its reason.
    tests = steps["tests"]["figures"]
    assert tests["passed"] == 1 and tests["failed"] == 0 and tests["exit_code"] == 0
    assert tests["tests"] == gpu_check.cuda_tests()[:1]  # --tiny: the first, a check of the step
    base = steps["baseline"]["figures"]
    assert base["device"] == "cpu" and base["train_clips"] > 0 and base["epochs"] == 1
    assert base["samples_per_s"] > 0 and base["train_gflops_per_sample"] > 0
    assert base["peak_gpu_mib"] == "skipped: no CUDA" and base["bf16_fraction_of_peak"] == "skipped: no CUDA"
    assert base["channels_last"].startswith("not supported by the trainer")
    runs = steps["panes"]["figures"]["runs"]
    assert [r["panes"] for r in runs] == [1, 2]
    for r in runs:
        assert r["finished"] >= 1 and r["trials_per_hour"] > 0 and r["peak_rss_mib_per_pane"] > 50
    kernel = steps["kernel"]["figures"]
    assert kernel["device"] == "cpu" and kernel["clips"] > 0 and kernel["clips_per_s"] > 0
    assert kernel["projected_kaggle_s"] == pytest.approx(kernel["projected_for_clips"] / kernel["clips_per_s"], rel=0.05)
    # The table: a header and one row per step, the same one written to table.md.
    table = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| step | seconds | result |"
    assert [row.split("|")[1].strip() for row in table[1:]] == list(STEPS)
    assert (out / "table.md").read_text(encoding="utf-8").splitlines() == ["| step | seconds | result |", "|---|---|---|",
                                                                          *table[1:]]
    assert (out / "logs.tar.gz").is_file()


def test_the_tests_step_takes_whole_files_or_single_tests_that_mention_cuda():
    ids = gpu_check.cuda_tests()
    assert "tests/trainer/test_features.py" in ids  # a module-level name (its DEVICES) mentions cuda
    assert not any(i.startswith("tests/benchmarks/") for i in ids)  # this file: the check would run itself
    assert all("::" in i or "cuda" in (REPO / i).read_text(encoding="utf-8") for i in ids)
    functions = [i for i in ids if "::" in i]
    assert functions and all(i.split("::")[1].startswith("test") for i in functions)
