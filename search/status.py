"""``python -m search.status --study NAME [--watch S]``: the study in the terminal, for SSH without a tunnel.

Trials by state, the running trials with epoch, lwlrap, ETA, device and worker, the best against the baseline,
the last trials to end and what pruning saved, in 80 columns (what it shows: ``search.views.status``).
"""
from __future__ import annotations

import argparse
import math
import signal
import sys
from typing import Sequence

import optuna
import sqlalchemy

from search._cli import UserError, add_study_arguments, run_command
from search.study.locate import locate_args
from search.study.record import redact
from search.study.storage import storage_failure_text
from search.views.status import DEFAULT_RECENT, StatusView, watch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search.status", description=__doc__.splitlines()[0])
    add_study_arguments(parser)
    parser.add_argument("--watch", type=float, metavar="S",
                        help="redraw every S seconds until Ctrl-C (in place on a terminal, else one block per redraw)")
    parser.add_argument("--recent", type=int, default=DEFAULT_RECENT, metavar="N",
                        help=f"how many of the trials that ended last to list (default {DEFAULT_RECENT}; 0 = none)")
    return parser


def main(argv: Sequence[str] | None = None, *, max_frames: int | None = None) -> int:
    """CLI entry point; returns the exit status. ``max_frames`` ends ``--watch`` after that many redraws (tests)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.watch is not None and not (args.watch > 0 and math.isfinite(args.watch)):
        parser.error(f"--watch {args.watch}: expected a number of seconds > 0, e.g. --watch 10")
    if args.recent < 0:
        parser.error(f"--recent {args.recent}: expected a count >= 0")
    return run_command(lambda: _status(args, max_frames), writes={"--studies-dir": args.studies_dir})


def _status(args: argparse.Namespace, max_frames: int | None) -> int:
    url = args.storage
    try:
        location = locate_args(args)
        handle = location.open()
        url = handle.url
        view = StatusView.of(handle, location.spec, recent=args.recent)
        if args.watch is None:
            print("\n".join(view.lines()), flush=True)
        else:
            # Ctrl-C ends it also when the shell that started it ignored SIGINT (nohup, a background job)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            watch(view.lines, args.watch, sys.stdout, max_frames=max_frames)
    except KeyboardInterrupt:  # Ctrl-C is how --watch ends
        return 0
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:  # mid --watch
        where = redact(url) if url else "the study storage"
        raise UserError(f"{where}: cannot read the study ({storage_failure_text(error)})") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
