"""The life of a trial in a worker, in one place: start, heartbeat, interrupt, retry, resume hand-off.

    worker = build_worker(location, ...)             # search.worker.build: the set-up, top to bottom
    exit_code = worker.run(objective, trials=50)     # objective = Objective(spec, data_dir, worker.start)

- **start**: a trial trains in ``runs/<study uid>/trial-<n>/``; a retried trial first pulls its
  predecessor's checkpoints from the artifact store (``search.worker.resume``), so it resumes on any machine.
- **heartbeat**: Optuna's storage heartbeat. A worker that dies stops beating; the next worker fails its
  trial and re-queues it (``search.worker.failures``), the same policy as every other failure.
- **interrupt**: Ctrl-C, SIGTERM or SIGHUP stop the running trial at once (``search.worker.signals``); it is
  marked FAILED ("interrupted") and its retry queued before the worker exits (130 / 143 / 129).
- **failures**: what each way of ending means (state, reason, retried, counted against ``--max-retry``, stops
  the worker) is one table, ``search.worker.outcomes``; this module applies it. What stops a worker fails the
  trial, queues its retry and prints one line (exit 2). A SQLite database on a full disk still takes those
  writes: the worker frees the database's reserve file first (``storage.DiskReserve``).
- **exact totals**: with ``--trials N`` a worker counts the study's trials and starts its own under the
  study's slot lock (``search.worker.slots``), so panes racing for the last slot never overshoot N.
"""
from __future__ import annotations

import contextlib
import gc
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from search.spec import SpecError, StudySpec, load_spec
from search.study.artifacts import TrialFiles
from search.study.folds import fold_file
from search.study.inherit import inherited
from search.study.record import FINISHED, StudyHandle, on_host, trials_keeping_weights
from search.study.stacking import queue_stacked_points
from search.study.storage import DiskReserve, sqlite_database, storage_failure, storage_failure_text
from search.views import notes
from search.worker.console import Console
from search.worker.failures import DEFAULT_MAX_RETRY, Dropped, fail_unclaimed_trials, requeue
from search.worker.gpu_choice import DeviceChoice
from search.worker.outcomes import (
    BY_REASON,
    EXIT_2,
    EXIT_SIGNAL,
    PRUNED,
    RAISES,
    STORAGE_ERRORS,
    StopWorker,
    TrialFailed,
    ending,
)
from search.worker.resume import resume, resume_folds
from search.worker.signals import Interrupted, StopSignals, signals_blocked
from search.worker.slots import SlotLock
from search.worker.trial_run import RecordedTrial, TrialRun, choose_threads
from trainer import NonFiniteLossError, TrainConfig, feature_cache_key

WAIT_POLL_S = 2.0  # how often a worker waiting for other workers' trials looks again
# A trial's worker records itself (user attr worker_id) well within a second of taking it; an unclaimed RUNNING
# trial is failed after the heartbeat grace period, and never sooner than this (a stalled box or a skewed clock
# must not fail a live trial).
UNCLAIMED_MIN_S = 30.0


@dataclass
class Worker:
    """Runs trials of one study in this process until the study has enough, a timeout, or a signal."""

    handle: StudyHandle
    spec: StudySpec
    files: TrialFiles
    runs_dir: Path
    console: Console
    worker_id: str
    data_dir: Path
    max_retry: int = DEFAULT_MAX_RETRY
    threads: int | None = None
    grace: float = 180.0  # the storage's heartbeat grace period (search.run --grace)
    device: DeviceChoice | None = None  # what its trials train on, and why (the start line)
    objective: Callable[[optuna.Trial], float] | None = None  # search.worker.build gives its Objective
    current: optuna.Trial | None = None
    current_run: TrialRun | None = None  # the running attempt, once ``start`` prepared it
    stop: StopWorker | None = None
    signals: StopSignals = field(default_factory=StopSignals)
    evicted: set[int] = field(default_factory=set)
    slots: SlotLock = field(init=False)
    reserve: DiskReserve | None = field(init=False)

    def __post_init__(self) -> None:
        self.slots = SlotLock(self.handle.url, getattr(self.handle.storage, "engine", None), self.handle.name)
        database = sqlite_database(self.handle.url)
        self.reserve = DiskReserve(database) if database is not None else None

    @property
    def study(self) -> optuna.Study:
        return self.handle.study

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, objective: Callable[[optuna.Trial], float] | None = None, *, trials: int | None = None,
            timeout: float | None = None) -> int:
        """Take trials until done (``objective``: instead of the one built with the worker); returns the exit
        status (0 done, 130/143 interrupted, 2 stopped)."""
        self.objective = objective or self.objective
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.reserve is not None:
            self.reserve.ensure()
        # What is alive now (torch, Optuna, the study) lives as long as the worker. Frozen out of the collector,
        # the collection Optuna runs after every trial scans only that trial's objects: a full collection after
        # the worker's imports took 0.22 s here, 0.0 s frozen. Thawed on the way out, for a caller that goes on.
        gc.collect()
        gc.freeze()
        try:
            with self.signals:
                return self._loop(trials, deadline)
        finally:
            self.slots.release()
            gc.unfreeze()

    def _loop(self, trials: int | None, deadline: float | None) -> int:
        try:
            while True:
                reason = self._wait_for_work(trials, deadline)
                if reason is not None:
                    self.console.summary(self.study, reason)
                    return 0
                try:
                    self.study.optimize(self._attempt, n_trials=1, catch=(TrialFailed,),
                                        callbacks=[self._after_trial], gc_after_trial=True)
                finally:
                    self.slots.release()  # held from the count until the trial started (or failed to)
                if self.stop is not None:
                    raise self.stop
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            with signals_blocked():
                self._abandon_current(BY_REASON["interrupted"].reason)
            if self.signals.count < 2:
                self.console.summary(self.study, "interrupted")
            return 128 + signum
        except StopWorker as exc:
            with signals_blocked():
                self._abandon_current(str(exc).split(":")[0])
            self.console.error(str(exc))
            return exc.code
        except Exception as exc:
            # Optuna's loop re-raises a failed write of the trial's state as its own AssertionError; the
            # storage error is in the chain either way.
            failure = storage_failure(exc)
            if failure is None:
                raise
            with signals_blocked():
                self.console.error(self._storage_failed(failure))
            return 2

    def _wait_for_work(self, trials: int | None, deadline: float | None) -> str | None:
        """None when a trial may start, with the slot lock held; else why the worker is done. Keeps the
        study's total exact: a worker only starts a trial while finished + running trials, counted in one
        query under the lock, are fewer than ``trials``."""
        told = False
        if trials is not None and not self.slots.exact:
            self.console.message(f"note: {self.handle.url.split(':', 1)[0]} storage has no slot lock here; "
                                 f"with panes racing the study may end a few trials over {trials}")
        while True:
            self._check_environment()
            if deadline is not None and time.monotonic() >= deadline:
                return "timeout reached"
            if trials is None:
                return None
            self.slots.acquire()
            counted = self.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
            states = [t.state for t in counted if not inherited(t)]  # --trials counts the study's own trials
            running = states.count(TrialState.RUNNING)
            finished = len(states) - running
            if finished >= trials:
                self.slots.release()
                own = "" if len(states) == len(counted) else " of its own"
                if finished == trials:
                    return f"done: the study has its {trials} finished trials{own}"
                return f"done: the study has {finished} finished trials{own} (more than --trials {trials} asks)"
            if finished + running < trials:
                return None
            self.slots.release()
            if not told:
                self.console.message(f"waiting: {running} running trial(s) of other workers will bring the study "
                                     f"to {trials}; this pane takes one if any fails")
                told = True
            optuna.storages.fail_stale_trials(self.study)
            fail_unclaimed_trials(self.study, counted, older_than_s=max(self.grace, UNCLAIMED_MIN_S),
                                  max_retry=self.max_retry)
            time.sleep(WAIT_POLL_S)

    def _check_environment(self) -> None:
        """Stop before a trial when every trial would fail: data folder gone, spec file changed."""
        if not self.data_dir.is_dir():
            raise StopWorker(f"data: the data folder {self.data_dir} is gone")
        try:
            changed = load_spec(self.spec.path).fingerprint() != self.spec.fingerprint()
        except (SpecError, OSError):
            changed = False  # a spec being edited mid-save or removed: keep the one this worker loaded
        if changed:
            raise StopWorker(f"spec: {self.spec.path} changed since this worker started; a changed spec is for a "
                             f"new study (another [study] name): restart the worker")

    # -- one trial -------------------------------------------------------------------------------------
    def _attempt(self, trial: optuna.Trial) -> float:
        """The objective, with every exception turned into the trial's state and ``reason`` by the table of
        outcomes (``search.worker.outcomes``)."""
        self.current, self.current_run = trial, None
        self.slots.release()  # the trial is RUNNING: it counts, so the next worker may look
        try:
            value = self.objective(trial)
        except (Exception, KeyboardInterrupt) as exc:
            outcome, reason = ending(exc, trial_files=f"the files of trial {trial.number} (its folder "
                                                      f"{self.trial_dir(trial.number)}, the feature cache or the "
                                                      f"artifact store)")
            if outcome.reason == "storage":
                with contextlib.suppress(*STORAGE_ERRORS):  # the storage may take this one write still
                    trial.set_user_attr("reason", reason)
                raise  # nothing more can be recorded: ``run`` says so in one line
            self._end(trial, "PRUNED" if outcome.state == PRUNED else "FAILED", reason)
            if outcome.stops in (EXIT_SIGNAL, RAISES):
                raise  # an interrupt: ``run`` queues the retry and exits; a bug surfaces with its traceback
            if outcome.reason == "out of memory" and torch.cuda.is_available():
                torch.cuda.empty_cache()
            if outcome.stops == EXIT_2:
                self.stop = StopWorker(_stop_line(reason))
            if outcome.state == PRUNED:
                raise optuna.TrialPruned(reason) from None
            raise TrialFailed(reason) from None
        self._end(trial, f"COMPLETE, lwlrap {value:.4f}", None)
        return value

    def _end(self, trial: optuna.Trial, outcome: str, reason: str | None) -> None:
        """Record why the attempt ended and write the trial's dashboard note from what the attempt recorded (its
        run's record; without a run, its params made no valid config: the attrs it was queued with), while the
        trial can still take them."""
        run = self.current_run if self.current_run is not None and self.current_run.trial.live is trial else None
        record = run.trial if run is not None else RecordedTrial(trial)
        if reason is not None:
            record.set_user_attr("reason", reason)
        notes.save(trial, notes.trial_note(trial.number, outcome, run.config if run is not None else None,
                                           self.spec.base_config(), record.attrs))

    @contextlib.contextmanager
    def start(self, trial: optuna.Trial, config: TrainConfig, *, device: str) -> Iterator[TrialRun]:
        """Prepare an attempt: folder, resume hand-off from the predecessor, the trial's starting record
        (``device``: what it trains on, ``cuda:1`` or ``cpu``; the next pane's GPU choice counts it)."""
        workdir = self.trial_dir(trial.number)
        if workdir.exists():  # numbers are unique within a study: an earlier start of this very attempt
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        trials = self.study.get_trials(deepcopy=False)  # Optuna 5's live Trial has no system attrs; its frozen one does
        run = TrialRun(RecordedTrial(trial), config, workdir, choose_threads(self.threads,
                                                                            panes_on_host=self.panes_on_host(trials)),
                       files=self.files, console=self.console, kernel=self.spec.kernel,
                       # load that appears mid-trial cuts the threads at the next epoch (search.worker.threads)
                       epoch_threads=lambda: choose_threads(self.threads, panes_on_host=self.panes_on_host()))
        self.current_run = run
        history = trials[trial.number].system_attrs.get("retry_history") or []
        predecessors = [trials[n] for n in reversed(history)]
        if self.spec.folds is None:
            run.resumed_from_epoch = resume(run, predecessors, self.trial_dir)
        else:
            run.folds = self.spec.folds
            run.fold, epoch = resume_folds(run, predecessors, lambda k: self.spec.fold_config(config, k))
            run.resumed_from_epoch = run.fold * config.optim.epochs + epoch
        for key, value in {"config": config.to_json(), "run_dir": str(workdir), "worker_id": self.worker_id,
                           "feature_cache_key": feature_cache_key(config.features), "threads": run.threads,
                           "resumed_from_epoch": run.resumed_from_epoch, "device": device,
                           **({"folds": run.folds} if run.folds else {})}.items():
            run.trial.set_user_attr(key, value)
        try:
            yield run
        except optuna.TrialPruned:  # its reason is the worker's (``_attempt``), like every outcome's
            run.register_files()
            raise
        except NonFiniteLossError:  # diverged within an epoch: the epochs before it count
            run.trial.set_user_attr("epochs_run", run.epochs_done)
            run.register_files()
            raise
        else:
            run.register_files()
        finally:
            run.trial.set_user_attr("wall_time", round(time.perf_counter() - run.started, 3))

    def trial_dir(self, number: int) -> Path:
        """The trial's working folder on this machine (the artifact store holds what other machines need)."""
        return self.runs_dir / f"trial-{number}"

    def panes_on_host(self, trials: list[FrozenTrial] | None = None) -> int:
        """Panes of this study on this host running a trial now, this one included (``trials``: just read)."""
        running = [t for t in (self.study.get_trials(deepcopy=False) if trials is None else trials)
                   if t.state == TrialState.RUNNING]
        return 1 + len({t.user_attrs["worker_id"] for t in on_host(running, self.worker_id)} - {self.worker_id})

    def _after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback once a trial is told: print it, retry a failure, apply checkpoint retention."""
        self.current = None
        trials = study.get_trials(deepcopy=False)  # read once: the line, the note, retries and retention use it
        self.console.trial_done(study, trial, trials)
        notes.save(study, notes.study_note(study, spec_epochs=self.spec.steps, trials=trials))
        if trial.state == TrialState.FAIL:
            self._requeue(trial, str(trial.user_attrs.get("reason", BY_REASON["error"].reason)), trials)
        elif trial.state in FINISHED:
            for number in [*trial.system_attrs.get("retry_history", []), trial.number]:
                self._drop(number, "last.pth")
            self._retain_top_weights(trials)
            queued = queue_stacked_points(study, self.spec, trials)  # [startup] stack: what helped, stacked
            if queued:
                self.console.message("queued: " + "; ".join(queued))

    def _requeue(self, trial: FrozenTrial, reason: str, trials: list[FrozenTrial] | None = None) -> None:
        outcome = requeue(self.study, trial, reason=reason, max_retry=self.max_retry, trials=trials)
        if isinstance(outcome, Dropped):
            self.console.message(f"#{trial.number} {outcome}")
        elif outcome is not None:
            self.console.message(f"#{trial.number} queued for retry as #{outcome} ({reason.split(':')[0]}; it "
                                 f"resumes from its last epoch)")

    def _storage_failed(self, failure: BaseException) -> str:
        """The one line for a storage that failed a write; on a full disk the reserve is freed first so that
        the running trial can still be failed and queued for retry."""
        text = storage_failure_text(failure)
        full = "full" in text.lower()
        freed = full and self.reserve is not None and self.reserve.release()
        where = f"the study database {sqlite_database(self.handle.url)}" if self.reserve is not None else "the storage"
        number = self.current.number if self.current is not None else None
        try:
            if self.current is not None and full:
                self.current.set_user_attr("reason", f"disk full: {where} ({text})")
            self._abandon_current("disk full" if full else "storage")
            queued = number is not None
        except Exception as again:
            if storage_failure(again) is None:
                raise
            queued = False
        if number is None:
            then = ""
        elif queued and freed:
            then = f"; freed its {DiskReserve.SIZE >> 20} MiB reserve ({self.reserve.path.name}) to queue trial {number} for retry"
        elif queued:
            then = f"; trial {number} is queued for retry"
        else:
            then = f"; trial {number} is retried by the next worker after the heartbeat grace period"
        if full:
            return f"disk full: {where} cannot be written ({text}){then}; free space and start the worker again"
        return f"storage unreachable or failing: {text}{then}"

    def _abandon_current(self, reason: str) -> None:
        """Fail the running trial (if the interrupt landed outside the objective) with ``reason`` unless it
        recorded its own, and queue its retry."""
        if self.current is None:
            return
        number = self.current.number
        trials = self.study.get_trials(deepcopy=False)
        if trials[number].state == TrialState.RUNNING:
            if "reason" not in trials[number].user_attrs:  # else set when it stopped
                self.current.set_user_attr("reason", reason)
            self.study.tell(number, state=TrialState.FAIL)
            trials = self.study.get_trials(deepcopy=False)
        frozen = trials[number]
        if frozen.state == TrialState.FAIL:
            self.console.trial_done(self.study, frozen)
            self._requeue(frozen, str(frozen.user_attrs.get("reason", reason)), trials)
        self.current = None

    def _retain_top_weights(self, trials: list[FrozenTrial]) -> None:
        """Keep weights only for the spec's ``keep_weights`` best feasible COMPLETE trials (and best, baseline)."""
        keep = trials_keeping_weights(self.study, self.spec.keep_weights, trials)
        for trial in trials:
            if trial.state in FINISHED and trial.number not in keep and trial.number not in self.evicted:
                self._drop(trial.number, "best.pth")
                self.evicted.add(trial.number)

    def _drop(self, number: int, name: str) -> None:
        """Remove a trial's ``name`` (``last.pth``, ``best.pth``), a cross-validated trial's for every fold too."""
        self.files.remove(number, name)
        (self.trial_dir(number) / name).unlink(missing_ok=True)
        for fold in range(self.spec.folds or 0):
            self.files.remove(number, fold_file(fold, name))
            (self.trial_dir(number) / f"fold-{fold}" / name).unlink(missing_ok=True)


def _stop_line(reason: str) -> str:
    """The one line a worker stops with after a trial failed for ``reason`` (a data error or a full disk)."""
    if reason.startswith("disk full: "):
        return (f"disk full: no space left for {reason.removeprefix('disk full: ')}; free space and start the "
                f"worker again (the trial is queued for retry)")
    return reason
