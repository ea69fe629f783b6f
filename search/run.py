"""python -m search.run: one search worker; start one per tmux pane, all on the same study.

    python -m search.run --study demo --trials 20                    # built-in demo data, CPU is fine
    python -m search.run --study fat2019 --trials 50 --data /data/fat2019 --device cuda

``--device cuda`` (and ``auto``, the default config's, on a box where torch sees a GPU) picks the GPU with the
fewest of this study's running trials from this host, then the most free memory (``search.worker.gpu_choice``);
``--device cuda:N`` pins one.

``--trials N`` is the study's total of finished (complete + pruned) trials across all workers; a worker
starts a trial only while finished + running trials are fewer than N, so the study ends at exactly N.
Exit codes: 0 done, 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP (the pane's terminal closed: tmux kill-session, a
dropped SSH; each re-queues the running trial first), 2 a problem to fix (spec, arguments, data, storage,
disk), printed as one line.
"""
from __future__ import annotations

import argparse
import errno
import sys
import threading
import warnings
from pathlib import Path

import optuna

from search._cli import run_command
from search.spec import StudySpec
from search.study.join import UsageError, add_round_arguments, previous_round
from search.study.locate import locate_args
from search.study.record import redact, resolve_data
from search.study.storage import add_study_arguments
from search.worker.build import build_worker
from search.worker.console import eta_line
from search.worker.failures import DEFAULT_MAX_RETRY
from trainer import (
    DEVICE_BANK_SHARE,
    check_fits,
    largest_data_config,
    plan_data_memory,
    remove_stale_temp_files,
    resolve_device,
)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    _quiet_optuna()
    threading.excepthook = quiet_full_disk_in_threads
    return run_command(lambda: _run(args), writes={"--studies-dir": args.studies_dir, "--artifacts": args.artifacts},
                       reads={"--data": args.data})


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m search.run", description=__doc__.split("\n")[0])
    add_study_arguments(parser)
    parser.add_argument("--trials", type=int, help="stop once the study has this many finished trials of its own "
                                                   "(all workers; --from's inherited ones do not count)")
    parser.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    parser.add_argument("--data", help="FAT2019 data folder or a built-in set (default: $FAT2019_DATA, then the "
                                       "spec's [study] data)")
    parser.add_argument("--device", help="auto|cpu|cuda|cuda:N|mps (default: the config's); cuda and auto pick "
                                         "the GPU with the fewest of this study's workers, cuda:N pins one")
    parser.add_argument("--device-bank-share", type=float, default=DEVICE_BANK_SHARE,
                        help="share of the free GPU memory the feature banks may take; a larger bank stays memory-mapped "
                             "on the host and feeds batches through pinned memory (default 0.5)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: the cores shared by this box's "
                                                    "panes, fewer when the box is busy)")
    parser.add_argument("--seed", type=int, help="sampler seed, used as given (default: the spec's, mixed with the "
                                                 "worker's id so panes propose different points)")
    parser.add_argument("--force", action="store_true", help="join a study whose stored spec differs from this one")
    add_round_arguments(parser)
    parser.add_argument("--heartbeat", type=int, default=60, help="seconds between a running trial's heartbeats")
    parser.add_argument("--grace", type=int, default=180,
                        help="seconds without heartbeat after which a trial counts as dead and is retried")
    parser.add_argument("--max-retry", type=int, default=DEFAULT_MAX_RETRY,
                        help="attempts of one trial that may fail for a reason of its own (out of memory) without "
                             "progress before it is dropped; interruptions and dead workers never count")
    args = parser.parse_args(argv)
    if not 0.0 <= args.device_bank_share <= 1.0:
        parser.error(f"--device-bank-share {args.device_bank_share}: expected a fraction between 0 and 1")
    for name in ("trials", "threads", "heartbeat", "grace"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} {value}: expected a positive integer")
    return args


def _run(args: argparse.Namespace) -> int:
    location = locate_args(args, spec_required=True)
    spec = location.spec
    source = previous_round(args, location)  # a missing OLD fails first
    resolve_device(args.device or spec.base_config().device)  # a pane asked for a GPU it cannot see fails now
    data_dir = resolve_data(spec, args.data)
    _check_data_memory(spec, data_dir)
    worker = build_worker(location, data_dir, device=args.device, threads=args.threads, seed=args.seed,
                          force=args.force, inherit_from=source, heartbeat=args.heartbeat, grace=args.grace,
                          max_retry=args.max_retry, device_bank_share=args.device_bank_share)
    leftovers = remove_stale_temp_files(location.folder.resolve())
    worker.console.message(f"worker {worker.worker_id} joined study {spec.name} ({redact(worker.handle.url)}), "
                           f"data {data_dir}, device {worker.device}; "
                           f"{eta_line(worker.study, args.trials, None)}"
                           + (f"; removed {len(leftovers)} temp file(s) of killed writers" if leftovers else ""))
    return worker.run(trials=args.trials, timeout=args.timeout)


def _check_data_memory(spec: StudySpec, data_dir: Path) -> None:
    """Print what the largest data a trial of this study can ask for takes; refuse when this box cannot hold it.

    Panes on one box share the banks of equal features (one memory-mapped copy), so one pane's plan is the
    box's, give or take a little per pane.
    """
    candidates = {p.key: getattr(p.distribution, "choices", None) or (p.distribution.low, p.distribution.high)
                  for p in spec.space}
    plan = plan_data_memory(largest_data_config(spec.base_config(), candidates), data_dir)
    print(f"{plan.describe()} (the largest data a trial of this study can ask for)", flush=True)
    refusal = check_fits(plan, panes=1)
    if refusal is not None:
        raise UsageError(refusal)


def quiet_full_disk_in_threads(hook_args: threading.ExceptHookArgs) -> None:
    """A background writer (TensorBoard's event thread) that hits a full disk would print its traceback; the
    writer hands the error to the training thread, whose worker reports the full disk in one line (exit 2)."""
    if isinstance(hook_args.exc_value, OSError) and hook_args.exc_value.errno == errno.ENOSPC:
        return
    threading.__excepthook__(hook_args)


def _quiet_optuna() -> None:
    """Optuna's own log lines would duplicate the console's; its experimental warnings are expected here."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


if __name__ == "__main__":
    sys.exit(main())
