"""``python -m search.panes --study NAME --trials N``: the whole box's search in one tmux session.

    python -m search.panes --study fat2019 --trials 200 --data /data/fat2019     # a worker per GPU
    python -m search.panes --study demo --trials 20 --panes 2                     # a box without a GPU
    python -m search.panes --study fat2019-r2 --from fat2019 --trials 100         # the next round (search.run --from)

Window ``workers``: one ``python -m search.run`` per pane, pinned to its GPU with ``--device cuda:N``
(``--per-gpu`` workers per GPU, ``--gpus`` which ones), or on a box where torch sees no GPU, ``--panes`` CPU
workers that split the cores (``--threads``). Window ``watch``: the dashboard, TensorBoard and
``search.status`` (``--no-watch`` leaves it out). Every pane runs this Python in this folder with the same study
flags, so all of them see one study; a pane whose command ends stays open on its last lines. Started again
while the session runs the study, it attaches to it. Stop it all with ``tmux kill-session -t NAME``: each
worker fails its running trial as interrupted and queues the retry (exit 129, SIGHUP).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

import optuna

from search._cli import UserError, add_data_argument, add_study_arguments, run_command
from search.study.inherit import Source, inherited
from search.study.join import add_round_arguments, join_study, previous_round
from search.study.locate import StudyLocation, locate_args
from search.study.record import FINISHED, redact
from search.study.storage import open_storage
from search.views.tunnel import tunnel_line
from search.worker.console import eta_line
from search.worker.tmux import (
    TMUX_MISSING,
    WATCH_WINDOW,
    WORKERS_WINDOW,
    PanesError,
    TmuxServer,
    Window,
    default_session_name,
    parse_gpus,
    passed_environment,
    tmux_words,
    watch_panes,
    worker_panes,
    worker_places,
)

DEFAULT_PER_GPU = 1
DEFAULT_CPU_PANES = 2
# Worker flags handed to every pane as given (None: not given, so the worker's own default applies).
VALUED_WORKER_FLAGS = ("timeout", "heartbeat", "grace", "max_retry", "device_bank_share")


def cuda_device_count() -> int:
    import torch  # here only: seconds to import, not needed for --help or an argument error

    return torch.cuda.device_count()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search.panes", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    add_study_arguments(parser)
    parser.add_argument("--trials", type=int, required=True,
                        help="the study's total of its own finished trials (all panes; --from's inherited ones do not "
                             "count)")
    add_data_argument(parser, passed_on=True)
    add_round_arguments(parser)
    parser.add_argument("--gpus", default="all", metavar="all|0,1,...",
                        help="the GPUs to start workers on: all, or indexes like 0,1 (default all)")
    parser.add_argument("--per-gpu", type=int, metavar="K",
                        help=f"workers per GPU (default {DEFAULT_PER_GPU}: a worker keeps its feature banks on its GPU "
                             "and trains from them, so one worker is GPU-bound; a second one time-slices the GPU, "
                             "holds its own CUDA context and banks, and gains only the first one's pauses "
                             "(validation, checkpoints); try 2 where nvidia-smi shows the GPU idle with 1 - no "
                             "GPU measurement of it is recorded yet)")
    parser.add_argument("--panes", type=int, metavar="P", help=f"CPU workers on a box where torch sees no GPU (default "
                                                  f"{DEFAULT_CPU_PANES}; each gets --threads cores/panes)")
    parser.add_argument("--session", help="tmux session name (default: search-<study>)")
    parser.add_argument("-L", "--tmux-socket", help="the tmux server's socket name (tmux -L): a server of its own")
    parser.add_argument("--no-attach", action="store_true",
                        help="make the session and print how to attach (the default when stdout is not a terminal)")
    parser.add_argument("--no-watch", action="store_true", help="no watch window (dashboard, TensorBoard, status)")
    parser.add_argument("--dashboard-port", type=int, default=8080, help="the dashboard's port (default 8080)")
    parser.add_argument("--tensorboard-port", type=int, default=6006, help="TensorBoard's port (default 6006)")
    worker = parser.add_argument_group("worker flags, passed to every worker (see python -m search.run --help)")
    worker.add_argument("--threads", type=int, help="torch CPU threads per worker (default on CPU: cores/panes)")
    worker.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    worker.add_argument("--heartbeat", type=int, help="seconds between a running trial's heartbeats")
    worker.add_argument("--grace", type=int, help="seconds without heartbeat after which a trial is retried")
    worker.add_argument("--max-retry", type=int, help="attempts of one trial that may fail without progress")
    worker.add_argument("--device-bank-share", type=float, help="share of the free GPU memory the banks may take")
    worker.add_argument("--force", action="store_true", help="join a study whose stored spec differs")
    return parser


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("trials", "per_gpu", "panes", "threads", "heartbeat", "grace"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} {value}: expected a positive integer")
    for name in ("dashboard_port", "tensorboard_port"):
        if not 1 <= getattr(args, name) <= 65535:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected a port 1..65535")
    if args.device_bank_share is not None and not 0.0 <= args.device_bank_share <= 1.0:
        parser.error(f"--device-bank-share {args.device_bank_share}: expected a fraction between 0 and 1")
    if args.session is not None and any(c in args.session for c in ".:"):
        parser.error(f"--session {args.session}: tmux session names cannot contain '.' or ':'")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: make (or find) the session, print how to reach it, attach when on a terminal."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    return run_command(lambda: _panes(args), writes={"--studies-dir": args.studies_dir, "--artifacts": args.artifacts},
                       reads={"--data": args.data})


def _panes(args: argparse.Namespace) -> int:
    server = TmuxServer(args.tmux_socket)
    if not server.installed():
        raise PanesError(TMUX_MISSING)
    gpus = parse_gpus(args.gpus, cuda_device_count())
    _check_mode_flags(args, gpus)
    location = locate_args(args, spec_required=True)
    session = args.session or default_session_name(location.name)
    study = (location.name, location.storage_url())
    running = server.session_study(session)
    if running is None:
        joined = _join(location, study[1], force=args.force, inherit_from=previous_round(args, location))
        _check_trials_left(joined, args.trials)
        windows = _windows(args, location, gpus)
        server.create(session, windows, cwd=os.getcwd(), env=passed_environment(os.environ), study=study)
        lines = _created_lines(session, location, windows, args)
        lines.insert(1, f"  {eta_line(joined, args.trials, len(windows[0].panes))}")
    elif running == study:
        lines = [f"tmux session {session} already runs study {location.name}"]
    else:
        raise PanesError(_taken_line(session, running, study, tmux_words(args.tmux_socket)))
    tmux = " ".join(tmux_words(args.tmux_socket))
    print("\n".join([*lines, f"  attach: {tmux} attach -t {session}   (detach: Ctrl-b d)",
                      f"  stop:   {tmux} kill-session -t {session}   (each worker fails its running trial as "
                      f"interrupted and queues its retry)"]), flush=True)
    if not args.no_attach and sys.stdout.isatty():
        server.attach(session)
    return 0


def _join(location: StudyLocation, storage_url: str, *, force: bool, inherit_from: Source | None) -> optuna.Study:
    """Create (or join) the study before any pane starts: the dashboard and the status pane find it at once,
    and a spec that differs from the stored one, or a storage that cannot be reached, is refused here in one
    line instead of in every pane."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the panes say what matters; no "study created" log
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return join_study(open_storage(storage_url), location.spec, force=force, inherit_from=inherit_from)


def _check_trials_left(study: optuna.Study, trials: int) -> None:
    """Refuse before any pane starts when the study already has its ``--trials``: its workers would exit at once
    while the dashboard and TensorBoard kept running."""
    own = sum(not inherited(t) for t in study.get_trials(deepcopy=False, states=FINISHED))
    if own >= trials:
        raise UserError(f"study {study.study_name} already has {own} finished trials of its own, and --trials {trials} "
                        f"is the study's total: nothing to start (pass --trials above {own} to continue it)")


def _check_mode_flags(args: argparse.Namespace, gpus: list[int]) -> None:
    """--per-gpu is for GPU workers, --panes for CPU ones: the other one would be ignored, so it is refused."""
    if gpus and args.panes is not None:
        raise PanesError(f"--panes {args.panes}: this box has GPUs, so workers are per GPU: use --per-gpu K "
                         f"(or hide the GPUs for CPU workers: CUDA_VISIBLE_DEVICES= python -m search.panes ...)")
    if not gpus and args.per_gpu is not None:
        raise PanesError(f"--per-gpu {args.per_gpu}: torch sees no GPU on this box; CPU workers are --panes P")


def _windows(args: argparse.Namespace, location: StudyLocation, gpus: list[int]) -> list[Window]:
    python = sys.executable
    study_flags = ["--study", args.study, "--studies-dir", str(Path(args.studies_dir).resolve()),
                   *(["--storage", args.storage] if args.storage else []),
                   *(["--artifacts", args.artifacts] if args.artifacts else [])]
    places = worker_places(gpus, per_gpu=args.per_gpu or DEFAULT_PER_GPU, panes=args.panes or DEFAULT_CPU_PANES,
                           cores=_cores(), threads=args.threads)
    windows = [Window(WORKERS_WINDOW, worker_panes(places, python=python, study_flags=study_flags,
                                                   trials=args.trials, worker_flags=_worker_flags(args)))]
    if not args.no_watch:
        windows.append(Window(WATCH_WINDOW, watch_panes(
            python=python, study_flags=study_flags, runs_dir=str(location.folder.resolve() / "runs"),
            dashboard_port=args.dashboard_port, tensorboard_port=args.tensorboard_port)))
    return windows


def _worker_flags(args: argparse.Namespace) -> list[str]:
    """--data and the worker flags the user gave, for every worker (--threads is the plan's: worker_places)."""
    flags = ["--data", args.data] if args.data else []
    for name in VALUED_WORKER_FLAGS:
        if getattr(args, name) is not None:
            flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return flags + (["--force"] if args.force else [])


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _created_lines(session: str, location: StudyLocation, windows: list[Window],
                   args: argparse.Namespace) -> list[str]:
    lines = [f"tmux session {session}: study {location.name} ({redact(location.storage_url())})"]
    lines += [f"  window {w.name}: {', '.join(p.title for p in w.panes)}" for w in windows]
    if not args.no_watch:
        lines += [f"  dashboard:   http://localhost:{args.dashboard_port}   from your laptop first: "
                  f"{tunnel_line(args.dashboard_port)}",
                  f"  TensorBoard: http://localhost:{args.tensorboard_port}   from your laptop first: "
                  f"{tunnel_line(args.tensorboard_port)}"]
    return lines


def _taken_line(session: str, running: tuple[str, str], study: tuple[str, str], tmux: list[str]) -> str:
    """Why an existing session of that name is not this study's."""
    name, storage = running
    if not name:
        return f"tmux session {session} exists and was not made by search.panes; pick another --session NAME"
    other = f"study {name}" if name != study[0] else f"study {name} on another storage ({redact(storage)})"
    return (f"tmux session {session} already runs {other}; pick another --session NAME or stop it: "
            f"{' '.join(tmux)} kill-session -t {session}")


if __name__ == "__main__":
    sys.exit(main())
