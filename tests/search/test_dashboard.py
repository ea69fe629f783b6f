"""search.dashboard: the CLI's address and tunnel line, serving while workers write, and a real browser."""
from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib import image as mpimg
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.dashboard import main, study_url
from search.study.storage import default_storage_url, open_storage
from search.views.tunnel import tunnel_line
from tests.search.conftest import load, wait_for, worker, write_spec

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--hide-scrollbars"]

# A worker stand-in: opens the storage like search.run does and writes trials with per-epoch values.
WRITER = """
import sys, time, optuna
from search.study.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="demo", storage=open_storage(sys.argv[1], heartbeat_interval=1))
def objective(trial):
    lr = trial.suggest_float("optim.lr", 1e-4, 1e-1, log=True)
    for epoch in range(1, 4):
        trial.report(lr * epoch, epoch)
        time.sleep(0.05)
    return lr
study.optimize(objective, n_trials=int(sys.argv[2]))
"""


def _make_study(path: Path, n_trials: int) -> optuna.Study:
    study = optuna.create_study(study_name="demo", storage=open_storage(f"sqlite:///{path}"), direction="maximize")
    for i in range(n_trials):
        lr = 10 ** (-4 + 3 * i / max(n_trials - 1, 1))
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=lr, params={"optim.lr": lr},
                                     distributions={"optim.lr": FloatDistribution(1e-4, 1e-1, log=True)},
                                     intermediate_values={1: lr / 2, 2: lr}))
    return study


class _Dashboard:
    """``python -m search.dashboard`` as a subprocess on a free port; ``url`` is the study page it printed."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "search.dashboard", "--port", "0", *args],
                                        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        for line in self.process.stdout:  # the banner ends with "stop: Ctrl-C" just before serving
            self.lines.append(line)
            if "open: " in line:
                self.url = line.split("open: ", 1)[1].strip()
            if "stop: " in line:
                break
        else:
            raise AssertionError(f"dashboard exited: {''.join(self.lines)}{self.process.stderr.read()}")
        self.base = self.url.split("/dashboard", 1)[0]

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            assert response.status == 200
            return json.load(response)

    def stop(self) -> str:
        """Ctrl-C, as a user stops it; SIGTERM is the same to the dashboard, and works where the test run
        itself was started with SIGINT ignored (inherited by this child, so Ctrl-C would never arrive)."""
        self.process.send_signal(signal.SIGINT)
        try:  # a loaded machine needs a while to tear down torch and the dashboard: no second signal early
            _, err = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            _, err = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, err
        return err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=30)


@pytest.fixture
def dashboards():
    """Start dashboards through this; whatever a test leaves running is killed, pass or fail."""
    started: list[_Dashboard] = []

    def start(*args: str) -> _Dashboard:
        started.append(_Dashboard(*args))
        return started[-1]

    yield start
    for dashboard in started:
        dashboard.kill()


@pytest.fixture
def demo_db(tmp_path):
    _make_study(tmp_path / "demo.db", n_trials=5)
    return tmp_path / "demo.db"


@pytest.mark.slow
def test_prints_study_address_and_tunnel_line(demo_db, dashboards):
    dashboard = dashboards("--study", "demo", "--storage", f"sqlite:///{demo_db}")
    try:
        port = int(dashboard.base.rsplit(":", 1)[1])
        assert dashboard.url == f"http://localhost:{port}/dashboard/studies/1"
        assert f"ssh -L {port}:localhost:{port} {getpass.getuser()}@" in "".join(dashboard.lines)
        studies = dashboard.get_json("/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["demo"]
    finally:
        err = dashboard.stop()
    assert "no authentication" not in err


@pytest.mark.slow
def test_binding_elsewhere_warns_about_authentication(demo_db, dashboards):
    dashboard = dashboards("--study", "demo", "--storage", f"sqlite:///{demo_db}", "--host", "0.0.0.0")
    err = dashboard.stop()
    assert "WARNING" in err and "no authentication" in err


def test_tunnel_line_and_url_name_the_machine():
    assert tunnel_line(8080, user="ana", machine="gpu1.lab") == "ssh -L 8080:localhost:8080 ana@gpu1.lab"
    assert tunnel_line(9000, host="10.0.0.5", user="ana", machine="gpu1") == "ssh -L 9000:10.0.0.5:9000 ana@gpu1"
    assert study_url("0.0.0.0", 8080, 3) == "http://localhost:8080/dashboard/studies/3"


def test_unknown_study_is_a_one_line_error(demo_db, capsys, dashboards):
    assert main(["--study", "nope", "--storage", f"sqlite:///{demo_db}"]) == 2
    assert "study 'nope' not found" in capsys.readouterr().err


@pytest.mark.slow
def test_serves_while_workers_write_the_same_sqlite_file(demo_db, dashboards):
    """Two writer processes add trials while the dashboard is polled; nobody fails, every trial shows up."""
    dashboard = dashboards("--study", "demo", "--storage", f"sqlite:///{demo_db}")
    url = f"sqlite:///{demo_db}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, url, "6"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    seen = []
    try:
        while any(w.poll() is None for w in writers):
            seen.append(len(dashboard.get_json("/api/studies/1")["trials"]))
        results = [w.communicate(timeout=120) for w in writers]
        # the dashboard caches a study's trials for 2 s; poll until the last writes show up
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            final = [t["state"] for t in dashboard.get_json("/api/studies/1")["trials"]]
            if final == ["Complete"] * 17:
                break
            time.sleep(0.2)
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
        dashboard.stop()
    for writer, (_, err) in zip(writers, results):
        assert writer.returncode == 0, err
    assert len(seen) >= 2 and seen == sorted(seen)  # polled during the writes; counts never go backwards
    assert final == ["Complete"] * (5 + 2 * 6)



@pytest.mark.slow
def test_serves_while_search_run_workers_train(warm_cache, tmp_path, dashboards):
    """Two real ``python -m search.run`` workers train a tiny study while the dashboard serves it."""
    studies = tmp_path / "studies"
    write_spec(studies, "tiny")
    url = default_storage_url("tiny", studies)
    first = worker(studies, "tiny", "--trials", "4")
    workers = [first]
    dashboard = None
    try:
        wait_for(lambda: first.poll() is not None or _has_study(url, "tiny"), 120, "the first worker's study")
        dashboard = dashboards("--study", "tiny", "--studies-dir", str(studies))
        workers.append(worker(studies, "tiny", "--trials", "4"))
        polls = 0
        while any(w.poll() is None for w in workers):
            dashboard.get_json("/api/studies/1")
            polls += 1
            time.sleep(0.2)
        outputs = [w.communicate(timeout=120)[0] for w in workers]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            shown = [t["state"] for t in dashboard.get_json("/api/studies/1")["trials"]]
            if len(shown) == len(load(url, "tiny").trials):
                break
            time.sleep(0.2)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        if dashboard is not None:
            dashboard.stop()
    for w, output in zip(workers, outputs):
        assert w.returncode == 0, output
    assert polls >= 1
    assert sum(state in ("Complete", "Pruned") for state in shown) >= 4
    assert "Fail" not in shown


def _has_study(url: str, name: str) -> bool:
    try:
        load(url, name)
    except KeyError:
        return False
    return True


def _chromium(*args: str, profile: Path) -> str:
    result = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} not installed (run .ci/install-chromium)")
def test_browser_shows_the_study_and_its_trial_count(demo_db, tmp_path, dashboards):
    from search.views import notes

    study = optuna.load_study(study_name="demo", storage=open_storage(f"sqlite:///{demo_db}"))
    trial = study.ask({"optim.lr": FloatDistribution(1e-4, 1e-1, log=True)})
    notes.save(trial, "### Trial 5: PRUNED\n\n- Why: pruned at epoch 2 (best lwlrap 0.0100)\n")
    study.tell(trial, state=TrialState.PRUNED)
    notes.save(study, notes.study_note(study, spec_epochs=2))
    dashboard = dashboards("--study", "demo", "--storage", f"sqlite:///{demo_db}")
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    try:
        # --virtual-time-budget lets the JavaScript app fetch the study and render before the DOM is dumped
        dom = _chromium("--virtual-time-budget=15000", "--dump-dom", dashboard.url + "/trials",
                        profile=tmp_path / "profile-dom")
        note_page = _chromium("--virtual-time-budget=15000", "--dump-dom", dashboard.url + "/note",
                              profile=tmp_path / "profile-note")
        _chromium("--virtual-time-budget=15000", "--window-size=1400,1000",
                  f"--screenshot={ARTIFACTS / 'dashboard-note.png'}", dashboard.url + "/note",
                  profile=tmp_path / "profile-note-shot")
        _chromium("--virtual-time-budget=15000", "--window-size=1400,1000", f"--screenshot={screenshot}",
                  dashboard.url, profile=tmp_path / "profile-shot")
    finally:
        dashboard.stop()
    assert "demo (id=1)" in dom
    assert ">6 Trials<" in dom
    # the study's note, as the workers write it: best vs baseline and the next commands
    assert "Best: trial 4, validation lwlrap 0.1000" in note_page
    assert "python -m search.best --study demo --export" in note_page
    pixels = mpimg.imread(screenshot)
    assert pixels.shape[:2] == (1000, 1400)
    assert float(np.asarray(pixels)[..., :3].std()) > 0.05, "the screenshot is blank"

