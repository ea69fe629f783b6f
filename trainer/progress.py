"""Human-readable progress lines for long data preparation, at most one every few seconds.

A search worker prints them in its pane, so minutes of cache filling or bank packing before the first epoch
show what is happening and how long it will take.
"""
from __future__ import annotations

import time
from typing import Callable

Status = Callable[[str], None]
EVERY_S = 5.0  # the least time between two progress lines of one task


class Progress:
    """Counts done units of one task and sends a line to ``status`` at most every EVERY_S seconds."""

    def __init__(self, status: Status | None, what: str, total: float, *, unit: str = "clips") -> None:
        self.status, self.what, self.total, self.unit = status, what, total, unit
        self.started = self.reported = time.monotonic()
        self.done = 0.0

    def advance(self, amount: float = 1) -> None:
        self.done += amount
        now = time.monotonic()
        if self.status is not None and now - self.reported >= EVERY_S:
            self.reported = now
            self.status(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.started
        rate = self.done / max(elapsed, 1e-9)
        share = self.done / max(self.total, 1)
        eta = f", ETA {duration(max(self.total - self.done, 0) / rate)}" if rate > 0 else ""
        if self.unit == "bytes":
            scale, unit = _unit(self.total)
            done = f"{self.done / scale:.{1 if unit == 'GB' else 0}f}"
            return f"{self.what}: {done}/{byte_size(self.total)} ({share:.0%}){eta}"
        return (f"{self.what}: {self.done:,.0f}/{self.total:,.0f} {self.unit} ({share:.0%}), "
                f"{rate:,.{1 if rate < 10 else 0}f} {self.unit}/s{eta}")

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def duration(seconds: float) -> str:
    """``6m52s``, ``1h04m``, ``12s``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def byte_size(n_bytes: float) -> str:
    """Decimal units, as disks and ``free`` report them: ``7.4 GB``, ``36 MB``, ``12 kB``."""
    scale, unit = _unit(n_bytes)
    return f"{n_bytes / scale:.{1 if unit == 'GB' else 0}f} {unit}"


def _unit(n_bytes: float) -> tuple[float, str]:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n_bytes >= scale:
            return scale, unit
    return 1.0, "bytes"
