"""torch CPU threads for a worker: its pane's share of the box's cores, cut to what other processes leave free,
decided again at every epoch's start. A count fixed at a trial's start collapses when load appears later: a trial
that took 2 threads on an idle 2-core box ran 12x slower once another job started (figures: docs/threads.md)."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

LOADAVG = Path("/proc/loadavg")
SAMPLES = 5  # readings of the runnable count, SAMPLE_GAP_S apart: one reading is a coin toss on a busy box
SAMPLE_GAP_S = 0.01


def threads_for_load(busy_elsewhere: float, cores: int, panes: int) -> int:
    """Threads for one of ``panes`` workers on ``cores`` cores while ``busy_elsewhere`` threads of other processes
    want a core: the pane's share (cores // panes), cut so that the panes and the others together ask for no more
    threads than there are cores, and at least 1. Oversubscribed OpenMP threads wait on each other's time slices,
    which costs far more than the parallelism gains."""
    share = max(1, cores // max(1, panes))
    free = cores - max(0.0, busy_elsewhere)
    return max(1, min(share, int(free // max(1, panes))))


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def runnable_now() -> float:
    """Threads on the box that run or wait for a core right now (this one included): the median of a few readings
    of /proc/loadavg's runnable count. Where there is none, the 1-minute load average (lags load by a minute)."""
    try:
        readings = []
        for i in range(SAMPLES):
            if i:
                time.sleep(SAMPLE_GAP_S)
            readings.append(int(LOADAVG.read_text().split()[3].split("/")[0]))
        return float(statistics.median(readings))
    except (OSError, IndexError, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def threads_now(panes: int) -> int:
    """``threads_for_load`` on this box now. Not counted as load: this thread, and the other panes' shares (they
    are this search's own workers, whose threads the share already accounts for)."""
    cores = usable_cores()
    share = max(1, cores // max(1, panes))
    busy_elsewhere = runnable_now() - 1 - (max(1, panes) - 1) * share
    return threads_for_load(busy_elsewhere, cores, panes)
