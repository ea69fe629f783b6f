"""Every command in the ``bash`` blocks of README.md and docs/*.md runs at tiny size; every relative link resolves.

The commands are read from the pages, not copied here, so none can rot: a new command the rewrites below do not
know fails the test until it is taught how to run it small. Install steps, the CI scripts and the test command
itself are what ``.ci/run`` runs; everything else runs in one scratch folder whose ``studies/`` holds tiny specs of
the same names: the README's commands in order, then each docs page's in its own order, a command that an earlier
page already ran (at tiny size) not run again.
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

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# the pages' order when their commands run: later pages use the studies and exports earlier ones made
DOCS_ORDER = ["searching.md", "watching.md", "exporting.md", "data.md", "operations.md", "development.md"]
LINKED_PAGES = [README, *sorted(DOCS.glob("*.md")), ROOT / "benchmarks" / "README.md"]
# what .ci/run runs itself: the venv and installs, the Debian package scripts, the test suite
NOT_RUN = re.compile(r"^(python3 -m venv \S+|\. \S+/bin/activate|pip install .*|bash \.ci/[\w-]+|ruff check .*|"
                     r"python -m pytest( .*)?)$")
TINY_TOML = """[model]\ndepth = 18\nwidth = 0.0625\n[features]\nn_mels = 32\ncrop_frames = 64\n
[optim]\nbatch_size = 16\nlr = 3e-3\nepochs = 1\n"""
SPECS = ("quickstart", "demo", "fat2019", "fat2019-r2")  # the study names the pages use
# flags whose value is a size: made tiny
SMALL_VALUES = {"--trials": "3", "--epochs": "1", "--seeds": "2", "--folds": "2", "--ensemble": "2", "--bags": "2",
                "--device": "cpu", "--scale": "0.02"}
SERVERS = {"search.dashboard", "tensorboard"}


def block_commands(text: str) -> list[str]:
    """The commands of a page's ```bash blocks: continuation lines joined, comments dropped, && split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split(" && "):
                words = shlex.split(part, comments=True)
                if words:
                    commands.append(shlex.join(words))
    return commands


def documented_pages() -> list[Path]:
    """README first, then the docs pages in DOCS_ORDER, then any other page by name."""
    pages = sorted(DOCS.glob("*.md"), key=lambda p: (DOCS_ORDER.index(p.name) if p.name in DOCS_ORDER
                                                     else len(DOCS_ORDER), p.name))
    return [README, *pages]


def runnable_commands() -> list[tuple[Path, str]]:
    """(page, command) for every command this test runs, in run order (repeats included)."""
    return [(page, command) for page in documented_pages()
            for command in block_commands(page.read_text(encoding="utf-8")) if not NOT_RUN.match(command)]


def tiny(command: str, data: Path, scratch: Path) -> list[str]:
    """The command at tiny size: the FAT2019 folder is the tiny demo set, sizes are small, nothing uses a GPU."""
    words = [str(data) + w[len("/data/fat2019"):] if w.startswith("/data/fat2019") else str(data) if w == "DATA" else w
             for w in shlex.split(command)]
    for i, word in enumerate(words[:-1]):
        if word in SMALL_VALUES:
            words[i + 1] = SMALL_VALUES[word]
        if word == "--out" and words[1:3] == ["-m", "trainer.synth"]:
            words[i + 1] = str(scratch / words[i + 1])
    module = module_of(words)
    if module == "trainer.train":
        words += [] if "--data" in words else ["--data", str(data)]
        words += [] if "--config" in words else ["--config", "my.toml"]
        words += ["--threads", "1", "--no-progress"]
    if module == "trainer.synth" and "--scale" not in words:
        words += ["--scale", "0.02"]
    if module == "search.quickstart":
        words += ["--trials", "2", "--threads", "1"]
    # console scripts of the environment the tests run in (the README activates it first)
    program = sys.executable if words[0] == "python" else str(Path(sys.executable).parent / words[0])
    return [program, *words[1:]]


def module_of(words: list[str]) -> str:
    return words[2] if words[1:2] == ["-m"] else Path(words[0]).name


def with_free_port(argv: list[str]) -> list[str]:
    return argv if "--port" in argv else [*argv, "--port", str(free_port())]


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


def run_panes_session(argv: list[str], cwd: Path, env: dict) -> None:
    """``search.panes`` on a tmux server of its own, without the watch window: its workers run the tiny study to
    its total, then the server is killed however this ends."""
    tmux_socket = f"readme-{os.getpid()}"
    try:
        done = subprocess.run([*argv, "-L", tmux_socket, "--no-attach", "--no-watch"], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert done.stdout.startswith("tmux session search-"), done.stdout
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            listed = subprocess.run(["tmux", "-L", tmux_socket, "list-panes", "-a", "-F", "#{pane_dead}"],
                                    capture_output=True, text=True)
            if listed.returncode == 0 and set(listed.stdout.split()) == {"1"}:  # every worker ended
                return
            time.sleep(2.0)
        raise AssertionError(f"{shlex.join(argv)}: the panes' workers did not end within 600 s")
    finally:
        subprocess.run(["tmux", "-L", tmux_socket, "kill-server"], capture_output=True)


def test_every_documented_command_is_known():
    """Every command of the pages is one .ci/run runs, or something the tiny runner knows."""
    readme = block_commands(README.read_text(encoding="utf-8"))
    assert "python -m search.quickstart" in readme, "the README must show the quickstart"
    assert "python -m pytest -q" in readme, "the README must show the test command (.ci/run runs it verbatim)"
    for page, command in runnable_commands():
        assert shlex.split(command)[0] in {"python", "tensorboard", "optuna"}, \
            f"{page.relative_to(ROOT)}: command not runnable by this test: {command}"


@pytest.mark.slow
@pytest.mark.timeout(2400)  # some forty commands, each a fresh process: minutes on a busy 2-core box
def test_documented_commands_run_at_tiny_size(tmp_path, demo_data, warm_cache):
    studies = tmp_path / "studies"
    for name in SPECS:
        write_spec(studies, name, epochs=2, startup="near_baseline = 1")
    (tmp_path / "my.toml").write_text(TINY_TOML, encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FAT2019_STUDIES", None)
    ran = set()
    for page, command in runnable_commands():
        argv = tiny(command, demo_data, tmp_path)
        if tuple(argv) in ran:  # the same command at tiny size on another page
            continue
        ran.add(tuple(argv))
        module = module_of(argv)
        if module in SERVERS:
            serve_and_fetch(with_free_port(argv), tmp_path, env)
            continue
        if module == "search.panes":
            run_panes_session(argv, tmp_path, env)
            continue
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{page.relative_to(ROOT)}: command failed at tiny size: {command}\n" \
                                     f"{shlex.join(argv)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (tmp_path / "submission.csv").is_file()


# -- links ----------------------------------------------------------------------------------------------------
def without_code(text: str) -> str:
    """The page without fenced blocks and inline code, where a bracket is not a link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"(`+).+?\1", "", text, flags=re.S)


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation but '-' and '_' dropped, spaces to '-',
    a repeated heading numbered."""
    anchors: set[str] = set()
    for line in re.sub(r"^```.*?^```", "", text, flags=re.S | re.M).splitlines():
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in anchors:
                n += 1
                anchor = f"{slug}-{n}"
            anchors.add(anchor)
    return anchors


def relative_links(text: str) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", without_code(text))
    return [t for t in targets if not re.match(r"[a-z]+:", t)]  # http:, https:, mailto: are not checked here


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page):
    assert page.is_file(), f"{page.relative_to(ROOT)} is missing"
    broken = []
    for link in relative_links(page.read_text(encoding="utf-8")):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target.read_text(encoding="utf-8")):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_check_sees_links_and_anchors_as_github_does():
    page = "# Re-scoring the top trials: `--rescore K`\n## Re-scoring the top trials: `--rescore K`\n"
    assert heading_anchors(page) == {"re-scoring-the-top-trials---rescore-k", "re-scoring-the-top-trials---rescore-k-1"}
    text = "see [a](x.md#top), ![b](y.png) and [c](https://example.org) but not `[d](d.md)`\n```text\n[e](e.md)\n```\n"
    assert relative_links(text) == ["x.md#top", "y.png"]


def test_the_tests_the_guarantees_name_exist():
    """Each ``file::test`` of a docs table (and each bare test name after it, of the same file) is a test."""
    missing = []
    for page in sorted(DOCS.glob("*.md")):
        for row in page.read_text(encoding="utf-8").splitlines():
            if not (row.startswith("|") and "::" in row):
                continue
            current = None
            for token in re.findall(r"`([^`]+)`", row):
                if "::" in token:
                    name_of_file, _, token = token.partition("::")
                    current = ROOT / name_of_file if "/" in name_of_file else ROOT / "tests" / "search" / name_of_file
                if current is None or not re.fullmatch(r"test_\w+", token):
                    continue
                if not current.is_file() or f"def {token}(" not in current.read_text(encoding="utf-8"):
                    missing.append(f"{page.name}: {current.relative_to(ROOT)}::{token}")
    assert not missing, "named in the docs, not found: " + ", ".join(missing)

