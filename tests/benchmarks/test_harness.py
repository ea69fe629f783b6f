"""benchmarks/harness.py: specs written from tables read back as the same spec, workers' failures named with their
log, process trees and memory read from /proc."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import tomllib

import pytest

from benchmarks import harness
from search.spec import load_spec


@pytest.mark.parametrize("name", ["demo", "quickstart", "fat2019"])
def test_a_shipped_spec_written_from_its_tables_is_the_same_spec(name, tmp_path):
    original = harness.STUDIES / f"{name}.toml"
    written = harness.write_spec(tmp_path / "studies" / f"{name}.toml", harness.read_spec(original))
    assert harness.read_spec(written) == harness.read_spec(original)
    assert load_spec(written).fingerprint() == load_spec(original).fingerprint()


def test_every_value_a_spec_can_hold_round_trips():
    tables = {"study": {"data": 'a "quoted" path\\ with\ttab, newline\n, é and \x7f', "data_scale": 0.05,
                        "epochs": 2, "keep": True, "off": False},
              "base": {"optim.eta_min": 5e-06, "optim.lr": 1e-16, "model.width": 2.0, "big": 10**20, "neg": -3},
              "space": {"model.head_hidden": {"int": [8, 32], "log": True, "when": {"model.head": ["mlp", "x"]}},
                        "empty": {}, "nested": [[1, 2], ["a"]]},
              "odd key": {"with space": 1}}
    assert tomllib.loads(harness.toml_text(tables)) == tables


def test_non_finite_floats_round_trip_and_other_types_are_refused():
    read = tomllib.loads(harness.toml_text({"t": {"up": math.inf, "down": -math.inf, "nan": math.nan}}))["t"]
    assert read["up"] == math.inf and read["down"] == -math.inf and math.isnan(read["nan"])
    with pytest.raises(TypeError, match="None"):
        harness.toml_value(None)


def test_with_study_changes_a_copy():
    tables = {"study": {"data": "demo", "epochs": 30}, "base": {}}
    changed = harness.with_study(tables, epochs=2, data_scale=0.05)
    assert changed["study"] == {"data": "demo", "epochs": 2, "data_scale": 0.05}
    assert tables["study"] == {"data": "demo", "epochs": 30}


def test_search_run_is_one_worker_command():
    command = harness.search_run("demo", "/s", "--trials", 3)
    assert command == [sys.executable, "-m", "search.run", "--study", "demo", "--studies-dir", "/s", "--trials", "3"]


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_fleet_names_the_worker_that_failed_its_exit_and_its_last_line(tmp_path):
    fleet = harness.Fleet(python("import sys; print('started'); print('no study'); sys.exit(sys.argv[1] == 'x')"),
                          tmp_path / "logs", prefix="pane")
    fleet.start("ok")
    fleet.start("x")
    fleet.wait()
    assert [p.returncode for p in fleet.procs] == [0, 1] and fleet.hung == 0
    with pytest.raises(RuntimeError, match=r"pane 1 of 2 exited 1 \(.*pane-1\.log\): no study"):
        fleet.check()
    assert fleet.log_text().count("started") == 2


def test_a_worker_still_running_at_the_timeout_is_counted_hung_and_killed(tmp_path):
    fleet = harness.Fleet(python("import time; time.sleep(60)"), tmp_path / "logs")
    fleet.start()
    started = time.monotonic()
    fleet.wait(timeout_s=0.5)
    assert fleet.hung == 1 and fleet.procs[0].returncode is not None and time.monotonic() - started < 30


def test_run_worker_appends_to_its_log_and_raises_with_the_last_line(tmp_path):
    log = tmp_path / "logs" / "study.log"
    harness.run_worker(python("print('first')"), log)
    with pytest.raises(RuntimeError, match="exited 3.*: second"):
        harness.run_worker(python("import sys; print('second'); sys.exit(3)"), log)
    assert log.read_text().split() == ["first", "second"]


def test_a_process_tree_and_its_memory_from_proc():
    marker = ("FAT2019_HARNESS_TEST", str(os.getpid()))
    parent = subprocess.Popen(python("import subprocess, sys, time; "
                                     "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
                                     "print('ready', flush=True); time.sleep(30)"),
                              stdout=subprocess.PIPE, text=True, env={**os.environ, marker[0]: marker[1]})
    try:
        assert parent.stdout.readline() == "ready\n"
        (child,) = harness.children_of({parent.pid})
        assert harness.process_tree(parent.pid) == {parent.pid, child}
        assert set(harness.processes_with_environment("=".join(marker))) == {parent.pid, child}
        assert harness.status_kb("VmRSS", child) > 0 and harness.status_kb("NoSuchField", child) == 0
        rss, pss = harness.rss_and_pss(child)
        assert 0 < pss <= rss
    finally:
        for pid in harness.process_tree(parent.pid) - {parent.pid}:
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
    assert harness.rss_and_pss(parent.pid) is None and harness.status_kb("VmRSS", parent.pid) == 0
