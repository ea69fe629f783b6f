"""Full FAT2019 scale on one box: cache fill rate, bank build, warm trial start-up, memory of 1 and 4 workers
with noisy clips on, and an epoch of random-crop batches, printed as one markdown table.

    python -m benchmarks.scale --root /var/tmp/fat2019-scale        # ~17 GB of disk at 64 mels; rm -rf it after
    python -m benchmarks.scale --root /tmp/s --fraction 0.01 ...    # a 1% data set: checks the script, measures little

What is synthetic and what is measured how (see benchmarks/scale_data.py): the data set has FAT2019's clip
counts and length distribution, but sparse wav files and random log-mel features written straight into the
cache, so everything after the cache fill (packing, start-up, memory maps, batches) runs the real code at full
size. The fill rate is measured on --fill-clips real generated wavs with the same length mix, all cores, and
extrapolated to the 90.5 h of the full data; the seed's per-item pipeline (read, pad to 15 s, librosa log-mel)
is timed on --per-item-clips of the same wavs on one core, interleaved with the timed epochs of batches so both
see the same load on a shared box, and extrapolated to the training split. Each worker below is a separate
process running prepare_data (the trial start-up path), one epoch of random-crop batches over the whole train
bank (so every page of it is touched) and --steps training steps of a small ResNet; its memory is sampled from
/proc/<pid>/smaps_rollup. PSS is the honest figure for shared pages: a mapped page counts in full in every
process's RSS, but is divided among the processes sharing it in their PSS.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_features import per_item_epoch  # the seed baseline, timed the same way there
from benchmarks.harness import REPO, rss_and_pss, status_kb
from benchmarks.scale_data import clip_seconds, make_dataset, write_real_audio
from trainer.config import TrainConfig

SMALL_MODEL = {"model.depth": 18, "model.width": 0.25}  # training steps only; the data path is what is measured


def config_for(n_mels: int) -> TrainConfig:
    """The baseline (15 s crops, batch 32) with noisy clips on, at ``n_mels``; a small model for the steps."""
    return TrainConfig().with_overrides({"data.use_noisy": True, "features.n_mels": n_mels, **SMALL_MODEL,
                                         "device": "cpu"})


# -- child processes: one trial's data path each ------------------------------------------------------------
def child(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    from trainer.prefetch import crop_batches
    from trainer.prepare import prepare_data

    config = config_for(args.mels)
    lines: list[str] = []
    started = time.perf_counter()
    data = prepare_data(config, args.root / "data", device=torch.device("cpu"), cache_dir=args.root / "cache",
                        progress=False, status=lambda line: (lines.append(line), print(line, file=sys.stderr)))
    result = {"prepare_s": time.perf_counter() - started, "status": lines, "train_bytes": data.train_bank.nbytes,
              "val_bytes": data.val_bank.nbytes, "train_clips": len(data.train_bank), "val_clips": len(data.val_bank),
              "since_spawn_s": time.time() - args.spawned}
    if args.mode == "plan":
        from trainer.memory import plan_data_memory

        started = time.perf_counter()
        plan = plan_data_memory(config, args.root / "data")
        result.update(plan_s=time.perf_counter() - started, plan_train=plan.train_bank_bytes,
                      plan_val=plan.val_bank_bytes)
    if args.mode in ("epoch", "worker"):
        f = config.features
        generator = torch.Generator().manual_seed(0)
        wavs = sorted((args.root / "real-audio").glob("*.wav"))[:args.per_item_clips]
        if args.mode == "epoch":
            per_item_epoch(wavs[:2], f)  # librosa's first call pays for imports and caches, not the pipeline
        epochs, per_item = [], []
        for _ in range(args.epochs if args.mode == "epoch" else 1):
            if args.mode == "epoch":  # interleaved, so both pipelines see the same load on a shared box
                per_item.append(len(wavs) / per_item_epoch(wavs, f))
            order = torch.randperm(len(data.train_bank), generator=generator).numpy()
            n_batches = len(order) // 32
            started = time.perf_counter()
            for _clips, _crops in crop_batches(data.train_bank, order, 32, n_batches, f, generator):
                pass
            epochs.append(time.perf_counter() - started)
        result.update(epoch_s=epochs, epoch_clips=n_batches * 32, per_item_clips_per_s=per_item)
    if args.mode == "worker":
        # Hold here until the parent has sampled every worker with its data loaded and every bank page touched.
        (args.root / f"ready-{os.getpid()}").touch()
        while not (args.root / "go").exists():
            time.sleep(0.05)
        result["step_s"] = _train_steps(config, data, args.steps)
    result["vm_hwm"] = status_kb("VmHWM") * 1024
    return result


def _train_steps(config: TrainConfig, data, steps: int) -> float:
    from trainer.losses import build_loss
    from trainer.models import build_model
    from trainer.optim import build_optimizer
    from trainer.prefetch import crop_batches

    model = build_model(config.model)
    optimizer = build_optimizer(config.optim, model.parameters())
    loss_fn = build_loss(config.loss)
    order = np.random.default_rng(0).permutation(len(data.train_bank))
    started = time.perf_counter()
    for clips, x in crop_batches(data.train_bank, order, 32, steps, config.features, torch.Generator().manual_seed(1)):
        loss = loss_fn(model(x), data.train_targets[clips], data.train_is_noisy[clips])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / max(steps, 1)


def run_children(args: argparse.Namespace, mode: str, count: int = 1) -> tuple[list[dict], dict]:
    """Start ``count`` child processes at once, wait for them (sampling workers' memory); results and peaks.

    Workers pause once their data is loaded and an epoch of batches has touched every bank page: the
    ``data_*`` figures are sampled then (all of them at once), the others over the whole run.
    """
    for marker in [*args.root.glob("ready-*"), args.root / "go"]:
        marker.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.scale", "--child", mode, "--root", str(args.root),
               "--mels", str(args.mels), "--steps", str(args.steps), "--epochs", str(args.epochs),
               "--per-item-clips", str(args.per_item_clips)]
    procs = [subprocess.Popen(command + ["--spawned", repr(time.time())], cwd=REPO, stdout=subprocess.PIPE, text=True)
             for _ in range(count)]
    peaks = {"rss_each": [0] * count, "pss_each": [0] * count, "rss_sum": 0, "pss_sum": 0,
             "data_rss_each": [0] * count, "data_pss_each": [0] * count, "data_rss_sum": 0, "data_pss_sum": 0}

    def sample(prefix: str = "") -> None:
        memory = [rss_and_pss(p.pid) or (0, 0) for p in procs]
        for i, (rss, pss) in enumerate(memory):
            peaks[f"{prefix}rss_each"][i] = max(peaks[f"{prefix}rss_each"][i], rss)
            peaks[f"{prefix}pss_each"][i] = max(peaks[f"{prefix}pss_each"][i], pss)
        peaks[f"{prefix}rss_sum"] = max(peaks[f"{prefix}rss_sum"], sum(r for r, _ in memory))
        peaks[f"{prefix}pss_sum"] = max(peaks[f"{prefix}pss_sum"], sum(p for _, p in memory))

    # Reading smaps_rollup walks the page tables of an 8 GB mapping under the process's mmap lock: it is
    # sampled only for the workers' memory figures, never while a timing is taken.
    while any(p.poll() is None for p in procs):
        if mode != "worker":
            time.sleep(0.1)
            continue
        sample()
        if not (args.root / "go").exists() and all((args.root / f"ready-{p.pid}").exists() for p in procs):
            for _ in range(5):
                sample("data_")
                time.sleep(0.2)
            (args.root / "go").touch()
        time.sleep(0.5)
    results = []
    for p in procs:
        out = p.stdout.read()
        if p.wait() != 0:
            raise SystemExit(f"error: a {mode} child process failed (exit {p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    for marker in [*args.root.glob("ready-*"), args.root / "go"]:
        marker.unlink(missing_ok=True)
    return results, peaks


# -- the parent: each measurement in turn -------------------------------------------------------------------
def measure_fill(args: argparse.Namespace) -> dict:
    """Fill an empty cache from real wavs with the full data's length mix, all cores."""
    from trainer.feature_cache import cache_entries

    lengths = np.concatenate(list(clip_seconds(fraction=args.fraction).values()))
    sample = np.random.default_rng(2).choice(lengths, args.fill_clips, replace=False)
    paths = write_real_audio(args.root / "real-audio", sample)
    cfg = config_for(args.mels).features
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(dir=args.root) as cache:
        started = time.perf_counter()
        entries = cache_entries(paths, cfg, cache_dir=cache, workers=workers, progress=False)
        fill_s = time.perf_counter() - started
    assert not entries.failed, entries.failed[:3]
    return {"clips": len(paths), "audio_h": float(sample.sum()) / 3600, "fill_s": fill_s, "workers": workers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder for the data set, cache and real audio")
    parser.add_argument("--mels", type=int, default=64, help="n_mels of the features (default 64, the baseline)")
    parser.add_argument("--workers", type=int, default=4, help="concurrent workers for the memory figure")
    parser.add_argument("--steps", type=int, default=2, help="training steps per worker")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of batches (the best is reported)")
    parser.add_argument("--fill-clips", type=int, default=200, help="real wavs for the fill rate")
    parser.add_argument("--per-item-clips", type=int, default=100, help="of those, timed through the seed pipeline")
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="share of FAT2019's clips and hours to write (default 1.0: full size)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spawned", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.root = args.root.resolve()
    if args.child:
        args.mode = args.child
        print(json.dumps(child(args)))
        return 0

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
    args.load_start = os.getloadavg()[0]
    args.root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary = make_dataset(args.root, config_for(args.mels).features, fraction=args.fraction, log=say)
    say(f"data set ready in {time.perf_counter() - started:.0f}s: {summary}")
    fill = measure_fill(args)
    say(f"fill: {fill}")
    for bank_dir in (args.root / "cache" / "features").glob("*/banks"):
        shutil.rmtree(bank_dir)  # the build is timed from cached entries, no bank yet
    (build,), build_peaks = run_children(args, "build")
    say(f"build: {build['prepare_s']:.1f}s")
    (warm,), _ = run_children(args, "plan")
    (epoch,), _ = run_children(args, "epoch")
    (one,), one_peaks = run_children(args, "worker")
    many, many_peaks = run_children(args, "worker", args.workers)
    print_table(args, summary, fill, build, build_peaks, warm, epoch, one, one_peaks, many, many_peaks)
    return 0


def print_table(args, summary, fill, build, build_peaks, warm, epoch, one, one_peaks, many, many_peaks) -> None:
    def gb(n: float) -> str:
        return f"{n / 1e9:.1f} GB"
    hours = sum(summary["hours"].values())
    h_per_min = fill["audio_h"] / (fill["fill_s"] / 60)
    best_epoch, per_item_rate = min(epoch["epoch_s"]), max(epoch["per_item_clips_per_s"])
    per_item_epoch_s = epoch["epoch_clips"] / per_item_rate
    pss_one, pss_many = one_peaks["pss_each"][0], many_peaks["pss_sum"]
    old_worker = summary["feature_bytes"] + one["train_bytes"] + one["val_bytes"]
    c, n = summary["clips"], summary["hours"]
    rows = [
        ("data set (synthetic features, sparse wavs)",
         f"{c['train_curated']:,} curated ({n['train_curated']} h, mean {summary['mean_s']['train_curated']} s) + "
         f"{c['train_noisy']:,} noisy ({n['train_noisy']} h, mean {summary['mean_s']['train_noisy']} s); "
         f"{args.mels} mels, hop {summary['hop']}; cached features {gb(summary['feature_bytes'])}", "-"),
        (f"cache fill, real audio ({fill['clips']} wavs, {fill['audio_h'] * 60:.0f} min, {fill['workers']} processes)",
         f"{fill['clips'] / fill['fill_s']:.1f} clips/s, {h_per_min:.2f} h of audio per minute = "
         f"{h_per_min / fill['workers']:.2f} h/min per core; the full {hours:.1f} h: ~{hours / h_per_min:.0f} min here "
         "(extrapolated)", "report"),
        ("bank build (from cached entries, noisy on)",
         f"{build['prepare_s']:.0f} s: train bank {gb(build['train_bytes'])} ({build['train_clips']:,} clips) + val "
         f"bank {gb(build['val_bytes'])} ({build['val_clips']:,}); peak RSS of the builder "
         f"{gb(build['vm_hwm'])}", "-"),
        ("trial start-up, warm cache (prepare_data in a fresh process)",
         f"{warm['prepare_s']:.2f} s ({warm['since_spawn_s']:.1f} s from process spawn, imports included)", "< 10 s"),
        ("memory plan before a trial (plan_data_memory, wav headers)",
         f"{warm['plan_s']:.2f} s; predicts train {gb(warm['plan_train'])}, val {gb(warm['plan_val'])} "
         f"({'exact' if (warm['plan_train'], warm['plan_val']) == _file_sizes(args) else 'off'})", "-"),
        (f"epoch of random-crop batches, full train bank, 1 core (memory-mapped; best of {len(epoch['epoch_s'])})",
         f"{best_epoch:.1f} s = {epoch['epoch_clips'] / best_epoch:,.0f} clips/s (first epoch "
         f"{epoch['epoch_s'][0]:.1f} s); seed per-item pipeline (interleaved, {args.per_item_clips} real wavs, best "
         f"{per_item_rate:.1f} clips/s) -> ~{per_item_epoch_s:,.0f} s (extrapolated): "
         f"**{per_item_epoch_s / best_epoch:.0f}x**", ">= 100x"),
        ("1 worker, noisy on, data loaded + an epoch of batches: RSS / PSS",
         f"{gb(one_peaks['data_rss_each'][0])} / {gb(one_peaks['data_pss_each'][0])}", "-"),
        (f"{args.workers} workers at once, the same moment: sum of RSS / sum of PSS",
         f"{gb(many_peaks['data_rss_sum'])} / {gb(many_peaks['data_pss_sum'])} = "
         f"**{many_peaks['data_pss_sum'] / one_peaks['data_pss_each'][0]:.2f}x** one worker's PSS", "<= 1.3x"),
        (f"whole run incl. {args.steps} training steps on the CPU (activations are private): peak PSS, 1 / "
         f"{args.workers} workers",
         f"{gb(pss_one)} / {gb(pss_many)} = {pss_many / pss_one:.2f}x (a step of the small ResNet: "
         f"{one['step_s']:.1f} s)", "-"),
        ("the same before this change (computed, not run: more than this 24 GiB box)",
         f"~{gb(old_worker)} per worker at the peak of packing (every clip's array + the packed banks), "
         f"~{gb(args.workers * old_worker)} for {args.workers}", "-"),
    ]
    print(f"\nload average (1 min) at the start / end of the run: {args.load_start:.1f} / {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print("\n| measurement | value | target |\n|---|---|---|")
    for name, value, target in rows:
        print(f"| {name} | {value} | {target} |")
    print("\nbuild status lines:\n" + "\n".join(f"    {line}" for line in build["status"]))


def _file_sizes(args) -> tuple[int, int]:
    sizes = sorted((p.stat().st_size for p in (args.root / "cache" / "features").glob("*/banks/*.bank")), reverse=True)
    return (sizes[0], sizes[1]) if len(sizes) >= 2 else (0, 0)


if __name__ == "__main__":
    raise SystemExit(main())
