"""python -m search.panes: the pane plan (pure), its refusals, and real sessions on a tmux server of their own."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search import panes
from search.study.storage import default_storage_url
from search.worker.tmux import (
    STORAGE_OPTION,
    STUDY_OPTION,
    TMUX_MISSING,
    Pane,
    PanesError,
    Window,
    command_list,
    parse_gpus,
    passed_environment,
    session_commands,
    watch_panes,
    worker_panes,
    worker_places,
)
from tests.search.conftest import load, unique_name, wait_for, write_spec

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
STUDY_FLAGS = ("--study", "demo", "--studies-dir", "/s")


def _flag(command: tuple[str, ...] | list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


# -- the plan ----------------------------------------------------------------------------------------
def test_two_workers_per_gpu_on_two_gpus_are_four_panes_pinned_in_gpu_order():
    places = worker_places([0, 1], per_gpu=2)
    workers = worker_panes(places, python="/venv/python", study_flags=STUDY_FLAGS, trials=50,
                           worker_flags=["--data", "/data", "--heartbeat", "30"])
    assert [_flag(p.command, "--device") for p in workers] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert [p.title for p in workers] == ["worker 1 · cuda:0", "worker 2 · cuda:0", "worker 3 · cuda:1",
                                         "worker 4 · cuda:1"]
    for pane in workers:
        assert pane.command[:3] == ("/venv/python", "-m", "search.run")
        assert pane.command[3:7] == STUDY_FLAGS and _flag(pane.command, "--trials") == "50"
        assert _flag(pane.command, "--data") == "/data" and _flag(pane.command, "--heartbeat") == "30"
        assert "--threads" not in pane.command  # on a GPU the worker shares the cores itself
    assert [_flag(p.command, "--device") for p in worker_panes(worker_places([1]), python="p", study_flags=(),
                                                               trials=1)] == ["cuda:1"]


def test_without_gpus_the_panes_split_the_cores():
    assert worker_places([], panes=3, cores=16) == worker_places([], panes=3, cores=17)
    assert [p.threads for p in worker_places([], panes=3, cores=16)] == [5, 5, 5]
    assert [p.threads for p in worker_places([], panes=4, cores=2)] == [1, 1, 1, 1]  # never 0
    assert [p.threads for p in worker_places([], panes=2, cores=16, threads=3)] == [3, 3]  # --threads wins
    workers = worker_panes(worker_places([], panes=2, cores=2), python="p", study_flags=STUDY_FLAGS, trials=3)
    assert [(p.title, _flag(p.command, "--device"), _flag(p.command, "--threads")) for p in workers] == [
        ("worker 1 · cpu", "cpu", "1"), ("worker 2 · cpu", "cpu", "1")]


def test_gpu_lists_are_checked_against_the_gpus_torch_sees():
    assert parse_gpus("all", 4) == [0, 1, 2, 3] and parse_gpus("all", 0) == []
    assert parse_gpus("3,1", 4) == [3, 1]
    with pytest.raises(PanesError, match=r"^--gpus 5: this box has GPUs 0-1$"):
        parse_gpus("5", 2)
    with pytest.raises(PanesError, match=r"^--gpus 0,1: this box has GPU 0$"):
        parse_gpus("0,1", 1)
    with pytest.raises(PanesError, match=r"^--gpus 0: this box has no GPU$"):
        parse_gpus("0", 0)
    with pytest.raises(PanesError, match=r"^--gpus 0,0: GPU 0 is listed twice; .* --per-gpu K$"):
        parse_gpus("0,0", 2)
    with pytest.raises(PanesError, match=r"^--gpus one: expected all or GPU indexes like 0,1$"):
        parse_gpus("one", 2)


def test_the_watch_window_serves_on_localhost_and_reads_the_same_study():
    dashboard, tensorboard, status = watch_panes(python="/venv/python", study_flags=STUDY_FLAGS,
                                                 runs_dir="/s/demo/runs", dashboard_port=8081, tensorboard_port=6007)
    assert dashboard.command == ("/venv/python", "-m", "search.dashboard", *STUDY_FLAGS, "--host", "127.0.0.1",
                                 "--port", "8081")
    assert tensorboard.command == ("/venv/python", "-m", "tensorboard.main", "--logdir", "/s/demo/runs",
                                   "--host", "127.0.0.1", "--port", "6007")
    assert status.command == ("/venv/python", "-m", "search.status", *STUDY_FLAGS, "--watch", "5")


def test_the_session_is_one_command_list_that_keeps_dead_panes_before_any_can_die():
    workers = Window("workers", (Pane("worker 1 · cpu", ("python", "w1")), Pane("worker 2 · cpu", ("python", "w2"))))
    watch = Window("watch", (Pane("status", ("python", "st")),))
    commands = session_commands("search-demo", [workers, watch], cwd="/repo", env={"FAT2019_DATA": "/d"},
                                study=("demo", "sqlite:///s/demo.db"))
    new_session = commands[0]
    assert new_session[:3] == ["new-session", "-d", "-s"] and new_session[3] == "search-demo"
    assert _flag(new_session, "-c") == "/repo" and _flag(new_session, "-e") == "FAT2019_DATA=/d"
    assert new_session[new_session.index("--") + 1:] == ["python", "w1"]  # executed directly, no shell
    assert ["set-option", "-t", "=search-demo:", STUDY_OPTION, "demo"] in commands
    assert ["set-option", "-t", "=search-demo:", STORAGE_OPTION, "sqlite:///s/demo.db"] in commands
    made = {c[c.index("-n") + 1]: i for i, c in enumerate(commands) if c[0] in ("new-session", "new-window")}
    for window in ("workers", "watch"):
        at = f"=search-demo:{window}"
        keep = commands.index(["set-option", "-w", "-t", at, "remain-on-exit", "on"])
        assert ["set-option", "-w", "-t", at, "pane-border-status", "top"] in commands
        splits = [i for i, c in enumerate(commands) if c[:3] == ["split-window", "-t", at]]
        assert made[window] < keep < min(splits, default=len(commands))  # before the window's other panes start
    assert len([c for c in commands if c[0] == "split-window"]) == 1
    titles = [c[-1] for c in commands if c[0] == "select-pane"]
    assert titles == ["worker 1 · cpu", "worker 2 · cpu", "status"]
    assert commands[-1] == ["select-window", "-t", "=search-demo:workers"]
    # one tmux call: ';' between commands, and an argument's own trailing ';' escaped so tmux keeps it
    assert command_list([["a", "x;"], ["b"]]) == ["a", "x\\;", ";", "b"]


def test_the_panes_see_the_callers_study_and_gpu_variables():
    env = {"FAT2019_DATA": "/d", "FAT2019_SEARCH_CACHE": "/c", "CUDA_VISIBLE_DEVICES": "2,3", "HOME": "/root"}
    assert passed_environment(env) == {"CUDA_VISIBLE_DEVICES": "2,3", "FAT2019_DATA": "/d",
                                       "FAT2019_SEARCH_CACHE": "/c"}


# -- refusals ----------------------------------------------------------------------------------------
def test_no_tmux_is_one_line_with_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # a folder without tmux
    assert panes.main(["--study", "demo", "--trials", "3"]) == 2
    assert capsys.readouterr().err == f"error: {TMUX_MISSING}\n"
    assert TMUX_MISSING.startswith("tmux not found; install it: sudo apt-get install tmux (Debian/Ubuntu)")


@needs_tmux
@pytest.mark.parametrize("gpus, argv, line", [
    (2, ["--gpus", "5"], "error: --gpus 5: this box has GPUs 0-1"),
    (2, ["--panes", "3"], "error: --panes 3: this box has GPUs, so workers are per GPU: use --per-gpu K"),
    (0, ["--per-gpu", "2"], "error: --per-gpu 2: torch sees no GPU on this box; CPU workers are --panes P"),
])
def test_gpu_flags_that_do_not_fit_the_box_are_one_line(monkeypatch, capsys, tmp_path, gpus, argv, line):
    monkeypatch.setattr(panes, "cuda_device_count", lambda: gpus)
    assert panes.main(["--study", "demo", "--studies-dir", str(tmp_path), "--trials", "3", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(line) and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())  # refused before a study or a session was made


# -- real tmux servers -------------------------------------------------------------------------------
@pytest.fixture()
def tmux_socket():
    """A tmux server of the test's own (``tmux -L``), killed however the test ends."""
    name = unique_name("panes-test")
    try:
        yield name
    finally:
        subprocess.run(["tmux", "-L", name, "kill-server"], capture_output=True)


def _tmux(socket: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, check=True).stdout


PANE_FORMAT = {"id": "pane_id", "window": "window_name", "title": "pane_title", "dead": "pane_dead",
               "pid": "pane_pid", "command": "pane_start_command"}


def _panes_of(socket: str, target: str) -> list[dict[str, str]]:
    """The panes of a window (``=S:W``) or of a whole session (``=S``), by the keys of PANE_FORMAT."""
    scope = ["-t", target] if ":" in target else ["-s", "-t", target]
    shown = _tmux(socket, "list-panes", *scope, "-F", "\t".join(f"#{{{v}}}" for v in PANE_FORMAT.values()))
    return [dict(zip(PANE_FORMAT, line.split("\t"))) for line in shown.splitlines()]


def _fake_session(socket: str, session: str, options: dict[str, str]) -> None:
    # Named window: tmux's automatic name is the pane's foreground process, "tmux" until sleep has started.
    commands = [["new-session", "-d", "-s", session, "-n", "fake", "--", "sleep", "60"],
                *(["set-option", "-t", f"={session}:", k, v] for k, v in options.items())]
    _tmux(socket, *command_list(commands))


@pytest.mark.slow
@needs_tmux
def test_a_session_of_this_study_is_found_and_one_of_another_is_refused(tmp_path, tmux_socket, monkeypatch,
                                                                        capsys):
    monkeypatch.setattr(panes, "cuda_device_count", lambda: 0)
    studies = tmp_path / "studies"
    write_spec(studies, "mine")
    argv = ["--study", "mine", "--studies-dir", str(studies), "--trials", "3", "-L", tmux_socket]
    url = default_storage_url("mine", studies)
    _fake_session(tmux_socket, "search-mine", {STUDY_OPTION: "mine", STORAGE_OPTION: url})
    assert panes.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("tmux session search-mine already runs study mine\n")
    assert f"attach: tmux -L {tmux_socket} attach -t search-mine" in out
    assert _tmux(tmux_socket, "list-windows", "-t", "=search-mine", "-F", "#{window_name}").split() == ["fake"]

    _fake_session(tmux_socket, "taken", {STUDY_OPTION: "other", STORAGE_OPTION: url})
    assert panes.main([*argv, "--session", "taken"]) == 2
    assert capsys.readouterr().err == (f"error: tmux session taken already runs study other; pick another --session "
                                       f"NAME or stop it: tmux -L {tmux_socket} kill-session -t taken\n")
    _fake_session(tmux_socket, "users-own", {})
    assert panes.main([*argv, "--session", "users-own"]) == 2
    assert capsys.readouterr().err == ("error: tmux session users-own exists and was not made by search.panes; "
                                       "pick another --session NAME\n")


@pytest.mark.slow
@needs_tmux
def test_every_pane_runs_this_python_on_one_study(tmp_path, tmux_socket, monkeypatch, capsys):
    monkeypatch.setattr(panes, "cuda_device_count", lambda: 0)
    studies = tmp_path / "studies"
    write_spec(studies, "flags")
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert panes.main(["--study", "flags", "--studies-dir", str(studies), "--storage", url, "--data", "demo",
                       "--trials", "3", "--panes", "3", "-L", tmux_socket, "--dashboard-port", "8093"]) == 0
    listed = _panes_of(tmux_socket, "=search-flags")
    _tmux(tmux_socket, "kill-server")  # the plan is what is checked: no need to let anything run
    out = capsys.readouterr().out
    assert "ssh -L 8093:localhost:8093 " in out and "ssh -L 6006:localhost:6006 " in out
    assert [(p["window"], p["title"]) for p in listed] == [
        ("workers", "worker 1 · cpu"), ("workers", "worker 2 · cpu"), ("workers", "worker 3 · cpu"),
        ("watch", "dashboard · 127.0.0.1:8093"), ("watch", "tensorboard · 127.0.0.1:6006"), ("watch", "status")]
    commands = [shlex.split(p["command"]) for p in listed]
    assert all(c[0] == sys.executable for c in commands)
    studied = [c for c in commands if c[2] != "tensorboard.main"]
    assert all(_flag(c, "--studies-dir") == str(studies.resolve()) and _flag(c, "--storage") == url for c in studied)
    assert [_flag(c, "--data") for c in commands] == ["demo"] * 3 + [None] * 3  # the data is the workers' only
    assert _flag(commands[4], "--logdir") == str((studies / "flags" / "runs").resolve())
    assert load(url, "flags").trials[0].user_attrs["baseline"]  # made before the panes, so the dashboard finds it


def _start_session(studies: Path, name: str, socket: str, *args: str) -> subprocess.CompletedProcess:
    """search.panes as the user runs it, on CPU (also on a GPU box), 2 panes, 1 s heartbeats."""
    command = [sys.executable, "-m", "search.panes", "--study", name, "--studies-dir", str(studies), "-L", socket,
               "--no-watch", "--panes", "2", "--heartbeat", "1", "--grace", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


@pytest.mark.slow
@needs_tmux
def test_a_cpu_session_runs_the_study_to_its_total_and_the_panes_keep_the_end_lines(tmp_path, warm_cache,
                                                                                     tmux_socket):
    studies = tmp_path / "studies"
    name = unique_name("done")
    write_spec(studies, name, epochs=2)
    started = _start_session(studies, name, tmux_socket, "--trials", "3")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith(f"tmux session search-{name}: study {name} (sqlite:///")
    assert f"attach: tmux -L {tmux_socket} attach -t search-{name}" in started.stdout
    target = f"=search-{name}:workers"
    wait_for(lambda: all(p["dead"] == "1" for p in _panes_of(tmux_socket, target)), 90, "both workers to end")
    trials = load(default_storage_url(name, studies), name).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 3
    listed = _panes_of(tmux_socket, target)
    # Not their exit status: tmux 3.3a built with libutempter may miss a pane's SIGCHLD (it runs its utempter
    # helper with SIGCHLD reset as the pane closes), leaving the status unknown until another child exits.
    assert [p["title"] for p in listed] == ["worker 1 · cpu", "worker 2 · cpu"]
    cores = len(os.sched_getaffinity(0))
    assert all(_flag(shlex.split(p["command"]), "--threads") == str(max(1, cores // 2)) for p in listed)
    for pane in listed:
        shown = _tmux(tmux_socket, "capture-pane", "-p", "-J", "-S", "-", "-t", pane["id"])
        assert "done: the study has its 3 finished trials" in shown, shown  # the worker's end line, kept


def _running_with_an_epoch(url: str, name: str) -> list[int]:
    try:
        trials = load(url, name).trials
    except KeyError:
        return []
    return [t.number for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited; only its (foreign) parent has not reaped it yet


@pytest.mark.slow
@needs_tmux
def test_kill_session_fails_the_running_trials_as_interrupted_and_queues_their_retries(tmp_path, warm_cache,
                                                                                        tmux_socket):
    studies = tmp_path / "studies"
    name = unique_name("stop")
    write_spec(studies, name, epochs=20)
    url = default_storage_url(name, studies)
    assert _start_session(studies, name, tmux_socket, "--trials", "4").returncode == 0
    wait_for(lambda: len(_running_with_an_epoch(url, name)) == 2, 90, "a trial with an epoch in each pane")
    running = set(_running_with_an_epoch(url, name))
    pids = [int(p["pid"]) for p in _panes_of(tmux_socket, f"=search-{name}:workers")]
    _tmux(tmux_socket, "kill-session", "-t", f"=search-{name}")  # the panes' terminals hang up: SIGHUP
    wait_for(lambda: all(_gone(pid) for pid in pids), 30, "the workers to exit")
    trials = load(url, name).trials
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    interrupted = {t.number for t in trials
                   if t.state == TrialState.FAIL and t.user_attrs.get("reason") == "interrupted"}
    assert interrupted == running
    retries = {t.user_attrs["retry_of"] for t in trials if t.state == TrialState.WAITING and "retry_of" in t.user_attrs}
    assert retries == interrupted


def _worker_hearing_sighup(studies: Path, name: str, disposition) -> subprocess.Popen:
    """``python -m search.run`` on study ``name`` (2 trials) started with SIGHUP set to ``disposition``."""
    return subprocess.Popen(
        [sys.executable, "-m", "search.run", "--study", name, "--studies-dir", str(studies), "--trials", "2",
         "--threads", "1", "--heartbeat", "1", "--grace", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGHUP, disposition))


@pytest.mark.slow
def test_sighup_stops_a_worker_like_sigterm_unless_it_was_started_under_nohup(tmp_path, warm_cache):
    studies = tmp_path / "studies"
    for name in ("hup", "nohup"):  # trials far longer than the test: neither can finish one before its signal
        write_spec(studies, name, epochs=500)
    # each disposition set explicitly: a test run itself started under nohup hands SIG_IGN to every child
    hung_up = _worker_hearing_sighup(studies, "hup", signal.SIG_DFL)  # as a terminal or tmux pane starts it
    ignoring = _worker_hearing_sighup(studies, "nohup", signal.SIG_IGN)  # as `nohup python -m search.run` does
    try:
        urls = {name: default_storage_url(name, studies) for name in ("hup", "nohup")}
        # each worker is signalled once it is in a trial of its own, not when both are: a fast one must not be
        # done with its study while the other is still starting
        wait_for(lambda: _running_with_an_epoch(urls["hup"], "hup"), 90, "the hup worker in a trial")
        hung_up.send_signal(signal.SIGHUP)
        output = hung_up.communicate(timeout=30)[0]
        assert hung_up.returncode == 129, output
        assert "SIGHUP: stopping the running trial" in output  # a pipe, not a hung-up terminal: output kept
        trials = load(urls["hup"], "hup").trials
        assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["reason"] == "interrupted"
        assert trials[1].state == TrialState.WAITING and trials[1].user_attrs["retry_of"] == 0
        wait_for(lambda: _running_with_an_epoch(urls["nohup"], "nohup"), 90, "the nohup worker in a trial")
        ignoring.send_signal(signal.SIGHUP)
        time.sleep(2)  # had the ignoring worker taken SIGHUP, it would have failed its trial and exited by now
        assert ignoring.poll() is None  # still training its 500-epoch trial
        assert not [t.number for t in load(urls["nohup"], "nohup").trials if t.state == TrialState.FAIL]
    finally:
        ignoring.send_signal(signal.SIGTERM)
        ignoring.communicate(timeout=30)  # drains its output: a full pipe would block its exit


# -- a study that has its trials, and the ETA at the session's pane count ----------------------------------------------
def _finished_study(studies: Path, name: str, finished: int) -> None:
    """The study as its panes make it (spec stored, baseline queued), with ``finished`` trials of 36 s each."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from search.spec import load_spec
    from search.study.join import join_study
    from search.study.storage import open_storage

    study = join_study(open_storage(default_storage_url(name, studies)), load_spec(write_spec(studies, name)))
    for i in range(finished):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5 + i / 100, params={"optim.lr": 1e-3},
                                     distributions={"optim.lr": FloatDistribution(1e-4, 1e-2, log=True)},
                                     user_attrs={"wall_time": 36.0}))


@needs_tmux
def test_a_study_that_has_its_trials_is_refused_before_any_pane_starts(tmp_path, tmux_socket, monkeypatch, capsys):
    monkeypatch.setattr(panes, "cuda_device_count", lambda: 0)
    studies = tmp_path / "studies"
    _finished_study(studies, "done", 14)
    assert panes.main(["--study", "done", "--studies-dir", str(studies), "--trials", "6", "-L", tmux_socket]) == 2
    assert capsys.readouterr().err == ("error: study done already has 14 finished trials of its own, and --trials 6 is "
                                       "the study's total: nothing to start (pass --trials above 14 to continue it)\n")
    assert subprocess.run(["tmux", "-L", tmux_socket, "has-session", "-t", "=search-done"],
                          capture_output=True).returncode != 0  # no session: no workers, dashboard or TensorBoard


@pytest.mark.slow
@needs_tmux
def test_the_start_lines_eta_counts_the_sessions_panes(tmp_path, tmux_socket, monkeypatch, capsys):
    monkeypatch.setattr(panes, "cuda_device_count", lambda: 0)
    studies = tmp_path / "studies"
    _finished_study(studies, "eta", 4)
    assert panes.main(["--study", "eta", "--studies-dir", str(studies), "--trials", "8", "--panes", "2",
                       "--no-watch", "--no-attach", "-L", tmux_socket]) == 0
    _tmux(tmux_socket, "kill-server")  # the start lines are what is checked
    assert "  4 more to reach 8; ~36s per trial at 2 panes: ETA ~1m12s\n" in capsys.readouterr().out
