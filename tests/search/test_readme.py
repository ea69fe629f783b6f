"""Every command in the README's ``bash`` blocks runs, in README order, at tiny size.

The commands are read from README.md, not copied here, so none can rot: a new command the rewrites below do not
know fails the test until it is taught how to run it small. Install steps and the test command itself are what
``.ci/run`` runs; everything else runs in a scratch folder whose ``studies/`` holds tiny specs of the same names.
"""
from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.search.conftest import write_spec

README = Path(__file__).resolve().parents[2] / "README.md"
INSTALL = re.compile(r"^(python3 -m venv \S+|\. \S+/bin/activate|pip install .*)$")
TEST_COMMAND = "python -m pytest -q"
TINY_TOML = """[model]\ndepth = 18\nwidth = 0.0625\n[features]\nn_mels = 32\ncrop_frames = 64\n
[optim]\nbatch_size = 16\nlr = 3e-3\nepochs = 1\n"""
# flags whose value is a size: made tiny
SMALL_VALUES = {"--trials": "3", "--epochs": "1", "--seeds": "2", "--folds": "2", "--ensemble": "2", "--bags": "2",
                "--device": "cpu", "--scale": "0.02"}
SERVERS = {"search.dashboard", "tensorboard"}


def readme_commands(text: str) -> list[str]:
    """The commands of the README's ```bash blocks: continuation lines joined, comments dropped, && split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split(" && "):
                words = shlex.split(part, comments=True)
                if words:
                    commands.append(shlex.join(words))
    return commands


def tiny(command: str, data: Path, scratch: Path) -> list[str]:
    """The command at tiny size: the FAT2019 folder is the tiny demo set, sizes are small, nothing uses a GPU."""
    words = [str(data) + w[len("/data/fat2019"):] if w.startswith("/data/fat2019") else str(data) if w == "DATA" else w
             for w in shlex.split(command)]
    for i, word in enumerate(words[:-1]):
        if word in SMALL_VALUES:
            words[i + 1] = SMALL_VALUES[word]
        if word == "--out" and words[1:3] == ["-m", "trainer.synth"]:
            words[i + 1] = str(scratch / words[i + 1])
    module = words[2] if words[:2] == ["python", "-m"] else words[0]
    if module == "trainer.train":
        words += [] if "--data" in words else ["--data", str(data)]
        words += [] if "--config" in words else ["--config", "my.toml"]
        words += ["--threads", "1", "--no-progress"]
    if module == "trainer.synth" and "--scale" not in words:
        words += ["--scale", "0.02"]
    if module == "search.quickstart":
        words += ["--trials", "2", "--threads", "1"]
    if module == "search.dashboard" and "--port" not in words:
        words += ["--port", str(free_port())]
    if module == "tensorboard":
        words += ["--port", str(free_port())]
    # console scripts of the environment the tests run in (the README activates it first)
    program = sys.executable if words[0] == "python" else str(Path(sys.executable).parent / words[0])
    return [program, *words[1:]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_fetch(argv: list[str], cwd: Path, env: dict) -> str:
    """Start a server command, wait for its address, fetch the page, stop it; returns what it printed."""
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            address = re.search(r"(http://(?:localhost|127\.0\.0\.1):\d+/\S*)", line)
            if address:
                time.sleep(1.0)
                with urllib.request.urlopen(address.group(1).rstrip("/)").rstrip("."), timeout=30) as response:
                    assert response.status == 200
                return "".join(lines)
        raise AssertionError(f"{shlex.join(argv)} printed no address:\n{''.join(lines)}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_readme_commands_are_known():
    """Every README command is an install step, the test command, or something the tiny runner knows."""
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert commands, "no ```bash blocks found in README.md"
    runnable = [c for c in commands if not INSTALL.match(c) and c != TEST_COMMAND]
    assert any(c == "python -m search.quickstart" for c in runnable), "the README's first command must be the quickstart"
    for command in runnable:
        first = shlex.split(command)
        assert first[0] in {"python", "tensorboard", "optuna"}, f"README command not runnable by this test: {command}"


@pytest.mark.slow
@pytest.mark.timeout(1200)  # some twenty commands, each a fresh process: minutes on a busy 2-core box
def test_readme_commands_run_at_tiny_size(tmp_path, demo_data, warm_cache):
    commands = [c for c in readme_commands(README.read_text(encoding="utf-8"))
                if not INSTALL.match(c) and c != TEST_COMMAND]
    studies = tmp_path / "studies"
    for name in ("quickstart", "demo", "fat2019"):
        write_spec(studies, name, epochs=2, startup="near_baseline = 1")
    (tmp_path / "my.toml").write_text(TINY_TOML, encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FAT2019_STUDIES", None)
    for command in commands:
        argv = tiny(command, demo_data, tmp_path)
        module = argv[2] if argv[1:2] == ["-m"] else Path(argv[0]).name
        if module in SERVERS:
            serve_and_fetch(argv, tmp_path, env)
            continue
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README command failed at tiny size: {command}\n{shlex.join(argv)}\n" \
                                     f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (tmp_path / "submission.csv").is_file()
