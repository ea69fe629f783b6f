"""Ctrl-C, SIGTERM and SIGHUP in a worker: the first stops the running trial at once (it is failed as
"interrupted" and its retry queued before the worker exits 130 / 143 / 129); a second only skips the summary; a
third exits at once. SIGHUP is the pane's terminal closing (``tmux kill-session``, a dropped SSH), left alone
under ``nohup``."""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from typing import Any, Iterator


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP: the running trial stops and is re-queued, the worker exits."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """The worker's handler of the stop signals while it runs (``with StopSignals() as signals:``); ``count``
    says how many arrived."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> "StopSignals":
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in stop_signals()}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.count += 1
        if signum == signal.SIGHUP:
            leave_hung_up_terminal()
        if self.count == 1:
            print(f"\n{signal.Signals(signum).name}: stopping the running trial and queueing its retry "
                  f"(again: skip the summary; a third time: exit at once)", file=sys.stderr, flush=True)
            raise Interrupted(signum)
        if self.count == 2:
            print("queueing the retry, then exiting", file=sys.stderr, flush=True)
            return
        os._exit(128 + signum)


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop the worker the same way. SIGHUP is one unless the worker was started to ignore it
    (``nohup``): then it must keep ignoring it and outlive its terminal."""
    hang_up = () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGINT, signal.SIGTERM, *hang_up)


def leave_hung_up_terminal() -> None:
    """After SIGHUP the pane's terminal may be gone (``tmux kill-session``): every write to it then fails with
    EIO, which would cut short failing the trial and queueing its retry. stdout/stderr that fail so (a
    zero-byte write tells) now go to /dev/null; a pipe or a file (nohup.out, a test) keeps its output."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            try:
                os.write(fd, b"")
            except OSError as exc:
                if exc.errno == errno.EIO:  # anything else (a closed fd) is no hung-up terminal: left as it is
                    os.dup2(devnull, fd)
    finally:
        os.close(devnull)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold the stop signals while the running trial is failed and re-queued (a few storage writes), so an
    impatient second Ctrl-C cannot cut that short; they are delivered afterwards."""
    signals = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
