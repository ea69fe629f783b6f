"""Is the measured inference cost robust to foreign load? Each way of timing the validation pass, idle and loaded.

    python -m benchmarks.bench_inference_cost [--rounds 3] [--load-procs 2] [--scale 0.15]

The validation pass of an untrained baseline-size model (the demo config at width 0.125, the studies' base) on the
built-in demo set's held-out curated clips is timed by each method below, at 1 and at 2 torch threads, alternately
with no load of ours ("idle") and under a load generator of ``--load-procs`` busy processes (one-thread torch
matmul loops, started and stopped here, each bounded to ``LOAD_LIMIT_S``). "Idle" only means no load generator of
ours: other jobs on the box run as they do. Raw records go to
``benchmarks/results/inference-cost/<date>-<box>.json``; a summary (min/median/max per method and condition, and
loaded/idle ratios of the medians) is printed. Not a test: numbers depend on the machine and on what else runs.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import re
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from benchmarks.harness import REPO
from trainer import TrainConfig
from trainer.atomic import atomic_write_text
from trainer.features import LogMel
from trainer.inference import measure_feature_cost, predict_bank, resolve_device, timed_work
from trainer.models import build_model
from trainer.prepare import prepare_data
from trainer.synth import ensure_demo_data
from trainer.train import DEMO_OVERRIDES

LOAD_LIMIT_S = 120.0  # a load process stops by itself after this long, even if this script was killed
RESULTS = REPO / "benchmarks" / "results" / "inference-cost"


# -- the box and the load generator (bench_threads uses them too) ----------------------------------------
def box_name() -> str:
    """CPU model and usable cores, for file names and records: e.g. ``amd-epyc-2cpu``."""
    model = "unknown-cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    return f"{slug}-{len(os.sched_getaffinity(0))}cpu"


def _busy(stop: multiprocessing.synchronize.Event, limit_s: float) -> None:
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    deadline = time.monotonic() + limit_s
    while not stop.is_set() and time.monotonic() < deadline:
        a = torch.tanh(a @ a)


@contextmanager
def foreign_load(procs: int, *, limit_s: float = LOAD_LIMIT_S) -> Iterator[None]:
    """``procs`` busy processes (one-thread matmul loops) for the duration of the block, each bounded in time."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    workers = [context.Process(target=_busy, args=(stop, limit_s), daemon=True) for _ in range(procs)]
    for worker in workers:
        worker.start()
    time.sleep(1.5)  # spawned interpreters import torch before they load the box
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
        time.sleep(0.5)


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# -- the methods ---------------------------------------------------------------------------------------
def methods(model, bank, config: TrainConfig, audio_s: float) -> dict[str, Callable[[], float]]:
    """Each method's seconds per second of audio for one validation pass (what a trial's cost is)."""
    def one_pass() -> None:
        predict_bank(model, bank, n_frames=config.features.crop_frames, pad_mode=config.features.pad_mode,
                     batch_size=64)

    def wall() -> float:  # the old one: wall time of the scoring pass at the trial's threads
        started = time.perf_counter()
        one_pass()
        return (time.perf_counter() - started) / audio_s

    def process_cpu() -> float:  # CPU time of every thread of the process (spinning OpenMP threads included)
        started = time.process_time()
        one_pass()
        return (time.process_time() - started) / audio_s

    def new() -> float:  # the trainer's: trainer.inference.timed_work
        return timed_work(torch.device("cpu"), one_pass)[1] / audio_s

    return {"wall": wall, "wall-min-of-3": lambda: min(wall() for _ in range(3)), "process-cpu": process_cpu,
            "cpu-time-1-thread (new)": new}


def feature_wall(config: TrainConfig, seconds: float = 10.0) -> float:
    """The old log-mel cost: wall time of one pass over ``seconds`` of audio at the current threads."""
    log_mel = LogMel(config.features)
    wave = torch.randn(int(seconds * config.features.sample_rate), generator=torch.Generator().manual_seed(0))
    log_mel(wave)
    started = time.perf_counter()
    log_mel(wave)
    return (time.perf_counter() - started) / seconds


def measure(model, bank, config: TrainConfig, audio_s: float, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    costs = {name: run() for name, run in methods(model, bank, config, audio_s).items()}
    costs["feature wall"] = feature_wall(config)
    costs["feature cpu-time-1-thread (new)"] = measure_feature_cost(config.features, torch.device("cpu"))[0]
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="idle/loaded pairs per thread count (default 3)")
    parser.add_argument("--load-procs", type=int, default=2, help="busy processes of the load generator (default 2)")
    parser.add_argument("--scale", type=float, default=0.15, help="size of the demo set (default 0.15)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads to try (default 1 2)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder of the day's records (default benchmarks/results/inference-cost)")
    args = parser.parse_args()

    config = TrainConfig().with_overrides(DEMO_OVERRIDES).with_overrides({"model.width": 0.125})
    data = prepare_data(config, ensure_demo_data(scale=args.scale), device=resolve_device("cpu"), progress=False)
    bank = data.val_bank
    audio_s = float(bank.lengths.sum()) * config.features.hop / config.features.sample_rate
    torch.manual_seed(0)
    model = build_model(config.model)
    measure(model, bank, config, audio_s, 1)  # warm-up: first passes allocate

    records = []
    for threads in args.threads:
        for round_ in range(args.rounds):
            # alternate which condition goes first, so a drift of the box's other load hits both alike
            for condition in (("idle", "loaded") if round_ % 2 == 0 else ("loaded", "idle")):
                if condition == "loaded":
                    with foreign_load(args.load_procs):
                        costs = measure(model, bank, config, audio_s, threads)
                else:
                    costs = measure(model, bank, config, audio_s, threads)
                records.append({"threads": threads, "round": round_, "condition": condition,
                                "loadavg_1min": os.getloadavg()[0], "cost_s_per_s_audio": costs})
                print(f"threads {threads} round {round_} {condition:6}: "
                      + "  ".join(f"{k} {v * 1000:.2f}" for k, v in costs.items()), flush=True)

    print("\ns per 1000 s of audio: min / median / max over rounds; ratio = median loaded / median idle")
    table = {}
    for threads in args.threads:
        for name in records[0]["cost_s_per_s_audio"]:
            cell = {c: summary([r["cost_s_per_s_audio"][name] * 1000 for r in records
                                if r["threads"] == threads and r["condition"] == c]) for c in ("idle", "loaded")}
            cell["ratio"] = cell["loaded"]["median"] / cell["idle"]["median"]
            table[f"{threads} thread(s) {name}"] = cell
            print(f"{threads} thread(s) {name:32} idle {cell['idle']['min']:.2f}/{cell['idle']['median']:.2f}/"
                  f"{cell['idle']['max']:.2f}  loaded {cell['loaded']['min']:.2f}/{cell['loaded']['median']:.2f}/"
                  f"{cell['loaded']['max']:.2f}  ratio {cell['ratio']:.2f}")

    now = datetime.datetime.now(datetime.timezone.utc)
    record = {"benchmark": "inference-cost", "date": now.isoformat(timespec="seconds"), "box": box_name(),
              "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
              "command": "python -m benchmarks.bench_inference_cost " + " ".join(sys.argv[1:]),
              "model": "demo config, model.width 0.125 (untrained)", "demo_scale": args.scale,
              "validation_audio_s": audio_s, "load": f"{args.load_procs} one-thread torch matmul processes",
              "idle_means": "no load generator of ours; the box's other jobs (other helpers' tests) ran as they did",
              "new_method": "thread CPU time of the validation pass run on one torch thread (CPU devices)",
              "records": records, "summary_s_per_1000s_audio": table}
    out = save_run(args.out, record)
    print(f"\nadded this run to {out}")


def save_run(results: Path, record: dict) -> Path:
    """Add ``record`` to the day's file for this box (``{"runs": [...]}``): a rerun keeps the earlier runs."""
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"{record['date'][:10]}-{record['box']}.json"
    runs = json.loads(out.read_text())["runs"] if out.exists() else []
    atomic_write_text(out, json.dumps({"runs": [*runs, record]}, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
