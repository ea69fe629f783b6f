"""search.status on small studies built with Optuna's API the way the workers write them: what the screen
says about each state, the running trials, best vs baseline, the last trials to end, pruning, the 80-column
limit, --watch on a pipe and on a terminal, Ctrl-C, and the one-line errors."""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import signal
import subprocess
import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search.status import main
from search.study.record import SPEC_ATTR, load_study
from search.study.storage import default_storage_url, open_storage
from search.views.status import CLEAR, StatusView, watch, wrapped
from tests.search.conftest import write_spec

SPACE = {
    "optim.lr": FloatDistribution(1e-4, 1e-2, log=True),
    "optim.weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
    "optim.batch_size": IntDistribution(16, 128),
    "features.n_mels": IntDistribution(32, 128),
    "augment.mixup_alpha": FloatDistribution(0.0, 1.0),
    "model.head": CategoricalDistribution(["linear", "mlp"]),
    "model.head_hidden": IntDistribution(8, 32),
}
BASELINE = {"optim.lr": 3e-3, "model.head": "linear"}
BEST = {"optim.lr": 1e-3, "optim.weight_decay": 3e-5, "optim.batch_size": 64, "features.n_mels": 96,
        "augment.mixup_alpha": 0.4, "model.head": "mlp", "model.head_hidden": 16}
LONG_WORKER = "a-very-long-hostname-of-the-shared-gpu-box.cluster.example.org:1234567"
PANE = 80  # the promise, not the module's constant: a wider WIDTH must fail here
OOM = ("out of memory: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.35 GiB total capacity; "
       "75.10 GiB already allocated; 1.2 GiB free; 77.0 GiB reserved in total by PyTorch)")


def _config(epochs: int = 4) -> str:
    return json.dumps({"optim": {"epochs": epochs}})


def _study(studies, name="demo", *, epochs: int | None = 4) -> optuna.Study:
    """An empty study in ``<studies>/<name>.db``, with the stored spec's epoch budget the workers store."""
    storage = open_storage(default_storage_url(name, studies))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    if epochs is not None:
        storage.set_study_system_attr(storage.get_study_id_from_name(name), SPEC_ATTR, {"study.epochs": epochs})
    return study


def _finished(study, state, params, curve, **attrs) -> None:
    value = max(curve.values()) if state == TrialState.COMPLETE else None
    study.add_trial(create_trial(
        state=state, value=value, params=params, distributions={k: SPACE[k] for k in params},
        intermediate_values=curve, user_attrs={"config": _config(), "epochs_run": len(curve), "worker_id": "box:1",
                                               "device": "cuda:0", "resumed_from_epoch": 0, **attrs}))


def _running(study, curve, **attrs) -> optuna.Trial:
    """A RUNNING trial as a worker leaves it mid-training: asked, started (Worker.start's attrs), epochs reported."""
    trial = study.ask()
    for key, value in {"config": _config(), "resumed_from_epoch": 0, **attrs}.items():
        trial.set_user_attr(key, value)
    for epoch, value in curve.items():
        trial.report(value, epoch)
        trial.set_user_attr("epochs_run", epoch)
    return trial


def _demo(studies) -> optuna.Study:
    """#0 baseline 0.7012, #1 best 0.7803, #2 pruned, #3 failed (out of memory), #4 running at epoch 2 on
    cuda:1, #5 running before its first epoch on a worker without a device attr, #6 waiting."""
    study = _study(studies)
    _finished(study, TrialState.COMPLETE, BASELINE, {1: 0.5, 2: 0.6, 3: 0.68, 4: 0.7012}, baseline=True)
    _finished(study, TrialState.COMPLETE, BEST, {1: 0.55, 2: 0.7, 3: 0.76, 4: 0.7803})
    _finished(study, TrialState.PRUNED, {"optim.lr": 1e-4, "model.head": "linear"}, {1: 0.3, 2: 0.35},
              reason="pruned at epoch 2 (best lwlrap 0.3500)")
    _finished(study, TrialState.FAIL, {"optim.lr": 9e-3, "model.head": "linear"}, {1: 0.2}, reason=OOM)
    _running(study, {1: 0.41, 2: 0.52}, worker_id="gpubox:4243", device="cuda:1")
    _running(study, {}, worker_id=LONG_WORKER)
    study.enqueue_trial({"optim.lr": 2e-3, "model.head": "linear"})
    return study


def _screen(capsys) -> list[str]:
    """The printed lines, after checking the promise every screen keeps: no line over 80 columns."""
    lines = capsys.readouterr().out.splitlines()
    too_wide = [line for line in lines if len(line) > PANE]
    assert not too_wide, f"lines over {PANE} columns: {too_wide}"
    return lines


def _line(lines, prefix: str) -> str:
    found = [line for line in lines if line.lstrip().startswith(prefix)]
    assert len(found) == 1, f"expected one line starting {prefix!r} in:\n" + "\n".join(lines)
    return found[0]


def test_the_screen_shows_states_running_trials_best_vs_baseline_and_why_trials_ended(tmp_path, capsys):
    studies = tmp_path / "a-rather-long-folder-name-for-the-studies-of-this-box" / "studies"
    _demo(studies)
    assert main(["--study", "demo", "--studies-dir", str(studies)]) == 0
    lines = _screen(capsys)

    assert lines[0].startswith("study demo")
    assert _line(lines, "storage").endswith("/studies/demo.db")
    assert "2 complete, 1 pruned, 1 failed, 2 running, 1 waiting (7 in all)" in _line(lines, "trials")

    assert "running (2)" in lines
    started = _line(lines, "#4").split()
    assert started[:3] == ["#4", "2/4", "0.5200"] and started[4:] == ["cuda:1", "gpubox:4243"]
    assert re.fullmatch(r"\d+(\.\d)?s", started[3]), f"ETA {started[3]!r} is not a duration"
    fresh = _line(lines, "#5")
    assert fresh.split()[:5] == ["#5", "0/4", "-", "-", "-"]  # no epoch yet: no lwlrap, no ETA; no device attr
    worker = fresh.split()[-1]  # cut in the middle: the host's start and the pid both stay
    assert worker.startswith("a-very-long-host") and "..." in worker and worker.endswith(".org:1234567")

    assert _line(lines, "best").split() == ["best", "#1", "lwlrap", "0.7803", "(+0.0791", "vs", "the", "baseline)"]
    assert _line(lines, "baseline").split() == ["baseline", "#0", "lwlrap", "0.7012"]
    changed = lines[lines.index(_line(lines, "changed")):][:3]
    words = " ".join(changed).split()
    assert words[0] == "changed" and len(changed[1]) > 0 and changed[1].startswith(" " * 10)  # wrapped, aligned
    assert {"lr=0.001", "weight_decay=3e-05", "batch_size=64", "n_mels=96", "mixup_alpha=0.4", "head=mlp",
            "head_hidden=16"} <= set(words)

    ended = lines[lines.index("last 4 to end") + 1:][:4]
    assert [line.split()[:2] for line in ended] == [["#3", "FAIL"], ["#2", "PRUNED"], ["#1", "COMPLETE"],
                                                    ["#0", "COMPLETE"]]  # the latest first
    assert ended[0].split()[2:4] == ["-", "1"] and "out of memory: CUDA out of memory." in ended[0]
    assert ended[0].endswith("...")  # the reason is cut to fit, not wrapped
    assert ended[1].split()[2] == "0.3500" and ended[1].endswith("pruned at epoch 2 (best lwlrap 0.3500)")
    assert ended[3].endswith("(baseline)")
    # 3 finished trials ran 4 + 4 + 2 of 3 x 4 epochs
    assert _line(lines, "pruning saved") == "pruning saved 17% of the epochs of 3 finished trials (budget 4 each)"


def test_eta_is_the_attempts_seconds_per_epoch_times_the_epochs_left(tmp_path):
    study = _study(tmp_path, epochs=10)
    # a retry that resumed after epoch 1 and has trained epochs 2 and 3 in 20 minutes: 10 min per epoch, 7 left
    trial = _running(study, {1: 0.3, 2: 0.4, 3: 0.45}, config=_config(10), resumed_from_epoch=1, worker_id="w:1")
    started = study.get_trials(deepcopy=False)[trial.number].datetime_start
    lines = StatusView.of(load_study("demo", studies=tmp_path), None).lines(now=started + dt.timedelta(minutes=20))
    assert _line(lines, "#0").split()[:4] == ["#0", "3/10", "0.4500", "1h10m"]


def test_a_study_without_trials_says_so_in_every_section(tmp_path, capsys):
    _study(tmp_path)
    assert main(["--study", "demo", "--studies-dir", str(tmp_path)]) == 0
    lines = _screen(capsys)
    assert "0 complete, 0 pruned, 0 failed, 0 running, 0 waiting (0 in all)" in _line(lines, "trials")
    assert {"running: none", "ended: none yet"} <= set(lines)
    assert _line(lines, "best").startswith("best      none yet")
    assert _line(lines, "baseline").split() == ["baseline", "none"]
    assert _line(lines, "pruning saved") == "pruning saved: nothing to count yet (no finished trial with its epochs_run)"


def test_a_best_that_is_the_baseline_says_so(tmp_path, capsys):
    study = _study(tmp_path)
    _finished(study, TrialState.COMPLETE, BASELINE, {1: 0.6, 2: 0.7}, baseline=True)
    _finished(study, TrialState.COMPLETE, BEST, {1: 0.5, 2: 0.55})
    assert main(["--study", "demo", "--studies-dir", str(tmp_path)]) == 0
    assert _line(_screen(capsys), "best") == "best      #0 lwlrap 0.7000: the baseline itself, not beaten yet"


def test_the_epoch_budget_comes_from_the_stored_spec_else_the_spec_file(tmp_path, capsys):
    study = _study(tmp_path, epochs=None)  # a study whose spec was never stored
    _finished(study, TrialState.PRUNED, BASELINE, {1: 0.3})
    assert main(["--study", "demo", "--studies-dir", str(tmp_path)]) == 0
    assert _line(_screen(capsys), "pruning saved") == \
        "pruning saved: unknown (no epoch budget: none stored, no spec file here)"  # whole, not cut
    write_spec(tmp_path, "demo", epochs=2)
    assert main(["--study", "demo", "--studies-dir", str(tmp_path)]) == 0
    assert _line(_screen(capsys), "pruning saved") == "pruning saved 50% of the epochs of 1 finished trials (budget 2 each)"


def test_recent_limits_the_trials_that_ended(tmp_path, capsys):
    _demo(tmp_path)
    assert main(["--study", "demo", "--studies-dir", str(tmp_path), "--recent", "1"]) == 0
    lines = _screen(capsys)
    assert lines[lines.index("last 1 to end") + 1].split()[:2] == ["#3", "FAIL"]
    assert not any(line.split()[:2] == ["#2", "PRUNED"] for line in lines)
    assert main(["--study", "demo", "--studies-dir", str(tmp_path), "--recent", "0"]) == 0
    assert not any("to end" in line for line in _screen(capsys))


def test_watch_on_a_pipe_prints_one_block_per_redraw(tmp_path, capsys):
    study = _demo(tmp_path)
    assert main(["--study", "demo", "--studies-dir", str(tmp_path), "--watch", "0.01"], max_frames=3) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out  # no screen control codes in a log file
    blocks = out.split("\n\nstudy demo")
    assert len(blocks) == 3 and out.startswith("study demo") and all("running (2)" in b for b in blocks)
    assert len(study.get_trials(deepcopy=False)) == 7  # a reader: nothing was added or changed


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_watch_on_a_terminal_redraws_in_place():
    frames = iter(range(10))
    out = _Terminal()
    assert watch(lambda: [f"frame {next(frames)}"], 0.01, out, max_frames=2) == 2
    assert out.getvalue() == f"{CLEAR}frame 0\n{CLEAR}frame 1\n"


def test_ctrl_c_ends_watch_quietly_with_exit_0(tmp_path, capsys, monkeypatch):
    _demo(tmp_path)

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr("search.views.status.time.sleep", interrupted)
    assert main(["--study", "demo", "--studies-dir", str(tmp_path), "--watch", "5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("study demo") == 1 and captured.err == ""


@pytest.mark.slow
def test_ctrl_c_ends_a_watch_started_with_sigint_ignored(tmp_path):
    """A pane's ``nohup`` or ``&`` job starts Python with SIGINT ignored: Ctrl-C must still end --watch with 0."""
    _demo(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "search.status", "--study", "demo", "--studies-dir",
                                str(tmp_path), "--watch", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert process.stdout.readline().startswith("study demo")  # the first frame is drawn
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0 and err == ""


def test_a_missing_study_is_one_error_line_and_exit_2(tmp_path, capsys):
    assert main(["--study", "nope", "--studies-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: no study database {tmp_path / 'nope.db'}")
    _study(tmp_path)
    assert main(["--study", "nope", "--storage", default_storage_url("demo", tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "study 'nope' not found" in err and "studies there: demo" in err


@pytest.mark.parametrize("flag, value, expected", [("--watch", "0", "--watch 0.0: expected a number of seconds > 0"),
                                                   ("--watch", "nan", "--watch nan: expected"),
                                                   ("--recent", "-1", "--recent -1: expected a count >= 0")])
def test_bad_flag_values_are_refused_naming_the_flag(tmp_path, capsys, flag, value, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["--study", "demo", "--studies-dir", str(tmp_path), flag, value])
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


def test_wrapped_lines_fit_and_align_under_the_first_word():
    lines = wrapped("changed   ", " ".join(f"knob{i}=0.00{i}" for i in range(20)), width=40)
    assert len(lines) > 1 and all(len(line) <= 40 for line in lines)
    assert lines[0].startswith("changed   knob0=") and all(line.startswith(" " * 10 + "knob") for line in lines[1:])
