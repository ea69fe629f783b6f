"""benchmarks/bench_quickstart.py: what each run asks the quickstart for, and what its record says it asked."""
from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks import bench_quickstart as bench

PRINTED = """study quickstart: 12 trials
  validation lwlrap     0.7281         0.7473     +0.0192
  held-out test lwlrap  0.7294         0.7363     +0.0068
"""


@pytest.mark.parametrize("threads, passed, recorded", [(1, ["--threads", "1"], 1), (0, [], "default")])
def test_threads_zero_leaves_the_quickstart_its_own_default(tmp_path, monkeypatch, threads, passed, recorded):
    asked = []

    def quickstart(argv, **kwargs):
        asked.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout=PRINTED, stderr="")

    monkeypatch.setattr(bench.subprocess, "run", quickstart)
    record = bench.measure("demo", 0, 12, tmp_path, threads=threads)
    (argv,) = asked
    options = argv[argv.index("search.quickstart") + 1:]
    assert [w for i, w in enumerate(options) if w == "--threads" or options[i - 1] == "--threads"] == passed
    assert record["threads"] == recorded and (record["test_baseline"], record["test_best"]) == (0.7294, 0.7363)
    assert json.loads((tmp_path / "records" / "quickstart-demo-r0.json").read_text())["threads"] == recorded


def test_the_table_of_a_cross_validated_quickstart_is_read_too():
    printed = PRINTED.replace("validation lwlrap", "out-of-fold lwlrap")
    assert bench.parse(printed) == {"validation": (0.7281, 0.7473), "held-out test": (0.7294, 0.7363)}
    with pytest.raises(ValueError, match="no result table"):
        bench.parse(PRINTED.replace("validation lwlrap", "fold-mean lwlrap"))
