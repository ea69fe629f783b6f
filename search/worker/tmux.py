"""A study's tmux session: which pane runs what (pure functions), and the few tmux calls that make it, tell
which study a session runs, and attach to it. ``python -m search.panes`` is the command line over this.

    places = worker_places(gpus=[0, 1], per_gpu=1)                  # or gpus=[], panes=2, cores=16 on a CPU box
    windows = [Window(WORKERS_WINDOW, worker_panes(places, python=..., study_flags=..., trials=50))]
    TmuxServer().create("search-demo", windows, cwd=".", env={}, study=("demo", "sqlite:///..."))

The whole session is made by one tmux command list: tmux runs it before it looks at a pane's exit, so
``remain-on-exit`` is set before a worker that fails at once can take its last lines with it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Mapping, Sequence

TMUX_MISSING = "tmux not found; install it: sudo apt-get install tmux (Debian/Ubuntu) or brew install tmux (macOS)"
WORKERS_WINDOW = "workers"
WATCH_WINDOW = "watch"
STATUS_WATCH_S = 5  # search.status --watch period in the watch window
# A detached session's size until a client attaches (then tmux resizes it to the terminal): large enough that a
# dozen tiled panes fit and a worker's lines do not wrap in `capture-pane`.
DETACHED_SIZE = ("200", "50")
# User options on the session: the study it was made for, so a second start attaches instead of doubling the
# workers, and a session of another study (or the user's own) is refused.
STUDY_OPTION = "@fat2019_study"
STORAGE_OPTION = "@fat2019_storage"
# The caller's environment that decides what a pane sees. A pane's process gets the tmux server's environment,
# which is the one of whoever started that server (maybe days ago): these are handed to the session explicitly.
PASSED_ENV_PREFIX = "FAT2019_"
PASSED_ENV = ("CUDA_VISIBLE_DEVICES", "PYTHONPATH")


class PanesError(ValueError):
    """A session that cannot be planned or made; the message is the one line for the user."""


@dataclass(frozen=True)
class Pane:
    title: str
    command: tuple[str, ...]  # executed directly (no shell), so the worker itself gets the pane's signals


@dataclass(frozen=True)
class Window:
    name: str
    panes: tuple[Pane, ...]


@dataclass(frozen=True)
class WorkerPlace:
    """Where one worker runs: ``device`` cuda:N (None: the CPU), ``threads`` its --threads (None: its own)."""

    device: str | None
    threads: int | None


# -- the plan (pure) ---------------------------------------------------------------------------------
def describe_gpus(count: int) -> str:
    """``GPUs 0-3`` / ``GPU 0`` / ``no GPU``: what torch sees, for refusals."""
    return {0: "no GPU", 1: "GPU 0"}.get(count, f"GPUs 0-{count - 1}")


def parse_gpus(text: str, device_count: int) -> list[int]:
    """``--gpus all|0,1,...`` -> the GPU indexes to start workers on (``all`` on a box without one: none)."""
    if text == "all":
        return list(range(device_count))
    try:
        gpus = [int(part) for part in text.split(",")]
    except ValueError:
        raise PanesError(f"--gpus {text}: expected all or GPU indexes like 0,1") from None
    missing = [g for g in gpus if not 0 <= g < device_count]
    if missing:
        raise PanesError(f"--gpus {text}: this box has {describe_gpus(device_count)}")
    repeated = sorted({g for g in gpus if gpus.count(g) > 1})
    if repeated:
        raise PanesError(f"--gpus {text}: GPU {repeated[0]} is listed twice; for several workers on one GPU "
                         f"use --per-gpu K")
    return gpus


def worker_places(gpus: Sequence[int], *, per_gpu: int = 1, panes: int = 2, cores: int = 1,
                  threads: int | None = None) -> list[WorkerPlace]:
    """``per_gpu`` workers pinned to each GPU, in GPU order; without GPUs ``panes`` CPU workers that split
    ``cores`` (``threads`` given: every worker takes that many)."""
    if gpus:
        return [WorkerPlace(f"cuda:{gpu}", threads) for gpu in gpus for _ in range(per_gpu)]
    share = threads if threads is not None else max(1, cores // panes)
    return [WorkerPlace(None, share) for _ in range(panes)]


def worker_panes(places: Sequence[WorkerPlace], *, python: str, study_flags: Sequence[str], trials: int,
                 worker_flags: Sequence[str] = ()) -> tuple[Pane, ...]:
    """One ``search.run`` pane per place, titled ``worker 2 · cuda:1``."""
    panes = []
    for number, place in enumerate(places, start=1):
        device = place.device or "cpu"
        command = (python, "-m", "search.run", *study_flags, "--trials", str(trials), "--device", device,
                   *(("--threads", str(place.threads)) if place.threads is not None else ()), *worker_flags)
        panes.append(Pane(f"worker {number} · {device}", command))
    return tuple(panes)


def watch_panes(*, python: str, study_flags: Sequence[str], runs_dir: str, dashboard_port: int,
                tensorboard_port: int) -> tuple[Pane, ...]:
    """The dashboard and TensorBoard (bound to 127.0.0.1, for an ssh tunnel) and the study's status."""
    return (
        Pane(f"dashboard · 127.0.0.1:{dashboard_port}",
             (python, "-m", "search.dashboard", *study_flags, "--host", "127.0.0.1", "--port", str(dashboard_port))),
        Pane(f"tensorboard · 127.0.0.1:{tensorboard_port}",
             (python, "-m", "tensorboard.main", "--logdir", runs_dir, "--host", "127.0.0.1",
              "--port", str(tensorboard_port))),
        Pane("status", (python, "-m", "search.status", *study_flags, "--watch", str(STATUS_WATCH_S))),
    )


def default_session_name(study: str) -> str:
    """``search-<study>``; tmux does not allow '.' or ':' in a session name."""
    return "search-" + study.replace(".", "_").replace(":", "_")


def passed_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's variables a pane must see as the caller does (see ``PASSED_ENV``)."""
    return {name: value for name, value in sorted(environ.items())
            if name.startswith(PASSED_ENV_PREFIX) or name in PASSED_ENV}


def session_commands(session: str, windows: Sequence[Window], *, cwd: str, env: Mapping[str, str],
                     study: tuple[str, str]) -> list[list[str]]:
    """The tmux commands (each an argument list without ``tmux``) that make the session: the first window's
    first pane with the session, the study options, then per window its options and the rest of its panes
    (each split re-tiled, so many panes still fit), each pane titled; the first window is left current."""
    target = f"={session}"  # '=': exactly this session, not the first whose name starts so
    study_name, storage = study
    commands: list[list[str]] = []
    for index, window in enumerate(windows):
        at = f"{target}:{window.name}"
        first, *others = window.panes
        if index == 0:
            commands.append(["new-session", "-d", "-s", session, "-n", window.name, "-x", DETACHED_SIZE[0],
                             "-y", DETACHED_SIZE[1], "-c", cwd, *_env_arguments(env),
                             "--", *first.command])
            commands += [["set-option", "-t", f"{target}:", STUDY_OPTION, study_name],
                         ["set-option", "-t", f"{target}:", STORAGE_OPTION, storage]]
        else:
            commands.append(["new-window", "-d", "-t", f"{target}:", "-n", window.name, "-c", cwd,
                             "--", *first.command])
        # A worker's end line stays readable in its pane (and to `capture-pane`) after it exits.
        commands += [["set-option", "-w", "-t", at, "remain-on-exit", "on"],
                     ["set-option", "-w", "-t", at, "pane-border-status", "top"],
                     ["select-pane", "-t", at, "-T", first.title]]  # a window target means its active pane
        for pane in others:
            commands += [["split-window", "-t", at, "-c", cwd, "--", *pane.command],  # the new pane is active
                         ["select-layout", "-t", at, "tiled"],
                         ["select-pane", "-t", at, "-T", pane.title]]
    commands.append(["select-window", "-t", f"{target}:{windows[0].name}"])
    return commands


def _env_arguments(env: Mapping[str, str]) -> list[str]:
    return [word for name, value in env.items() for word in ("-e", f"{name}={value}")]


def command_list(commands: Sequence[Sequence[str]]) -> list[str]:
    """The arguments of one ``tmux`` call running ``commands`` in order: joined by ';'. tmux takes an argument
    ending in ';' as a separator, so such an argument's own ';' is escaped as tmux reads it ('\\;')."""
    arguments: list[str] = []
    for command in commands:
        if arguments:
            arguments.append(";")
        arguments += [arg[:-1] + "\\;" if arg.endswith(";") else arg for arg in command]
    return arguments


def tmux_words(socket: str | None) -> list[str]:
    """``tmux`` or ``tmux -L NAME``: the start of every tmux command this module runs or prints."""
    return ["tmux", "-L", socket] if socket else ["tmux"]


def attach_command(session: str, socket: str | None, *, inside_tmux: bool) -> list[str]:
    """Attach this terminal to the session; from inside tmux, switch the client instead of nesting."""
    return [*tmux_words(socket), "switch-client" if inside_tmux else "attach-session", "-t", f"={session}"]


# -- the tmux server ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TmuxServer:
    """The user's tmux server, or the one on socket ``-L NAME``."""

    socket: str | None = None

    @staticmethod
    def installed() -> bool:
        return shutil.which("tmux") is not None

    def _run(self, arguments: Sequence[str]) -> subprocess.CompletedProcess:
        return subprocess.run([*tmux_words(self.socket), *arguments], capture_output=True, text=True)

    def has_session(self, session: str) -> bool:
        return self._run(["has-session", "-t", f"={session}"]).returncode == 0  # also 1: no server running

    def session_study(self, session: str) -> tuple[str, str] | None:
        """(study, storage) the session was made for; None without such a session; ("", "") for a session
        search.panes did not make."""
        if not self.has_session(session):
            return None
        shown = self._run(["display-message", "-p", "-t", f"={session}:",
                           f"#{{{STUDY_OPTION}}}\t#{{{STORAGE_OPTION}}}"])
        study, _, storage = shown.stdout.rstrip("\n").partition("\t")
        return study, storage

    def create(self, session: str, windows: Sequence[Window], *, cwd: str, env: Mapping[str, str],
               study: tuple[str, str]) -> None:
        """Make the session (one tmux call); a failure half-way removes what was made and raises PanesError."""
        done = self._run(command_list(session_commands(session, windows, cwd=cwd, env=env, study=study)))
        if done.returncode == 0:
            return
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
        if "duplicate session" not in reason:  # one of ours that started and then failed: not half a session
            self.kill(session)
        raise PanesError(f"tmux: {reason}")

    def kill(self, session: str) -> None:
        self._run(["kill-session", "-t", f"={session}"])

    def attach(self, session: str) -> None:
        """Replace this process by the tmux client attached to the session (returns only if exec fails)."""
        command = attach_command(session, self.socket, inside_tmux=bool(os.environ.get("TMUX")))
        os.execvp(command[0], command)
