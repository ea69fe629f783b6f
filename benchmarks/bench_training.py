"""Training throughput on the built-in demo set: samples/s of training epochs and validation.

    python -m benchmarks.bench_training [--threads N] [--epochs E] [--scale S] [--set key=value ...]

Runs the demo config (trainer.train's default for the demo set) through train_and_evaluate and prints a
markdown table row per configuration. Not a test: numbers depend on the machine and on what else runs.
"""
from __future__ import annotations

import argparse
import os
import tempfile

from trainer import TrainConfig, train_and_evaluate
from trainer.config import parse_set_args
from trainer.inference import resolve_device
from trainer.prepare import prepare_data
from trainer.synth import ensure_demo_data
from trainer.train import DEMO_OVERRIDES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="size of the demo set (default 1.0)")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    data_dir = ensure_demo_data(scale=args.scale)
    base = TrainConfig().with_overrides(DEMO_OVERRIDES).with_overrides({"optim.epochs": args.epochs})
    rows = [("demo config (ResNet18 x0.25, crop 256, batch 16)", base)]
    if args.set:
        rows.append(("with " + " ".join(args.set), base.with_overrides(parse_set_args(args.set))))

    print(f"torch threads: {args.threads}")
    print("| configuration | train clips/epoch | epoch s (mean, after the 1st) | train samples/s | inference s per 1000 s audio |")
    print("|---|---|---|---|---|")
    for name, config in rows:
        data = prepare_data(config, data_dir, device=resolve_device("cpu"), progress=False)  # fills the cache
        n_train = len(data.train_bank)
        with tempfile.TemporaryDirectory() as workdir:
            result = train_and_evaluate(config, data_dir, workdir=workdir, threads=args.threads, progress=False,
                                        verbose=False)
        # The first epoch pays one-off allocation costs; the steady state is what a long run sees.
        epoch_s = [h["epoch_time"] for h in result.history[1:]] or [result.history[0]["epoch_time"]]
        mean_epoch = sum(epoch_s) / len(epoch_s)
        print(f"| {name} | {n_train} | {mean_epoch:.2f} | {n_train / mean_epoch:.0f} | "
              f"{result.inference_cost * 1000:.2f} |")


if __name__ == "__main__":
    main()
