"""The life of a trial in a worker, in one place: start, heartbeat, interrupt, retry, resume hand-off.

    worker = Worker(handle, spec, files, runs_dir, console, ...)
    exit_code = worker.run(Objective(spec, data_dir, worker), trials=50)

- **start**: a trial trains in ``runs/<study uid>/trial-<n>/``; a retried trial first pulls its
  predecessor's checkpoints from the artifact store (``search.study.artifacts``), so it resumes on any machine;
  an unloadable checkpoint is set aside and the trial starts from epoch 0, saying so.
- **heartbeat**: Optuna's storage heartbeat. A worker that dies stops beating; the next worker fails its
  trial and re-queues it through ``stale_trial_retry`` (``requeue``), the same policy as every other failure.
- **interrupt**: Ctrl-C, SIGTERM or SIGHUP (the pane's terminal closed: ``tmux kill-session``, a dropped SSH;
  left alone under ``nohup``) stops the running trial at once; it is marked FAILED ("interrupted") and its
  retry queued before the worker exits (130 / 143 / 129). A second signal only skips the summary; a
  third exits at once.
- **retry**: ``requeue`` queues a FAILED trial again with its params and checkpoints. Only attempts that
  failed without making progress for a reason that may be the trial's own (out of memory, or a worker that
  died: the kernel's OOM killer) count against ``max_retry``; interruptions, data and disk problems never do.
  Impossible configs are never retried.
- **failures**: NaN -> PRUNED ("diverged"); out of memory / impossible config -> FAILED with the reason and
  the worker goes on; what would fail every later trial too (data, disk full, storage, a changed spec
  file) fails the trial, queues its retry and stops the worker with one line (exit 2). A SQLite database
  on a full disk still takes those writes: the worker frees the database's reserve file first
  (``storage.DiskReserve``).
- **exact totals**: with ``--trials N`` a worker counts the study's trials and starts its own under the
  study's slot lock (``search.worker.slots``), so panes racing for the last slot never overshoot N.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import gc
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import optuna
import sqlalchemy
import torch
from optuna.trial import FrozenTrial, TrialState

from search.views import notes
from search.study.artifacts import WORKING_FILES, TrialFiles
from search.worker.console import Console
from search.worker.failures import DEFAULT_MAX_RETRY, Dropped, is_out_of_memory, requeue
from search.study.inherit import inherited
from search.worker.slots import SlotLock
from search.spec import SpecError, StudySpec, load_spec
from search.study.storage import DiskReserve, sqlite_database, storage_failure, storage_failure_text
from search.study.record import FINISHED, StudyHandle, on_host, trials_keeping_weights
from search.worker.trial_run import Interrupted, StopWorker, TrialFailed, TrialRun, choose_threads
from trainer import (CheckpointError, ConfigError, DataError, NonFiniteLossError, TrainConfig, feature_cache_key,
                     load_checkpoint)

WAIT_POLL_S = 2.0  # how often a worker waiting for other workers' trials looks again
# A trial's worker records itself (user attr worker_id) well within a second of taking it; an unclaimed RUNNING
# trial is failed after the heartbeat grace period, and never sooner than this (a stalled box or a skewed clock
# must not fail a live trial).
UNCLAIMED_MIN_S = 30.0


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
    outcome = requeue(study, trial, reason="heartbeat", max_retry=max_retry)
    if isinstance(outcome, Dropped):
        print(f"#{trial.number} {what} and is {outcome}", flush=True)
    elif outcome is not None:
        print(f"#{trial.number} {what}: queued for retry as #{outcome}", flush=True)


# -- the worker --------------------------------------------------------------------------------------
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
    current: optuna.Trial | None = None
    current_run: TrialRun | None = None  # the running attempt, once ``start`` prepared it
    objective: Callable[[optuna.Trial], float] | None = None  # given to ``run``
    stop: StopWorker | None = None
    signals: int = 0
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
    def run(self, objective: Callable[[optuna.Trial], float], *, trials: int | None = None,
            timeout: float | None = None) -> int:
        """Take trials until done; returns the exit status (0 done, 130/143 interrupted, 2 stopped)."""
        self.objective = objective
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.reserve is not None:
            self.reserve.ensure()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _stop_signals()}
        # What is alive now (torch, Optuna, the study) lives as long as the worker. Frozen out of the collector,
        # the collection Optuna runs after every trial scans only that trial's objects: a full collection after
        # the worker's imports took 0.22 s here, 0.0 s frozen. Thawed on the way out, for a caller that goes on.
        gc.collect()
        gc.freeze()
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
            with _signals_blocked():
                self._abandon_current("interrupted")
            if self.signals < 2:
                self.console.summary(self.study, "interrupted")
            return 128 + signum
        except StopWorker as exc:
            with _signals_blocked():
                self._abandon_current(str(exc).split(":")[0])
            self.console.error(str(exc))
            return exc.code
        except Exception as exc:
            # Optuna's loop re-raises a failed write of the trial's state as its own AssertionError; the
            # storage error is in the chain either way.
            failure = storage_failure(exc)
            if failure is None:
                raise
            with _signals_blocked():
                self.console.error(self._storage_failed(failure))
            return 2
        finally:
            self.slots.release()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            gc.unfreeze()

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
        """The objective, with every known failure turned into the trial's state and ``reason``."""
        self.current, self.current_run = trial, None
        self.slots.release()  # the trial is RUNNING: it counts, so the next worker may look
        try:
            value = self.objective(trial)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            raise  # nothing more can be recorded: ``run`` says so in one line
        except optuna.TrialPruned:
            self._note(trial, "PRUNED")
            raise
        except NonFiniteLossError as exc:
            self._end(trial, f"diverged: {exc}", "PRUNED")
            raise optuna.TrialPruned(str(exc)) from None
        except ConfigError as exc:  # includes an impossible combination of the suggested params
            self._end(trial, f"config: {exc}")
            raise TrialFailed(str(exc)) from None
        except CheckpointError as exc:
            self._end(trial, f"checkpoint: {exc}")
            raise TrialFailed(str(exc)) from None
        except DataError as exc:
            self._end(trial, f"data: {exc}")
            self.stop = StopWorker(f"data: {exc}")
            raise TrialFailed(str(exc)) from None
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            # A copy (shutil, into the artifact store) names its source first and the full destination second;
            # torch.save and buffered writes raise ENOSPC without a file name: name where the trial writes
            where = exc.filename2 or exc.filename or (f"the files of trial {trial.number} (its folder {self.trial_dir(trial.number)}, "
                                     f"the feature cache or the artifact store)")
            self._end(trial, f"disk full: {where}")
            self.stop = StopWorker(f"disk full: no space left for {where}; free space and start the worker "
                                   f"again (the trial is queued for retry)")
            raise TrialFailed(str(exc)) from None
        except KeyboardInterrupt:
            trial.set_user_attr("reason", "interrupted")
            raise
        except Exception as exc:
            if not is_out_of_memory(exc):
                self._end(trial, f"error: {type(exc).__name__}: {str(exc)[:200]}")
                raise  # a bug: it surfaces with its traceback
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._end(trial, f"out of memory: {str(exc).splitlines()[0][:200]}")
            raise TrialFailed(str(exc)) from None
        self._note(trial, f"COMPLETE, lwlrap {value:.4f}")
        return value

    def _end(self, trial: optuna.Trial, reason: str, state: str = "FAILED") -> None:
        trial.set_user_attr("reason", reason)
        self._note(trial, state)

    def _note(self, trial: optuna.Trial, outcome: str) -> None:
        """The trial's dashboard note, written while the trial can still take it."""
        run = self.current_run if self.current_run is not None and self.current_run.trial is trial else None
        config = run.config if run is not None else None  # None: its params made no valid config
        notes.save(trial, notes.trial_note(trial.number, outcome, config, self.spec.base_config(), trial.user_attrs))

    @contextlib.contextmanager
    def start(self, trial: optuna.Trial, config: TrainConfig, *, device: str) -> Iterator[TrialRun]:
        """Prepare an attempt: folder, resume hand-off from the predecessor, the trial's starting record
        (``device``: what it trains on, ``cuda:1`` or ``cpu``; the next pane's GPU choice counts it)."""
        workdir = self.trial_dir(trial.number)
        if workdir.exists():  # numbers are unique within a study: an earlier start of this very attempt
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        run = TrialRun(self, trial, config, workdir, threads=choose_threads(self.threads,
                                                                            panes_on_host=self.panes_on_host()))
        self.current_run = run
        run.resumed_from_epoch = self._resume_hand_off(trial, config, workdir)
        run.first_epoch = run.resumed_from_epoch + 1
        for key, value in {"config": config.to_json(), "run_dir": str(workdir), "worker_id": self.worker_id,
                           "feature_cache_key": feature_cache_key(config.features), "threads": run.threads,
                           "resumed_from_epoch": run.resumed_from_epoch, "device": device}.items():
            trial.set_user_attr(key, value)
        try:
            yield run
        except optuna.TrialPruned as exc:  # a divergence's reason is the worker's (``_attempt``)
            trial.set_user_attr("reason", str(exc) or "pruned")
            run.register_files()
            raise
        except NonFiniteLossError:  # diverged within an epoch: the epochs before it count
            trial.set_user_attr("epochs_run", run.epochs_done)
            run.register_files()
            raise
        else:
            run.register_files()
        finally:
            trial.set_user_attr("wall_time", round(time.perf_counter() - run.started, 3))

    def _resume_hand_off(self, trial: optuna.Trial, config: TrainConfig, workdir: Path) -> int:
        """Pull the newest predecessor attempt's files into ``workdir``; returns the epoch it resumes after."""
        # Optuna 5's live Trial has no system attrs; its frozen record does.
        history = self.study.get_trials(deepcopy=False)[trial.number].system_attrs.get("retry_history") or []
        for number in reversed(history):
            if self.files.pull(number, "last.pth", workdir) is None:
                continue
            try:
                checkpoint = load_checkpoint(workdir / "last.pth")
                if TrainConfig.from_json(checkpoint["config"]) != config:
                    raise CheckpointError("it belongs to another config")
                epoch = int(checkpoint["epoch"])
            except (CheckpointError, ConfigError, KeyError, TypeError, ValueError) as exc:
                (workdir / "last.pth").rename(workdir / "last.pth.unloadable")
                note = f"last.pth of trial {number} could not be loaded ({exc}); starting from epoch 0"
                trial.set_user_attr("resume_note", note[:300])
                self.console.message(f"#{trial.number} {note}")
                return 0
            for name in WORKING_FILES:
                if name != "last.pth":
                    self.files.pull(number, name, workdir)
            local_tb = self.trial_dir(number) / "tb"
            if local_tb.is_dir():  # the curves of the earlier attempt, when it ran on this machine
                shutil.copytree(local_tb, workdir / "tb", dirs_exist_ok=True)
            # The curve of the epochs this attempt keeps, and no later one: a resume from an older checkpoint
            # must not show (or let the pruner see) epochs it will train again.
            kept = {step: value for step, value in
                    self.study.get_trials(deepcopy=False)[number].intermediate_values.items() if step <= epoch}
            if epoch >= 1:  # killed between handing off this epoch's checkpoint and reporting it: the checkpoint
                kept.setdefault(epoch, float(checkpoint["best_lwlrap"]))  # holds the running best it would report
            for step in sorted(kept):
                trial.report(kept[step], step)
            trial.set_user_attr("resumed_from_trial", number)
            self.console.message(f"#{trial.number} resumes trial {number} after epoch {epoch}")
            return epoch
        return 0

    def trial_dir(self, number: int) -> Path:
        """The trial's working folder on this machine (the artifact store holds what other machines need)."""
        return self.runs_dir / f"trial-{number}"

    def panes_on_host(self) -> int:
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return 1 + len({t.user_attrs["worker_id"] for t in on_host(running, self.worker_id)} - {self.worker_id})

    def _after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback once a trial is told: print it, retry a failure, apply checkpoint retention."""
        self.current = None
        self.console.trial_done(study, trial)
        notes.save(study, notes.study_note(study, spec_epochs=self.spec.epochs))
        if trial.state == TrialState.FAIL:
            self._requeue(trial, str(trial.user_attrs.get("reason", "error")))
        elif trial.state in FINISHED:
            for number in [*trial.system_attrs.get("retry_history", []), trial.number]:
                self._drop(number, "last.pth")
            self._retain_top_weights()

    def _requeue(self, trial: FrozenTrial, reason: str) -> None:
        outcome = requeue(self.study, trial, reason=reason, max_retry=self.max_retry)
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
        """Fail the running trial (if the interrupt landed outside the objective) and queue its retry."""
        if self.current is None:
            return
        number = self.current.number
        frozen = self.study.get_trials(deepcopy=False)[number]
        if frozen.state == TrialState.RUNNING:
            self.study.tell(number, state=TrialState.FAIL)  # its reason was set when it stopped, if it could be
            frozen = self.study.get_trials(deepcopy=False)[number]
        if frozen.state == TrialState.FAIL:
            self.console.trial_done(self.study, frozen)
            self._requeue(frozen, str(frozen.user_attrs.get("reason", reason)))
        self.current = None

    def _retain_top_weights(self) -> None:
        """Keep weights only for the spec's ``keep_weights`` best feasible COMPLETE trials (and best, baseline)."""
        keep = trials_keeping_weights(self.study, self.spec.keep_weights)
        for trial in self.study.get_trials(deepcopy=False, states=FINISHED):
            if trial.number not in keep and trial.number not in self.evicted:
                self._drop(trial.number, "best.pth")
                self.evicted.add(trial.number)

    def _drop(self, number: int, name: str) -> None:
        self.files.remove(number, name)
        (self.trial_dir(number) / name).unlink(missing_ok=True)

    # -- signals -------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        if signum == signal.SIGHUP:
            _leave_hung_up_terminal()
        if self.signals == 1:
            print(f"\n{signal.Signals(signum).name}: stopping the running trial and queueing its retry "
                  f"(again: skip the summary; a third time: exit at once)", file=sys.stderr, flush=True)
            raise Interrupted(signum)
        if self.signals == 2:
            print("queueing the retry, then exiting", file=sys.stderr, flush=True)
            return
        os._exit(128 + signum)


def _stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop the worker the same way. SIGHUP is one unless the worker was started to ignore it
    (``nohup``): then it must keep ignoring it and outlive its terminal."""
    hang_up = () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGINT, signal.SIGTERM, *hang_up)


def _leave_hung_up_terminal() -> None:
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
def _signals_blocked() -> Iterator[None]:
    """Hold the stop signals while the running trial is failed and re-queued (a few storage writes), so an
    impatient second Ctrl-C cannot cut that short; they are delivered afterwards."""
    signals = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
