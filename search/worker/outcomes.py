"""Every way an attempt at a trial can end, in one table: what ends it (an exception the objective raised, or an
event), the state the trial is told, the ``reason`` it records, whether a fruitless attempt that ended so counts
against ``--max-retry``, whether it is queued again, and whether the worker stops.

The worker (``search.worker.lifecycle``) turns an exception into its row with ``ending``; retry counting
(``search.worker.failures``) reads a failed attempt's row back from its reason with ``outcome_of``. Nothing else
decides what a failure means.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Callable

import optuna
import sqlalchemy
import torch
from optuna.trial import TrialState

from search.study.storage import storage_failure_text
from trainer import CheckpointError, ConfigError, DataError, NonFiniteLossError

GOES_ON = "goes on"  # the worker takes its next trial
EXIT_2 = "exit 2"  # one line naming what to fix; what every later trial would hit too
EXIT_SIGNAL = "exit 128+signal"  # Ctrl-C, SIGTERM, SIGHUP: 130, 143, 129
RAISES = "raises"  # a bug: recorded on the trial, then it surfaces with its traceback


class TrialFailed(Exception):
    """A trial failed for a known reason (recorded on it); the worker goes on."""


class StopWorker(Exception):
    """A problem every later trial would hit too; the worker stops with this one line."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Outcome:
    """One way an attempt ends (a row of ``OUTCOMES``)."""

    reason: str  # how the trial's ``reason`` user attr starts ("out of memory: CUDA out of ..."); a key
    ended_by: str  # in words: the exception or event
    state: TrialState
    counts: bool  # a failed attempt without progress that ended so counts against --max-retry
    retried: bool  # a failed attempt that ended so is queued again (with its params and checkpoints)
    stops: str  # GOES_ON, EXIT_2, EXIT_SIGNAL or RAISES
    raised: tuple[type[BaseException], ...] = ()  # the exceptions that end an attempt so; () for an event
    only_if: Callable[[BaseException], bool] | None = None  # of those, the ones it is

    def matches(self, exc: BaseException) -> bool:
        return isinstance(exc, self.raised) and (self.only_if is None or self.only_if(exc))


STORAGE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)
FAIL, PRUNED = TrialState.FAIL, TrialState.PRUNED

# Matched top to bottom: the first row whose exception it is. Environment problems (storage, data, disk full,
# interrupted) say nothing about the trial itself and never count. A dead worker's trial ("heartbeat") counts: a
# worker that dies before its trial's first new epoch was most often killed by the kernel's OOM killer for that
# trial's memory, and uncounted, such a trial would take down every pane in turn for ever (benchmarks/stress.py).
OUTCOMES: tuple[Outcome, ...] = (
    #       reason, ended by, state, counts against --max-retry, retried, stops the worker, raised, only if
    Outcome("complete", "the objective returned its best lwlrap", TrialState.COMPLETE, False, False, GOES_ON),
    Outcome("storage", "the study storage failed a read or write (unreachable, locked, full)",
            FAIL, False, True, EXIT_2, STORAGE_ERRORS),
    Outcome("over the kernel budget", "the first epoch's inference cost projects past [kernel] budget_s",
            PRUNED, False, False, GOES_ON, (optuna.TrialPruned,), lambda e: str(e).startswith("over the kernel budget")),
    Outcome("pruned", "the pruner stopped it before its last epoch", PRUNED, False, False, GOES_ON,
            (optuna.TrialPruned,)),
    Outcome("diverged", "a NaN/inf training loss or validation output", PRUNED, False, False, GOES_ON,
            (NonFiniteLossError,)),
    Outcome("config", "an impossible combination of params (the same params fail the same way)",
            FAIL, False, False, GOES_ON, (ConfigError,)),
    Outcome("checkpoint", "a checkpoint the trainer could not use", FAIL, True, True, GOES_ON, (CheckpointError,)),
    Outcome("data", "the data set is unreadable or gone", FAIL, False, True, EXIT_2, (DataError,)),
    Outcome("disk full", "no space left for the trial's files or the study database", FAIL, False, True, EXIT_2,
            (OSError,), lambda e: getattr(e, "errno", None) == errno.ENOSPC),
    Outcome("out of memory", "CUDA or CPU allocation failed", FAIL, True, True, GOES_ON,
            (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError), lambda e: is_out_of_memory(e)),
    Outcome("interrupted", "Ctrl-C, SIGTERM or SIGHUP", FAIL, False, True, EXIT_SIGNAL, (KeyboardInterrupt,)),
    Outcome("heartbeat", "its worker died (heartbeat stopped, or none within the grace period)", FAIL, True, True,
            GOES_ON),
    Outcome("error", "any other exception: a bug", FAIL, True, False, RAISES, (Exception,)),
)
BY_REASON = {outcome.reason: outcome for outcome in OUTCOMES}
DEAD_WORKER = BY_REASON["heartbeat"]


def outcome_of(reason: str | None) -> Outcome:
    """The row a trial's recorded ``reason`` belongs to; a FAILED trial without one was failed by the storage's
    check for dead workers."""
    if not reason:
        return DEAD_WORKER
    for outcome in OUTCOMES:
        if reason.startswith(outcome.reason):
            return outcome
    return BY_REASON["error"]


def ending(exc: BaseException, *, trial_files: str) -> tuple[Outcome, str]:
    """The row ``exc`` ends an attempt with, and the reason the trial records (``trial_files``: where the trial
    writes, named when a full disk's error names no file)."""
    outcome = next(o for o in OUTCOMES if o.matches(exc))
    if outcome.state == PRUNED and isinstance(exc, optuna.TrialPruned):
        return outcome, str(exc) or outcome.reason
    if outcome.reason == "interrupted":
        return outcome, outcome.reason
    if outcome.reason == "disk full":
        # A copy (shutil, into the artifact store) names its source first and the full destination second;
        # torch.save and buffered writes raise ENOSPC without a file name: name where the trial writes
        return outcome, f"disk full: {exc.filename2 or exc.filename or trial_files}"
    if outcome.reason == "out of memory":
        return outcome, f"out of memory: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
    if outcome.reason == "error":
        return outcome, f"error: {type(exc).__name__}: {str(exc)[:200]}"
    if outcome.reason == "storage":
        return outcome, f"storage: {storage_failure_text(exc)}"
    return outcome, f"{outcome.reason}: {exc}"


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA or CPU allocation failure (torch reports the CPU one as a RuntimeError)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "not enough memory" in text
                                              or "can't allocate memory" in text)
