"""python -m trainer.synth --out DIR [--kind demo|sampled] [--scale S] [--seed N]: write a built-in data set."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.synth import BUILTIN_DATASETS, MissingSoundSourceError, generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.synth",
                                     description="Write a built-in data set in the FAT2019 layout.")
    parser.add_argument("--out", type=Path, required=True, help="directory to create (must be absent or empty)")
    parser.add_argument("--kind", choices=BUILTIN_DATASETS, default="demo", help="which built-in set (default: demo)")
    parser.add_argument("--scale", type=float, default=1.0, help="size relative to 600/600/300 curated/noisy/test")
    parser.add_argument("--seed", type=int, default=0, help="seed; the same seed and scale give identical bytes")
    args = parser.parse_args(argv)
    try:
        out = generate(args.out, kind=args.kind, scale=args.scale, seed=args.seed, progress=sys.stderr.isatty())
    except (ValueError, FileExistsError, MissingSoundSourceError) as error:
        parser.exit(2, f"error: {error}\n")
    except OSError as error:  # a read-only or full --out
        parser.exit(2, f"error: cannot write {args.out}: {(error.strerror or str(error)).lower()} (choose a writable "
                       f"--out)\n")  # not the name of the temporary folder beside it that it was writing
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
