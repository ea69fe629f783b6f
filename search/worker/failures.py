"""How trials fail and which failures are tried again: one policy for every failure, wherever it is seen
(a worker's own trial, or a dead worker's trial found by the storage heartbeat)."""
from __future__ import annotations

from dataclasses import dataclass

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

DEFAULT_MAX_RETRY = 3  # failed attempts of one trial for a reason of its own (without progress) before it is dropped
# Reasons (prefixes of the ``reason`` attr) that say nothing about the trial itself: never counted. A dead
# worker ("heartbeat") is not among them: one that dies before its trial's first new epoch was most often killed
# by the kernel's OOM killer for that trial's memory, and uncounted, such a trial would take down every pane
# in turn for ever (benchmarks/stress.py, out of memory: oom-killer).
ENVIRONMENT_REASONS = ("interrupted", "data", "disk full")
NEVER_RETRIED = ("config",)  # the same params fail the same way


@dataclass(frozen=True)
class Dropped:
    """``requeue``'s answer for a trial it will not queue again: ``attempts`` of it failed without progress."""

    attempts: int
    max_retry: int

    def __str__(self) -> str:
        return f"dropped: {self.attempts} attempts failed without progress (--max-retry {self.max_retry})"


def requeue(study: optuna.Study, trial: FrozenTrial, *, reason: str, max_retry: int = DEFAULT_MAX_RETRY
            ) -> int | Dropped | None:
    """Queue a FAILED ``trial`` again as WAITING with its params; returns the new trial number, ``Dropped``
    when more than ``max_retry`` attempts failed for a reason of the trial's own without progress, or None when
    there is nothing to queue (an impossible config; a trial already re-queued is not queued twice)."""
    trials = study.get_trials(deepcopy=False)
    if any(t.user_attrs.get("retry_of") == trial.number for t in trials):
        return None
    if reason.startswith(NEVER_RETRIED):
        return None
    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    by_number = {t.number: t for t in trials}
    fruitless = sum(1 for number in history if number in by_number and _counts_against(by_number[number]))
    if fruitless > max_retry:
        return Dropped(fruitless, max_retry)
    user_attrs = {"retry_of": trial.number, "retry_reason": reason}
    for kept in ("baseline", "startup"):
        if kept in trial.user_attrs:
            user_attrs[kept] = trial.user_attrs[kept]
    system_attrs: dict = {"failed_trial": history[0], "retry_history": history}
    if isinstance(fixed := trial.system_attrs.get("fixed_params"), dict):
        # a queued point (baseline, startup) whose worker died before suggesting it: the retry keeps the point
        system_attrs["fixed_params"] = {**fixed, **trial.params}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=user_attrs,  # no curve: the retry reports the epochs its resume really keeps (lifecycle)
        system_attrs=system_attrs))
    return max(t.number for t in study.get_trials(deepcopy=False))


def _counts_against(attempt: FrozenTrial) -> bool:
    reason = str(attempt.user_attrs.get("reason", "heartbeat"))  # a dead worker's trial carries no reason
    if attempt.state != TrialState.FAIL or reason.startswith(ENVIRONMENT_REASONS):
        return False
    return int(attempt.user_attrs.get("epochs_run", 0)) <= int(attempt.user_attrs.get("resumed_from_epoch", 0))


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA or CPU allocation failure (torch reports the CPU one as a RuntimeError)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "not enough memory" in text
                                              or "can't allocate memory" in text)
