"""Search benchmarks on the demo study: what pruning saves, what a second worker adds, what storage costs.

    python -m benchmarks.bench_search pruning [--trials 24]   # pruners vs the same trials unpruned
    python -m benchmarks.bench_search workers [--trials 20]   # finished trials per hour, 1 vs 2 workers
    python -m benchmarks.bench_search storage [--trials 200]  # SQLite and in-memory storage ms per trial

Each mode takes ``--spec FILE`` (default studies/demo.toml): the study spec whose space, data and epochs it uses.

Not tests: the numbers depend on the machine and on what else runs. Each mode works in a temporary
studies folder and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from benchmarks.harness import STUDIES, Fleet, read_spec, search_run, write_spec
from search.spec import load_spec
from search.study.join import join_study
from search.study.record import resolve_data
from search.study.storage import default_storage_url, open_storage

DEMO_SPEC = STUDIES / "demo.toml"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def unpruned_spec(spec_path: str | Path, folder: Path) -> Path:
    """A copy of the spec in ``folder`` with pruning off, so every trial trains its whole budget."""
    return write_spec(folder / "bench.toml", {**read_spec(spec_path), "pruner": {"name": "none"}})


def run_workers(spec_path: Path, folder: Path, *, workers: int, trials: int, threads: int, seed: int | None = None
                ) -> float:
    """``workers`` ``python -m search.run`` processes on the spec's study in ``folder``; returns their wall time."""
    fleet = Fleet(search_run(spec_path, folder, "--trials", trials, "--threads", threads,
                             *(["--seed", seed] if seed is not None else [])), folder / "logs")
    started = time.perf_counter()
    for _ in range(workers):
        fleet.start()
    fleet.wait()
    try:
        fleet.check()
    except RuntimeError as exc:
        raise SystemExit(f"error: {exc}")
    return time.perf_counter() - started


def replay(curves: list[list[float]], pruner: optuna.pruners.BasePruner) -> tuple[int, float, int]:
    """Feed recorded per-epoch lwlrap curves, in trial order, through ``pruner``: (epochs, best, pruned).

    The trainer is deterministic on CPU (same config + seed -> same numbers, tested), so a pruned run of
    these trials would see exactly these values up to the epoch where it stops.
    """
    study = optuna.create_study(direction="maximize", pruner=pruner)
    epochs, best, pruned = 0, float("-inf"), 0
    for curve in curves:
        trial = study.ask()
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
            epochs += 1
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                pruned += 1
                break
        else:
            study.tell(trial, max(curve))
            best = max(best, max(curve))
    return epochs, best, pruned


PRUNERS = {
    "median, warm-up 2 epochs": lambda e: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
    "median, warm-up 1 epoch": lambda e: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    "percentile 25 (keep the top quarter), warm-up 1": lambda e: optuna.pruners.PercentilePruner(
        25.0, n_startup_trials=3, n_warmup_steps=1),
    "hyperband (min 1 epoch, reduction 3)": lambda e: optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=e, reduction_factor=3),
    "ASHA (min 1 epoch, reduction 3)": lambda e: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=1, reduction_factor=3),
}


def pruning(args: argparse.Namespace) -> None:
    base = load_spec(args.spec)
    if args.curves and Path(args.curves).exists():
        curves = json.loads(Path(args.curves).read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp:
            spec_path = unpruned_spec(args.spec, Path(tmp))
            run_workers(spec_path, Path(tmp), workers=1, trials=args.trials, threads=args.threads, seed=0)
            name = load_spec(spec_path).name
            study = optuna.load_study(study_name=name, storage=default_storage_url(name, Path(tmp)))
            curves = [[t.intermediate_values[e] for e in sorted(t.intermediate_values)]
                      for t in study.get_trials(deepcopy=False, states=FINISHED)]
        if args.curves:
            Path(args.curves).write_text(json.dumps(curves))
    full_epochs, full_best, _ = replay(curves, optuna.pruners.NopPruner())
    print(f"demo study ({Path(args.spec).name}, TPE), {len(curves)} trials of {base.epochs} epochs trained without pruning; "
          f"each pruner replays the same per-epoch curves\n")
    print("| pruner | pruned trials | epochs spent (vs none) | best lwlrap (vs none) |")
    print("|---|---|---|---|")
    print(f"| none | 0 | {full_epochs} (100%) | {full_best:.4f} (100%) |")
    for name, make in PRUNERS.items():
        epochs, best, pruned = replay(curves, make(base.epochs))
        print(f"| {name} | {pruned} | {epochs} ({epochs / full_epochs:.0%}) | {best:.4f} ({best / full_best:.1%}) |")


def workers(args: argparse.Namespace) -> None:
    """The same fixed list of trials (the baseline + random points of the demo space, no pruning, so every
    trial's work is decided in advance) finished by 1 worker and by 2 workers sharing one SQLite study."""
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    rows = []
    for n_workers in (1, 2):
        with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
            spec_path = unpruned_spec(args.spec, Path(tmp))
            spec = load_spec(spec_path)
            resolve_data(spec, None)  # a built-in set is generated here, not timed in the workers
            study = join_study(open_storage(default_storage_url(spec.name, Path(tmp))), spec)
            if n_workers == 1:
                points = []
                for _ in range(args.trials - 1):
                    trial = draw.ask()
                    points.append(spec.suggest(trial))
                    draw.tell(trial, 0.0)
            for params in points:
                study.enqueue_trial(params)
            threads = max(1, (os.cpu_count() or 2) // n_workers)
            elapsed = run_workers(spec_path, Path(tmp), workers=n_workers, trials=args.trials, threads=threads)
            finished = len(study.get_trials(deepcopy=False, states=FINISHED))
            rows.append((n_workers, threads, finished, elapsed, finished / elapsed * 3600))
    print(f"demo space, the same {args.trials} trials (baseline + random points, seed {args.seed}, "
          f"{spec.epochs} epochs each, no pruning) for each row\n")
    print("| workers | torch threads each | finished trials | wall s | trials per hour | vs 1 worker |")
    print("|---|---|---|---|---|---|")
    for n_workers, threads, finished, elapsed, per_hour in rows:
        print(f"| {n_workers} | {threads} | {finished} | {elapsed:.0f} | {per_hour:.0f} | {per_hour / rows[0][4]:.2f}x |")


def storage(args: argparse.Namespace) -> None:
    """Time an objective that does nothing but what a real trial asks of storage: suggest, report, attrs."""
    spec = load_spec(args.spec)
    epochs = spec.epochs

    def objective(trial: optuna.Trial) -> float:
        spec.suggest(trial)
        for key in ("run_dir", "host", "worker_id", "feature_cache_key", "wall_time", "epochs_run"):
            trial.set_user_attr(key, "x")
        for epoch in range(1, epochs + 1):
            trial.report(0.5, epoch)
            trial.should_prune()
        return 0.5

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        for name, url in (("in-memory (no storage)", None),
                          ("SQLite, WAL + busy timeout + retry (ours)", default_storage_url("s", Path(tmp))),
                          ("SQLite, Optuna's plain RDBStorage", f"sqlite:///{tmp}/plain.db")):
            if url is None:
                store = optuna.storages.InMemoryStorage()
            elif "plain" in url:
                store = optuna.storages.RDBStorage(url)
            else:
                store = open_storage(url, heartbeat_interval=60, grace_period=180)
            study = optuna.create_study(storage=store, sampler=spec.make_sampler(0), pruner=spec.make_pruner())
            started = time.perf_counter()
            study.optimize(objective, n_trials=args.trials)
            rows.append((name, (time.perf_counter() - started) / args.trials * 1000))
    print(f"{args.trials} trials, each: the demo space's suggestions, 6 user attrs, {epochs} reports + should_prune\n")
    print("| storage | ms per trial (TPE sampling included) |")
    print("|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("pruning")
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--curves", help="JSON file of recorded curves: written after training, reused if present")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    w = sub.add_parser("workers")
    w.add_argument("--trials", type=int, default=20)
    w.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("storage")
    s.add_argument("--trials", type=int, default=200)
    for mode in (p, w, s):
        mode.add_argument("--spec", default=str(DEMO_SPEC), help="study spec (default studies/demo.toml)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    {"pruning": pruning, "workers": workers, "storage": storage}[args.mode](args)


if __name__ == "__main__":
    main()
