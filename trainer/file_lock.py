"""One builder at a time for a shared cache file: an exclusive ``flock`` held while the file is made.

The kernel drops a flock when its holder exits, however it exits (kill -9 and power loss included), so a
dead builder never blocks the others: the next waiter simply gets the lock. That is the stale-lock
detection; nothing depends on pids or timestamps. The holder's pid is written into the lock file only to
name it in the waiters' status lines. Lock files are never deleted (deleting one while another process
waits on it would let two builders in).
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

POLL_S = 0.2
REPORT_EVERY_S = 5.0


@contextmanager
def exclusive_lock(path: str | os.PathLike, *, what: str,
                   status: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` for the ``with`` body; while another process holds it, wait.

    Waiting reports ``waiting for pid N (what), 12s`` through ``status`` at most every REPORT_EVERY_S.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        started = time.monotonic()
        reported = started
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if status is not None and now - reported >= REPORT_EVERY_S:
                    status(f"waiting for {_holder(fd)} ({what}), {now - started:.0f}s")
                    reported = now
                time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return f"pid {text}" if text.isdigit() else "another process"
