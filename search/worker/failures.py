"""Which failed trials are tried again: one policy for every failure, wherever it is seen (a worker's own trial,
or a dead worker's trial found by the storage heartbeat), read from the table of outcomes
(``search.worker.outcomes``)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.worker.outcomes import DEAD_WORKER, outcome_of

DEFAULT_MAX_RETRY = 3  # failed attempts of one trial for a reason of its own (without progress) before it is dropped


@dataclass(frozen=True)
class Dropped:
    """``requeue``'s answer for a trial it will not queue again: ``attempts`` of it failed without progress."""

    attempts: int
    max_retry: int

    def __str__(self) -> str:
        return f"dropped: {self.attempts} attempts failed without progress (--max-retry {self.max_retry})"


def requeue(study: optuna.Study, trial: FrozenTrial, *, reason: str, max_retry: int = DEFAULT_MAX_RETRY,
            trials: list[FrozenTrial] | None = None) -> int | Dropped | None:
    """Queue a FAILED ``trial`` again as WAITING with its params; returns the new trial number, ``Dropped``
    when more than ``max_retry`` attempts failed for a reason of the trial's own without progress, or None when
    there is nothing to queue (an impossible config; a trial already re-queued is not queued twice). ``trials``:
    the study's trials when the caller has just read them."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    # why each earlier attempt ended: its own reason, else the one its retry was queued with (a write the failing
    # storage refused), else none: the storage's check for dead workers failed it
    queued_for = {t.user_attrs["retry_of"]: t.user_attrs.get("retry_reason") for t in trials
                  if "retry_of" in t.user_attrs}
    if trial.number in queued_for:
        return None
    if not outcome_of(reason).retried:
        return None
    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    by_number = {t.number: t for t in trials}
    queued_for[trial.number] = reason
    fruitless = sum(1 for number in history if number in by_number
                    and counts_against(by_number[number], queued_for.get(number)))
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


def stale_trial_retry(max_retry: int = DEFAULT_MAX_RETRY) -> Callable[[optuna.Study, FrozenTrial], None]:
    """The storage's ``on_stale_trial``: a trial whose worker died (its heartbeat stopped) is retried like any
    other failure, by whichever worker noticed."""
    def retry(study: optuna.Study, trial: FrozenTrial) -> None:
        _retry_dead(study, trial, "stopped beating (its worker died)", max_retry)
    return retry


def fail_unclaimed_trials(study: optuna.Study, running: Iterable[FrozenTrial], *, older_than_s: float,
                          max_retry: int = DEFAULT_MAX_RETRY, now: dt.datetime | None = None) -> list[int]:
    """Fail and retry the ``running`` trials no worker ever claimed: no ``worker_id`` after ``older_than_s`` since
    they started. A worker killed between taking a trial (RUNNING) and its first heartbeat leaves one that Optuna's
    stale check never sees (it only looks at trials with a heartbeat), so without this every pane waits for it
    for ever (benchmarks/stress.py, the PostgreSQL storm). Returns the numbers failed."""
    now = now or dt.datetime.now()  # Optuna stamps datetime_start with the local clock
    failed = []
    for trial in running:
        if trial.state != TrialState.RUNNING or "worker_id" in trial.user_attrs or trial.datetime_start is None:
            continue
        if (now - trial.datetime_start).total_seconds() < older_than_s:
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        except ValueError:  # claimed or finished in the meantime
            continue
        failed.append(trial.number)
        _retry_dead(study, study.get_trials(deepcopy=False)[trial.number],
                    "was taken by a worker that died before its first heartbeat", max_retry)
    return failed


def _retry_dead(study: optuna.Study, trial: FrozenTrial, what: str, max_retry: int) -> None:
    """Queue the retry of a dead worker's FAILED trial (or drop it), saying which in one line."""
    outcome = requeue(study, trial, reason=DEAD_WORKER.reason, max_retry=max_retry)
    if isinstance(outcome, Dropped):
        print(f"#{trial.number} {what} and is {outcome}", flush=True)
    elif outcome is not None:
        print(f"#{trial.number} {what}: queued for retry as #{outcome}", flush=True)


def counts_against(attempt: FrozenTrial, queued_reason: str | None = None) -> bool:
    """Whether a failed ``attempt`` counts against --max-retry: it made no progress (no epoch beyond where it
    resumed) and its outcome counts. Its reason is its own ``reason``, else ``queued_reason`` (what its retry was
    queued with), else a dead worker's."""
    if attempt.state != TrialState.FAIL:
        return False
    if not outcome_of(attempt.user_attrs.get("reason") or queued_reason).counts:
        return False
    return int(attempt.user_attrs.get("epochs_run", 0)) <= int(attempt.user_attrs.get("resumed_from_epoch", 0))
