"""Which torch thread policy survives foreign load? Training epochs at 2 threads, 1 thread and the worker's
per-epoch policy (search.worker.threads), idle and loaded.

    python -m benchmarks.bench_threads [--rounds 2] [--load-procs 1] [--epochs 3] [--scale 0.1]

Each policy trains the demo config at width 0.125 (the studies' base) on the built-in demo set as one pane on this
box, alternately with no load of ours ("idle": other jobs on the box run as they do) and under
``--load-procs`` busy one-thread torch processes (bench_inference_cost's load generator) started before the run:
for the fixed policies this is load that appeared after the count was chosen. Raw records (every epoch's seconds and
threads) go to ``benchmarks/results/threads/<date>-<box>.json``; min/median/max of the mean epoch seconds per policy
and condition are printed. Not a test: numbers depend on the machine and on what else runs.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_inference_cost import box_name, foreign_load, save_run, summary
from benchmarks.harness import REPO
from search.worker.threads import threads_now
from trainer import TrainConfig, train_and_evaluate
from trainer.synth import ensure_demo_data
from trainer.train import DEMO_OVERRIDES

RESULTS = REPO / "benchmarks" / "results" / "threads"
POLICIES = {  # name -> (threads at the start, the per-epoch policy or None)
    "fixed 2": (lambda: 2, None),
    "fixed 1": (lambda: 1, None),
    "per-epoch": (lambda: threads_now(1), lambda: threads_now(1)),
}


def train(config: TrainConfig, data_dir: Path, policy: str) -> dict:
    start_threads, epoch_threads = POLICIES[policy]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        result = train_and_evaluate(config, data_dir, workdir=workdir, threads=start_threads(),
                                    epoch_threads=epoch_threads, progress=False, verbose=False)
    return {"wall_s": time.perf_counter() - started, "epoch_s": [h["epoch_time"] for h in result.history],
            "epoch_threads": [h["threads"] for h in result.history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="idle/loaded pairs per policy (default 2)")
    parser.add_argument("--load-procs", type=int, default=1, help="busy processes of the load generator (default 1)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0.1, help="size of the demo set (default 0.1)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder of the day's records (default benchmarks/results/threads)")
    args = parser.parse_args()

    config = TrainConfig().with_overrides(DEMO_OVERRIDES).with_overrides({"model.width": 0.125,
                                                                          "optim.epochs": args.epochs})
    data_dir = ensure_demo_data(scale=args.scale)
    train(config.with_overrides({"optim.epochs": 1}), data_dir, "fixed 1")  # warm-up: fills the feature cache

    records = []
    for round_ in range(args.rounds):
        for policy in POLICIES:
            # alternate which condition goes first, so a drift of the box's other load hits both alike
            for condition in (("idle", "loaded") if (round_ + len(records)) % 2 == 0 else ("loaded", "idle")):
                if condition == "loaded":
                    with foreign_load(args.load_procs):
                        run = train(config, data_dir, policy)
                else:
                    run = train(config, data_dir, policy)
                records.append({"policy": policy, "round": round_, "condition": condition,
                                "loadavg_1min": os.getloadavg()[0], **run})
                print(f"round {round_} {policy:9} {condition:6}: epochs "
                      + " ".join(f"{s:.1f}s@{t}" for s, t in zip(run["epoch_s"], run["epoch_threads"]))
                      + f"  wall {run['wall_s']:.1f}s", flush=True)

    print("\nmean epoch seconds per run: min / median / max over rounds")
    table = {}
    for policy in POLICIES:
        cell = {c: summary([sum(r["epoch_s"]) / len(r["epoch_s"]) for r in records
                            if r["policy"] == policy and r["condition"] == c]) for c in ("idle", "loaded")}
        table[policy] = cell
        print(f"{policy:9} idle {cell['idle']['min']:.2f}/{cell['idle']['median']:.2f}/{cell['idle']['max']:.2f}"
              f"  loaded {cell['loaded']['min']:.2f}/{cell['loaded']['median']:.2f}/{cell['loaded']['max']:.2f}")

    now = datetime.datetime.now(datetime.timezone.utc)
    record = {"benchmark": "threads", "date": now.isoformat(timespec="seconds"), "box": box_name(),
              "cores": len(os.sched_getaffinity(0)),
              "command": "python -m benchmarks.bench_threads " + " ".join(sys.argv[1:]),
              "model": "demo config, model.width 0.125", "demo_scale": args.scale, "epochs": args.epochs,
              "load": f"{args.load_procs} one-thread torch matmul processes, started before the run",
              "idle_means": "no load generator of ours; the box's other jobs (other helpers' tests) ran as they did",
              "records": records, "summary_mean_epoch_s": table}
    out = save_run(args.out, record)
    print(f"\nadded this run to {out}")


if __name__ == "__main__":
    main()
