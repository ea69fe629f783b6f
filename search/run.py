"""python -m search.run: one search worker; start one per tmux pane, all on the same study.

    python -m search.run --study demo --trials 20                    # built-in demo data, CPU is fine
    python -m search.run --study fat2019 --trials 50 --data /data/fat2019 --device cuda

``--trials N`` is the study's total of finished (complete + pruned) trials across all workers. Exit codes:
0 done, 130 interrupted (Ctrl-C; a second Ctrl-C exits at once), 2 a problem in the spec/arguments/data.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.console import FINISHED, Console
from search.objective import Objective, TrialFailed
from search.spec import DEMO, StudySpec, find_spec, load_spec, spec_differences
from search.storage import (DEFAULT_MAX_RETRY, RetryFailedTrial, add_study_arguments, create_or_load_study,
                            default_storage_url, open_storage)
from trainer import DataError
from trainer.config import ConfigError
from trainer.inference import resolve_device
from trainer.memory import check_fits, largest_data_config, plan_data_memory

SPEC_WAIT_S = 30.0  # how long a joining worker waits for the creator to store the spec
_INTERRUPTED = threading.Event()  # set by the first Ctrl-C


class UsageError(Exception):
    """A problem the user fixes (arguments, spec mismatch, data location): printed as one line, exit 2."""


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    _quiet_optuna()
    try:
        return _run(args)
    except (UsageError, ConfigError, DataError) as exc:  # SpecError is a ConfigError
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m search.run", description=__doc__.split("\n")[0])
    add_study_arguments(parser)
    parser.add_argument("--trials", type=int, help="stop once the study has this many finished trials (all workers)")
    parser.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    parser.add_argument("--data", help="FAT2019 data folder or 'demo' (default: $FAT2019_DATA, then the spec's [study] data)")
    parser.add_argument("--device", help="auto|cpu|cuda|mps (default: the config's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    parser.add_argument("--seed", type=int, help="sampler seed (default: the spec's); mixed with the worker's pid")
    parser.add_argument("--force", action="store_true", help="join a study whose stored spec differs from this one")
    parser.add_argument("--heartbeat", type=int, default=60, help="seconds between a running trial's heartbeats")
    parser.add_argument("--grace", type=int, default=180,
                        help="seconds without heartbeat after which a trial counts as dead and is retried")
    parser.add_argument("--max-retry", type=int, default=DEFAULT_MAX_RETRY, help="retries of one dead/interrupted trial")
    args = parser.parse_args(argv)
    for name in ("trials", "threads", "heartbeat", "grace"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} {value}: expected a positive integer")
    return args


def _run(args: argparse.Namespace) -> int:
    spec = load_spec(find_spec(args.study, args.studies_dir))
    if args.device is not None:
        resolve_device(args.device)  # a pane asked for a GPU it cannot see fails now, not at its first trial
    study_dir = (args.studies_dir / spec.name).resolve()
    data_dir = _data_dir(spec, args.data)
    _check_data_memory(spec, data_dir)
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    url = args.storage or default_storage_url(spec.name, args.studies_dir)
    storage = open_storage(url, heartbeat_interval=args.heartbeat, grace_period=args.grace, max_retry=args.max_retry)
    seed = args.seed if args.seed is not None else spec.sampler.get("seed")
    sampler = spec.make_sampler(None if seed is None else (seed + zlib.crc32(worker_id.encode())) % 2**32)
    study = join_study(storage, spec, sampler=sampler, force=args.force)

    console = Console(baseline=spec.baseline_params(), worker_id=worker_id)
    objective = Objective(spec, data_dir, trials_dir=study_dir / "trials", tensorboard_dir=study_dir / "tb",
                          device=args.device, threads=args.threads, worker_id=worker_id, on_epoch_line=console.epoch,
                          interrupted=_INTERRUPTED.is_set)
    console.message(f"worker {worker_id} joined study {spec.name} ({_redact(url)}), data {data_dir or DEMO}, "
                    f"{_count_finished(study)} finished trials so far")
    signal.signal(signal.SIGINT, _first_interrupt)
    started = time.monotonic()
    try:
        while True:
            if _INTERRUPTED.is_set():
                raise KeyboardInterrupt
            if args.trials is not None and _count_finished(study) >= args.trials:
                reason = f"done: the study has {args.trials} finished trials"
                break
            if args.timeout is not None and time.monotonic() - started >= args.timeout:
                reason = f"timeout {args.timeout:g}s reached"
                break
            study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[console.trial_done],
                           gc_after_trial=True)
    except KeyboardInterrupt:
        for number in _requeue_interrupted(study, worker_id, storage):
            console.states["FAIL"] = console.states.get("FAIL", 0) + 1
            console.message(f"#{number} FAIL     interrupted; queued for retry (it resumes from its last epoch)")
        console.summary(study, "interrupted")
        return 130
    console.summary(study, reason)
    return 0


def join_study(storage: optuna.storages.BaseStorage, spec: StudySpec, *,
               sampler: optuna.samplers.BaseSampler | None = None, force: bool = False) -> optuna.Study:
    """Create the study or join it; refuse (UsageError) when its stored spec differs, unless ``force``.

    The creator enqueues the baseline and only then stores the spec, so a joiner that sees the spec
    also sees the baseline as trial 0: it is enqueued exactly once however many workers start together.
    """
    def setup(study: optuna.Study) -> None:
        study.enqueue_trial(spec.baseline_params(), user_attrs={"baseline": True})
        study.set_user_attr("spec", spec.canonical())
        study.set_user_attr("spec_fingerprint", spec.fingerprint())

    study, created = create_or_load_study(storage, spec.name, direction="maximize", sampler=sampler,
                                          pruner=spec.make_pruner(), on_create=setup)
    if created:
        return study
    deadline = time.monotonic() + SPEC_WAIT_S
    while "spec_fingerprint" not in study.user_attrs:
        if time.monotonic() > deadline:  # its creator died before storing the spec: adopt the study
            if not any(t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)):
                setup(study)
            else:
                study.set_user_attr("spec", spec.canonical())
                study.set_user_attr("spec_fingerprint", spec.fingerprint())
            return study
        time.sleep(0.2)
    attrs = study.user_attrs
    if attrs["spec_fingerprint"] != spec.fingerprint():
        differences = spec_differences(attrs.get("spec", {}), spec.canonical())
        message = (f"{spec.path} differs from the spec study {spec.name!r} was started with: "
                   + "; ".join(differences[:8]) + (f"; and {len(differences) - 8} more" if len(differences) > 8 else ""))
        if not force:
            raise UsageError(message + " (use --force to join anyway, or another [study] name)")
        print(f"warning: {message}; joining anyway (--force)", file=sys.stderr)
    return study


def _data_dir(spec: StudySpec, arg: str | None) -> Path | None:
    location = spec.data_location(arg)
    if location == DEMO:
        from trainer.synth import ensure_demo_data
        return ensure_demo_data(scale=spec.demo_scale)
    path = Path(location).expanduser()
    if not (path / "train_curated.csv").is_file():
        raise UsageError(f"data location {str(path)!r} has no train_curated.csv; expected the unzipped FAT2019 "
                         f"folder (from --data, $FAT2019_DATA or [study] data in {spec.path})")
    return path


def _check_data_memory(spec: StudySpec, data_dir: Path) -> None:
    """Print what the largest data a trial of this study can ask for takes; refuse when this box cannot hold it.

    Panes on one box share the banks of equal features (one memory-mapped copy), so one pane's plan is the
    box's, give or take a little per pane.
    """
    candidates = {p.key: getattr(p.distribution, "choices", None) or (p.distribution.low, p.distribution.high)
                  for p in spec.space}
    plan = plan_data_memory(largest_data_config(spec.base_config(), candidates), data_dir)
    print(f"{plan.describe()} (the largest data a trial of this study can ask for)", file=sys.stderr)
    refusal = check_fits(plan, panes=1)
    if refusal is not None:
        raise UsageError(refusal)


def _count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _requeue_interrupted(study: optuna.Study, worker_id: str, storage: Any) -> list[int]:
    """Mark this worker's running trial FAILED ("interrupted") and queue its retry; returns their numbers."""
    retry = storage.get_heartbeat_stale_trial_callback() or RetryFailedTrial()
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        if trial.user_attrs.get("worker_id") != worker_id:
            continue
        if trial.state == TrialState.RUNNING:  # the interrupt landed outside the objective
            study.tell(trial.number, state=TrialState.FAIL)
        elif trial.user_attrs.get("reason") != "interrupted":
            continue
        already = any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False))
        if not already:
            retry(study, study.get_trials(deepcopy=False)[trial.number], reason="interrupted")
            requeued.append(trial.number)
    return requeued


def _first_interrupt(signum: int, frame: Any) -> None:
    # Raised wherever the main thread is; if that is a spot that swallows exceptions (a weakref
    # callback, __del__), the flag still stops the trial at its next epoch.
    _INTERRUPTED.set()
    signal.signal(signal.SIGINT, _second_interrupt)
    print("\ninterrupted: marking the running trial for retry (Ctrl-C again to exit at once)", file=sys.stderr)
    raise KeyboardInterrupt


def _second_interrupt(signum: int, frame: Any) -> None:
    print("exiting at once", file=sys.stderr, flush=True)
    os._exit(130)


def _quiet_optuna() -> None:
    """Optuna's own log lines would duplicate the console's; its experimental warnings are expected here."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _redact(url: str) -> str:
    import sqlalchemy
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    sys.exit(main())
