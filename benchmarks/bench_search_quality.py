"""Search quality on held-out test labels: does a study's exported best beat its own baseline?

    python benchmarks/bench_search_quality.py --data demo sampled --strategies old tpe gp random \
        --repeats 3 --trials 30 --snapshots 12 30 --jobs 2 --out bench-quality

For every (data set, strategy, repeat) it runs a real study through ``python -m search.run`` (one worker,
one torch thread, the repeat's seed), then for each snapshot T (the study after its first T finished trials:
with one worker, exactly what a T-trial study would have done) exports the best trial through
``python -m search.best --export`` (the baseline trial too, at the same epochs), runs each generated
kernel.py as its own process on the data set's held-out test clips and scores it against test_labels.csv.
Exports are cached by config, so a baseline shared by strategies is trained once.

Prints, per data set, strategy and T: median and spread of (best's test lwlrap - baseline's test lwlrap),
in how many repeats the best beat the baseline, the best's own test lwlrap (strategies differ in their epoch
budget, so their baselines differ too), epochs spent and wall time; ``--table`` prints it from the records. Every finished study is kept in
``--out`` with a JSON record, so an interrupted run resumes. Not a test: it takes hours on 2 cores.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from search.export import run_kernel, score_submission  # noqa: E402
from search.study import baseline_trial, is_feasible, load_study  # noqa: E402
from trainer import TrainConfig, ensure_builtin  # noqa: E402

DEMO_SPEC = REPO / "studies" / "demo.toml"

# The search strategy part of a spec ([sampler], [startup], [pruner]) and the trial budget in epochs.
TPE = {"name": "tpe", "n_startup_trials": 10, "multivariate": True, "group": True, "constant_liar": True}
NEAR_BASELINE = {"near_baseline": 6, "max_changes": 2}
NO_STARTUP = {"near_baseline": 0}
# a gentle ASHA (keep the top half at epochs 3 and 6) that decides nothing before 8 other trials reached a
# rung, so a small study's first trials (the baseline and its neighbours) all train to the end
GENTLE_ASHA = {"name": "asha", "min_resource": 3, "reduction_factor": 2, "min_trials": 8}
STRATEGIES: dict[str, dict] = {
    # what the specs shipped before this benchmark: Optuna's TPE defaults (group off), 5 random startup
    # trials, ASHA deciding from epoch 1 without a quorum, 6 epochs
    "old": {"epochs": 6, "sampler": {**TPE, "n_startup_trials": 5, "group": False}, "startup": NO_STARTUP,
            "pruner": {"name": "asha", "min_resource": 1, "reduction_factor": 3, "min_trials": 0}},
    "tpe": {"epochs": 10, "sampler": TPE, "startup": NEAR_BASELINE, "pruner": GENTLE_ASHA},
    "gp": {"epochs": 10, "sampler": {"name": "gp", "n_startup_trials": 10}, "startup": NEAR_BASELINE,
           "pruner": GENTLE_ASHA},
    "random": {"epochs": 10, "sampler": {"name": "random"}, "startup": NO_STARTUP, "pruner": GENTLE_ASHA},
    # "tpe" with the first candidate's pruner (ASHA from epoch 2, top third, quorum 4) and 12 epochs
    "tpe-asha3": {"epochs": 12, "sampler": {**TPE, "n_startup_trials": 8}, "startup": NEAR_BASELINE,
                  "pruner": {"name": "asha", "min_resource": 2, "reduction_factor": 3, "min_trials": 4}},
}


def toml_table(name: str, values: dict) -> str:
    def value(v):
        return ("true" if v else "false") if isinstance(v, bool) else f'"{v}"' if isinstance(v, str) else str(v)
    return f"[{name}]\n" + "".join(f"{key} = {value(v)}\n" for key, v in values.items())


@dataclass(frozen=True)
class Run:
    data: str
    strategy: str
    repeat: int

    @property
    def name(self) -> str:
        return f"q-{self.data}-{self.strategy}-r{self.repeat}"


def spec_text(run: Run, scale: float) -> str:
    """The demo spec with this run's data set, strategy, budget and seeds."""
    text = DEMO_SPEC.read_text(encoding="utf-8")
    strategy = STRATEGIES[run.strategy]
    head, space = text[:text.index("[sampler]")], text[text.index("[space]"):]
    head = head.replace('data = "demo"', f'data = "{run.data}"').replace("data_scale = 1.0", f"data_scale = {scale}")
    head = "\n".join(f"epochs = {strategy['epochs']}" if line.startswith("epochs =") else line
                     for line in head.splitlines()) + "\n"
    sections = [toml_table("sampler", strategy["sampler"]),
                toml_table("startup", {"seed": run.repeat, **strategy["startup"]}),
                toml_table("pruner", strategy["pruner"])]
    return head + "\n".join(sections) + "\n" + space


def run_study(run: Run, out: Path, trials: int, scale: float) -> Path:
    """Run the study to ``trials`` finished trials (resumable: an existing database is continued)."""
    studies = out / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    spec = studies / f"{run.name}.toml"
    spec.write_text(spec_text(run, scale), encoding="utf-8")
    log = out / "logs" / f"{run.name}.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        subprocess.run([sys.executable, "-m", "search.run", "--study", run.name, "--studies-dir", str(studies),
                        "--trials", str(trials), "--threads", "1", "--seed", str(run.repeat), "--device", "cpu"],
                       cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, check=True)
    return studies


def snapshot(study: optuna.Study, size: int) -> list[optuna.trial.FrozenTrial]:
    """The trials of the study as it stood after its first ``size`` finished trials (failed ones included)."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if len(finished) < size:
        raise RuntimeError(f"{study.study_name}: only {len(finished)} finished trials, {size} asked")
    last = finished[size - 1].number
    return [t for t in trials if t.number <= last]


def best_of(trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and is_feasible(t)]
    return max(complete, key=lambda t: t.value)


def test_score(run_name: str, studies: Path, trial: optuna.trial.FrozenTrial, data_dir: Path, out: Path) -> float:
    """Export ``trial`` (retrained with its exact config) and score its kernel on the test clips; cached by config."""
    config = TrainConfig.from_json(trial.user_attrs["config"])
    key = hashlib.blake2b(f"{data_dir}\n{config.to_json()}".encode(), digest_size=8).hexdigest()
    cache = out / "exports" / f"{key}.json"
    if cache.exists():
        return json.loads(cache.read_text())["test_lwlrap"]
    export = out / "exports" / key
    subprocess.run([sys.executable, "-m", "search.best", "--study", run_name, "--studies-dir", str(studies),
                    "--export", "--trial", str(trial.number), "--out", str(export), "--threads", "1"],
                   cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        submission = Path(tmp) / "submission.csv"
        run_kernel(export, data_dir / "test", data_dir / "sample_submission.csv", submission, device="cpu")
        score = score_submission(submission, data_dir / "test_labels.csv")
    cache.write_text(json.dumps({"test_lwlrap": score, "trial": trial.number, "study": run_name}))
    return score


def measure(run: Run, out: Path, trials: int, snapshots: list[int], scale: float) -> dict:
    record_path = out / "records" / f"{run.name}.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    started = time.perf_counter()
    studies = run_study(run, out, trials, scale)
    data_dir = ensure_builtin(run.data, scale=scale)
    handle = load_study(run.name, None, studies)
    record = {"data": run.data, "strategy": run.strategy, "repeat": run.repeat, "snapshots": {}}
    for size in snapshots:
        trials_then = snapshot(handle.study, size)
        best, baseline = best_of(trials_then), baseline_trial(trials_then)
        record["snapshots"][str(size)] = {
            "best_trial": best.number, "baseline_trial": baseline.number,
            "best_val": best.value, "baseline_val": baseline.value,
            "best_test": test_score(run.name, studies, best, data_dir, out),
            "baseline_test": test_score(run.name, studies, baseline, data_dir, out),
            "epochs": sum(int(t.user_attrs.get("epochs_run", 0)) - int(t.user_attrs.get("resumed_from_epoch", 0))
                          for t in trials_then),
            "wall_s": sum(float(t.user_attrs.get("wall_time", 0.0)) for t in trials_then),
            "complete": sum(t.state == TrialState.COMPLETE for t in trials_then),
        }
    record["bench_s"] = time.perf_counter() - started
    record_path.parent.mkdir(exist_ok=True)
    record_path.write_text(json.dumps(record, indent=1))
    print(f"{run.name}: " + ", ".join(f"T={t} best #{s['best_trial']} test {s['best_test']:.4f} vs baseline "
                                      f"{s['baseline_test']:.4f}" for t, s in record["snapshots"].items()), flush=True)
    return record


def table(records: list[dict], snapshots: list[int]) -> str:
    lines = ["| data | strategy | T | repeats | test gain over baseline: median [min, max] | best beat baseline | "
             "best's test lwlrap: median | epochs (mean) | wall min (mean) |", "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["data"], r["strategy"]) for r in records})
    for data, strategy in keys:
        group = [r for r in records if r["data"] == data and r["strategy"] == strategy]
        for size in snapshots:
            shots = [r["snapshots"][str(size)] for r in group]
            gains = [s["best_test"] - s["baseline_test"] for s in shots]
            wins = sum(g > 0 for g in gains)
            lines.append(f"| {data} | {strategy} | {size} | {len(shots)} | {statistics.median(gains):+.4f} "
                         f"[{min(gains):+.4f}, {max(gains):+.4f}] | {wins}/{len(shots)} | "
                         f"{statistics.median(s['best_test'] for s in shots):.4f} | "
                         f"{statistics.mean(s['epochs'] for s in shots):.0f} | "
                         f"{statistics.mean(s['wall_s'] for s in shots) / 60:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=["demo", "sampled"])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--snapshots", type=int, nargs="+", default=[12, 30])
    parser.add_argument("--scale", type=float, default=1.0, help="size of the built-in data sets")
    parser.add_argument("--jobs", type=int, default=2, help="studies run side by side (one torch thread each)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-quality")
    parser.add_argument("--table", action="store_true", help="print the table of the records in --out; run nothing")
    args = parser.parse_args()
    if args.table:
        records = [json.loads(path.read_text()) for path in sorted((args.out / "records").glob("*.json"))]
        print(table([r for r in records if r["data"] in args.data and r["strategy"] in args.strategies], args.snapshots))
        return
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for data in args.data:
        ensure_builtin(data, scale=args.scale)
    runs = [Run(d, s, r) for r in range(args.repeats) for d in args.data for s in args.strategies]
    with ThreadPoolExecutor(args.jobs) as pool:
        records = list(pool.map(lambda run: measure(run, args.out, args.trials, args.snapshots, args.scale), runs))
    print()
    print(table(records, args.snapshots))


if __name__ == "__main__":
    main()
