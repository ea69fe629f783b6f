"""python -m trainer.train: one training run into a numbered folder (RUNS/0, RUNS/1, ...).

    python -m trainer.train --out runs                     # the built-in demo set, the demo config
    python -m trainer.train --data DATA --out runs --config my.toml --set optim.lr=1e-3
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainer.checkpoint import CheckpointError
from trainer.config import ConfigError, TrainConfig, parse_set_args
from trainer.data import DataError

# What the built-in demo set is trained with when no --config is given: the baseline's recipe on a
# network small enough for a laptop CPU (the full ResNet34 baseline is TrainConfig() itself).
DEMO_OVERRIDES = {
    "model.depth": 18,
    "model.width": 0.25,
    "features.crop_frames": 256,
    "optim.batch_size": 16,
    "optim.lr": 2e-3,
    "optim.epochs": 6,
}


def next_run_dir(runs: Path) -> Path:
    """The first free numbered folder under ``runs``; created here so two launches never share one."""
    runs.mkdir(parents=True, exist_ok=True)
    number = 1 + max((int(p.name) for p in runs.iterdir() if p.name.isdigit()), default=-1)
    while True:
        candidate = runs / str(number)
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1


def path_error_line(error: OSError, writes: dict[str, Path | None], reads: dict[str, Path | None]) -> str:
    """``cannot write runs/3: permission denied (choose a writable --out)``: the path, why, and the flag that gave it
    (the trainer's small equivalent of ``search._cli``, which it cannot import)."""
    reason = (error.strerror or str(error)).lower()
    if error.filename is None:
        return reason
    path = Path(os.path.abspath(os.fsdecode(error.filename)))
    for flags, verb, todo in ((writes, "write", "choose a writable"), (reads, "read", "check")):
        for flag, given in flags.items():
            root = Path(os.path.abspath(given)) if given is not None else None
            if root is not None and (path == root or root in path.parents or path in root.parents):
                return f"cannot {verb} {error.filename}: {reason} ({todo} {flag})"
    return f"cannot use {error.filename}: {reason}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="FAT2019 data folder (default: the built-in demo set)")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="parent of the numbered run folders")
    parser.add_argument("--config", type=Path, help="TOML file of TrainConfig values (sections as in config.json)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one value, e.g. optim.lr=1e-3")
    parser.add_argument("--device", help="auto|cpu|cuda|mps (default: the config's, auto)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    parser.add_argument("--cache-dir", type=Path, help="feature cache (default: $FAT2019_SEARCH_CACHE or ~/.cache)")
    parser.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")
    args = parser.parse_args(argv)

    from trainer.loop import NonFiniteLossError, train_and_evaluate

    try:
        if args.config is not None:
            config = TrainConfig.from_toml(args.config)
        elif args.data is None:
            config = TrainConfig().with_overrides(DEMO_OVERRIDES, source="demo defaults")
        else:
            config = TrainConfig()
        config = config.with_overrides(parse_set_args(args.set), source="--set")
        run_dir = next_run_dir(args.out)
        print(f"run folder {run_dir}", file=sys.stderr)
        result = train_and_evaluate(config, args.data, workdir=run_dir, device=args.device, threads=args.threads,
                                    progress=False if args.no_progress else None, cache_dir=args.cache_dir)
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only --out, a full disk, an unreadable --config: the user's to fix
        line = path_error_line(exc, {"--out": args.out, "--cache-dir": args.cache_dir},
                               {"--data": args.data, "--config": args.config})
        print(f"error: {line}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"diverged: {exc}", file=sys.stderr)
        return 1
    print(f"best lwlrap {result.best_lwlrap:.4f} (epoch {result.best_epoch}), last {result.last_lwlrap:.4f}, "
          f"{result.epochs_run} epochs in {result.wall_time:.1f}s -> {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
