"""``python -m search.report --study NAME``: a study's record as ``report.md`` plus pictures as PNGs
(what it holds: ``search.views.report``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from search._cli import add_study_arguments, run_command
from search.study.locate import locate_args
from search.views.report import write_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search.report", description=__doc__.splitlines()[0])
    add_study_arguments(parser)
    parser.add_argument("--out", help="output folder (default: <studies-dir>/<study>/report/)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _report(args), writes={"--out": args.out, "--studies-dir": args.studies_dir})


def _report(args: argparse.Namespace) -> int:
    location = locate_args(args)
    handle = location.open()
    out_dir = Path(args.out) if args.out else location.folder / "report"
    path = write_report(handle, out_dir, storage_arg=args.storage, runs_dir=location.folder / "runs" / handle.uid(),
                        files=location.reader_files(handle), spec=location.spec)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
