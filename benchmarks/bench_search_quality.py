"""Search quality per compute, on held-out test labels: what a study's exported best scores at equal compute.

    python -m benchmarks.bench_search_quality --data demo sampled --repeats 3 --jobs 2 --out bench-quality
    python -m benchmarks.bench_search_quality --out bench-quality --table     # table and plot from the records

Every strategy's study (one worker, one torch thread, the repeat's seed, through ``python -m search.run``) runs
until it has spent the largest compute budget, counted in training epochs and measured in units of one baseline
training, B = the demo spec's epoch budget (10 epochs). At every point of the study where its best trial changes,
that trial is exported through ``python -m search.best --export --reuse-checkpoints`` (its own weights: CPU
training is deterministic, so this is the model a retrain as the trial trained gives, without the retrain), the
generated kernel.py runs as its own process on the data set's held-out test clips, and the submission is scored
against test_labels.csv. So at any number of epochs spent we know the held-out test lwlrap of what the study
would have exported then: the table reads it at the budget points (6B, 15B, 30B by default), the anytime plot
at every 10 epochs.

The strategies are data (``STRATEGIES``; ``ours`` mirrors the shipped specs, a test checks it): the search part of a spec ([sampler], [startup], [pruner] and the
epoch budget) over the demo spec's space and base. ``seed-recipe`` is no search: one training of the base with
what the hand tuning this project grew out of kept (3x the epochs, batch 64, cosine with a small eta_min, mixup
1.0), the line a search must clear. Data: the built-in sets with 40% of the curated clips held out for
validation (240 clips at scale 1; FAT2019's curated validation is ~1,000: a 120-clip one exaggerates the
winner's curse). Every finished study and export is kept in ``--out``, so an interrupted run resumes. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from benchmarks.harness import REPO, STUDIES, read_spec, run_worker, search_run, write_spec
from search.kaggle.export import run_kernel
from search.kaggle.score import score_submission
from search.study.record import is_feasible, load_study
from trainer import atomic_write_text, ensure_builtin

DEMO_SPEC = STUDIES / "demo.toml"
BASELINE_EPOCHS = 10  # B: one training of the demo spec's base; every budget is a multiple of it
VAL_FRACTION = 0.4  # pinned, not read from demo.toml: the recorded studies stay comparable if the spec moves
STEP_EPOCHS = 10  # the anytime curve's resolution

# The search part of a spec: [sampler], [startup], [pruner] and the trial budget in epochs.
OURS_TPE = {"name": "tpe", "n_startup_trials": 10, "multivariate": True, "group": True, "constant_liar": True}
# Optuna 5's TPESampler() as `optuna.create_study(direction="maximize")` builds it: always multivariate,
# constant liar on, group off, 10 random startup trials.
OPTUNA_TPE = {"name": "tpe", "n_startup_trials": 10, "multivariate": True, "group": False, "constant_liar": True}
NEAR_BASELINE = {"near_baseline": 6, "max_changes": 2}
NO_STARTUP = {"near_baseline": 0}
STRATEGIES: dict[str, dict] = {
    # the shipped specs: TPE (group, liar), 6 near-baseline startup trials, 30-epoch trials (3B), ASHA rungs at 3, 9
    # and 27 keeping the top third, no decision before 4 trials reached a rung
    "ours": {"epochs": 30, "sampler": OURS_TPE, "startup": NEAR_BASELINE,
             "pruner": {"name": "asha", "min_resource": 3, "reduction_factor": 3, "min_early_stopping_rate": 0,
                        "min_trials": 4}},
    # the specs shipped before this benchmark: the same search over 10-epoch trials, ASHA at 3 and 6, quorum 8
    "ours-10ep": {"epochs": 10, "sampler": OURS_TPE, "startup": NEAR_BASELINE,
                  "pruner": {"name": "asha", "min_resource": 3, "reduction_factor": 2, "min_early_stopping_rate": 0,
                             "min_trials": 8}},
    # a plain Optuna script: create_study(direction="maximize") with MedianPruner(), nothing queued (our worker
    # still runs the spec's base as trial 0)
    "optuna-defaults": {"epochs": 10, "sampler": OPTUNA_TPE, "startup": NO_STARTUP,
                        "pruner": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 0, "interval_steps": 1,
                                   "min_trials": 0}},
    "random": {"epochs": 10, "sampler": {"name": "random"}, "startup": NO_STARTUP, "pruner": {"name": "none"}},
    # Optuna's HyperbandPruner (min_resource 1, reduction 3, max = the budget) under its default TPE
    "hyperband": {"epochs": 10, "sampler": OPTUNA_TPE, "startup": NO_STARTUP,
                  "pruner": {"name": "hyperband", "min_resource": 1, "reduction_factor": 3, "min_trials": 0}},
    # the hand tuning's kept changes (its "BCE + min-max BCE" had no gradient in the min-max term: plain BCE)
    "seed-recipe": {"recipe": {"optim.epochs": 3 * BASELINE_EPOCHS, "optim.batch_size": 64,
                               "optim.schedule": "cosine", "optim.eta_min": 1e-5, "augment.mixup_alpha": 1.0}},
}
RECIPE_SPACE = {"model.dropout": {"float": [0.0, 0.5], "step": 0.05}}


@dataclass(frozen=True)
class Run:
    data: str
    strategy: str
    repeat: int

    @property
    def name(self) -> str:
        return f"q-{self.data}-{self.strategy}-r{self.repeat}"


def spec_tables(run: Run, scale: float) -> dict[str, dict]:
    """The demo spec with this run's data set, strategy, budget and seeds; every trial keeps its weights."""
    demo = read_spec(DEMO_SPEC)
    strategy = STRATEGIES[run.strategy]
    recipe = strategy.get("recipe", {})
    study = {"data": run.data, "data_scale": scale, "keep_weights": 100000,
             "epochs": recipe.get("optim.epochs", strategy.get("epochs", BASELINE_EPOCHS))}
    base = {**demo["base"], "data.val_fraction": VAL_FRACTION, **recipe, **({"seed": run.repeat} if recipe else {})}
    base.pop("optim.epochs", None)  # the trial budget is [study] epochs
    if recipe:
        search = {"sampler": {"name": "random"}, "startup": NO_STARTUP, "pruner": {"name": "none"},
                  "space": RECIPE_SPACE}
    else:
        search = {"sampler": strategy["sampler"], "startup": {"seed": run.repeat, **strategy["startup"]},
                  "pruner": strategy["pruner"], "space": demo["space"]}
    return {"study": study, "base": base, **search}


def epochs_spent(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get("epochs_run") or 0) - int(trial.user_attrs.get("resumed_from_epoch") or 0)


def ordered_trials(study: optuna.Study) -> list[FrozenTrial]:
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sorted((t for t in study.get_trials(deepcopy=False) if t.state in finished), key=lambda t: t.number)


def total_epochs(study: optuna.Study) -> int:
    return sum(epochs_spent(t) for t in ordered_trials(study))


def run_study(run: Run, out: Path, budget_epochs: int, scale: float) -> Path:
    """Run the study until it has spent ``budget_epochs`` (resumable: an existing database is continued)."""
    studies = out / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    write_spec(studies / f"{run.name}.toml", spec_tables(run, scale))
    log = out / "logs" / f"{run.name}.log"
    single = "recipe" in STRATEGIES[run.strategy]
    trial_epochs = STRATEGIES[run.strategy].get("epochs", BASELINE_EPOCHS)
    while True:
        handle = load_study(run.name, None, studies) if (studies / f"{run.name}.db").exists() else None
        done = ordered_trials(handle.study) if handle else []
        if (single and done) or (handle and total_epochs(handle.study) >= budget_epochs):
            return studies
        # as many trials as the budget left would take unpruned, plus one: the study stops close to the budget
        more = 1 if single else (budget_epochs - (total_epochs(handle.study) if handle else 0)) // trial_epochs + 1
        run_worker(search_run(run.name, studies, "--trials", len(done) + more, "--threads", 1, "--seed", run.repeat,
                              "--device", "cpu"), log)


def incumbents(trials: list[FrozenTrial], cost: Callable[[FrozenTrial], int] = epochs_spent
               ) -> list[tuple[int, FrozenTrial]]:
    """(compute spent when it became the best, trial) for each change of the best feasible COMPLETE trial, the
    compute counted by ``cost`` (default: epochs)."""
    changes, spent, best = [], 0, None
    for trial in trials:
        spent += cost(trial)
        if trial.state == TrialState.COMPLETE and is_feasible(trial) and (best is None or trial.value > best.value):
            best = trial
            changes.append((spent, trial))
    return changes


def test_score(run: Run, studies: Path, trial: FrozenTrial, data_dir: Path, out: Path) -> float:
    """Export ``trial`` with its own weights and score its kernel on the held-out test clips (cached)."""
    cache = out / "exports" / f"{run.name}-{trial.number}.json"
    if cache.exists():
        return json.loads(cache.read_text())["test_lwlrap"]
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        subprocess.run([sys.executable, "-m", "search.best", "--study", run.name, "--studies-dir", str(studies),
                        "--export", "--reuse-checkpoints", "--trial", str(trial.number), "--out", str(export)],
                       cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
        submission = Path(tmp) / "submission.csv"
        run_kernel(export, data_dir / "test", data_dir / "sample_submission.csv", submission, device="cpu")
        score = score_submission(submission, data_dir / "test_labels.csv").lwlrap
    atomic_write_text(cache, json.dumps({"test_lwlrap": score, "trial": trial.number, "study": run.name}))
    return score


def measure(run: Run, out: Path, budget_epochs: int, scale: float) -> dict:
    record_path = out / "records" / f"{run.name}.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record["budget_epochs"] >= budget_epochs:
            return record
    started = time.perf_counter()
    studies = run_study(run, out, budget_epochs, scale)
    data_dir = ensure_builtin(run.data, scale=scale)
    trials = ordered_trials(load_study(run.name, None, studies).study)
    single = "recipe" in STRATEGIES[run.strategy]  # one training: its result counts whatever the budget
    record = {"data": run.data, "strategy": run.strategy, "repeat": run.repeat, "budget_epochs": budget_epochs,
              "trials": [{"number": t.number, "state": t.state.name, "value": t.value, "epochs": epochs_spent(t),
                          "wall_s": float(t.user_attrs.get("wall_time") or 0.0),
                          "startup": t.user_attrs.get("startup")} for t in trials],
              "incumbents": [{"epochs": spent, "trial": t.number, "val": t.value,
                              "test": test_score(run, studies, t, data_dir, out)}
                             for spent, t in incumbents(trials) if spent <= budget_epochs or single]}
    record["bench_s"] = time.perf_counter() - started
    atomic_write_text(record_path, json.dumps(record, indent=1))
    last = record["incumbents"][-1] if record["incumbents"] else None
    print(f"{run.name}: {len(trials)} trials, {sum(t['epochs'] for t in record['trials'])} epochs; "
          + (f"best #{last['trial']} val {last['val']:.4f} test {last['test']:.4f}" if last else
             "no trial completed within the budget"), flush=True)
    return record


def test_at(record: dict, epochs: int) -> float | None:
    """Held-out test lwlrap of what the study would have exported after ``epochs`` epochs (None: nothing yet).

    A single training (``seed-recipe``) is its result at any budget that covers its cost, the repeat's budget
    notwithstanding.
    """
    if "recipe" in STRATEGIES[record["strategy"]]:
        done = record["incumbents"][-1] if record["incumbents"] else None
        return done["test"] if done and done["epochs"] <= epochs else None
    if epochs > record["budget_epochs"]:  # this repeat stopped at a smaller budget
        return None
    held = [i["test"] for i in record["incumbents"] if i["epochs"] <= epochs]
    return held[-1] if held else None


def table(records: list[dict], budgets: list[int]) -> str:
    head = " | ".join(f"{b // BASELINE_EPOCHS}B ({b} ep)" for b in budgets)
    lines = [f"| data | strategy | repeats | test lwlrap at {head} | trials at {budgets[-1] // BASELINE_EPOCHS}B |",
             "|---|---|---|" + "---|" * len(budgets) + "---|"]
    for data, strategy in sorted({(r["data"], r["strategy"]) for r in records},
                                 key=lambda k: (k[0], list(STRATEGIES).index(k[1]))):
        group = [r for r in records if r["data"] == data and r["strategy"] == strategy]
        cells = []
        for budget in budgets:
            values = [v for v in (test_at(r, budget) for r in group) if v is not None]
            cells.append(f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]"
                         + ("" if len(values) == len(group) else f" ({len(values)} of {len(group)})")
                         if values else "—")
        counts = [sum(1 for _ in trials_within(r, budgets[-1])) for r in group
                  if r["budget_epochs"] >= budgets[-1] or "recipe" in STRATEGIES[strategy]]
        trials = f"{statistics.median(counts):.0f}" if counts else "—"  # no repeat ran that far
        lines.append(f"| {data} | {strategy} | {len(group)} | " + " | ".join(cells) + f" | {trials} |")
    return "\n".join(lines)


def trials_within(record: dict, budget: int):
    spent = 0
    for trial in record["trials"]:
        spent += trial["epochs"]
        if spent > budget:
            return
        yield trial


def plot(records: list[dict], budget: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["data"] for r in records})
    figure, axes = plt.subplots(1, len(sets), figsize=(6.5 * len(sets), 4.5), squeeze=False, sharey=False)
    grid = list(range(STEP_EPOCHS, budget + 1, STEP_EPOCHS))
    for axis, data in zip(axes[0], sets):
        for index, strategy in enumerate(s for s in STRATEGIES if any(r["strategy"] == s for r in records)):
            group = [r for r in records if r["data"] == data and r["strategy"] == strategy]
            if not group:
                continue
            colour = f"C{index}"
            if "recipe" in STRATEGIES[strategy]:
                values = [r["incumbents"][-1]["test"] for r in group if r["incumbents"]]
                if not values:
                    continue
                axis.axhline(statistics.median(values), color=colour, linestyle="--",
                             label=f"{strategy} (one training, {STRATEGIES[strategy]['recipe']['optim.epochs']} ep)")
                axis.axhspan(min(values), max(values), color=colour, alpha=0.08)
                continue
            xs, medians, lows, highs = [], [], [], []
            for epochs in grid:
                values = [v for v in (test_at(r, epochs) for r in group) if v is not None]
                # past the budget where a repeat stopped (--full-repeats), the line goes on with the others
                if values and len(values) >= min(len(group), 2):
                    xs.append(epochs / BASELINE_EPOCHS)
                    medians.append(statistics.median(values))
                    lows.append(min(values))
                    highs.append(max(values))
            axis.step(xs, medians, where="post", color=colour, label=strategy)
            axis.fill_between(xs, lows, highs, step="post", color=colour, alpha=0.15)
        axis.set_title(f"{data}: exported best on held-out test clips")
        axis.set_xlabel(f"compute spent (B = one {BASELINE_EPOCHS}-epoch baseline training)")
        axis.set_ylabel("test lwlrap (median, band = min..max of repeats)")
        axis.grid(alpha=0.3)
    # one legend below both panels: inside either it hid part of the bands
    legend = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.legend(legend.values(), legend.keys(), loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def load_records(out: Path, data: list[str], strategies: list[str]) -> list[dict]:
    records = [json.loads(path.read_text()) for path in sorted((out / "records").glob("*.json"))]
    return [r for r in records if r["data"] in data and r["strategy"] in strategies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=["demo", "sampled"])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budgets", type=int, nargs="+", default=[6, 15, 30],
                        help=f"budget points in units of B = {BASELINE_EPOCHS} epochs; studies run to the largest")
    parser.add_argument("--full-repeats", type=int,
                        help="only this many repeats run to the largest budget, the others to the one below it")
    parser.add_argument("--scale", type=float, default=1.0, help="size of the built-in data sets")
    parser.add_argument("--jobs", type=int, default=2, help="studies run side by side (one torch thread each)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-quality")
    parser.add_argument("--table", action="store_true", help="table and plot of the records in --out; run nothing")
    parser.add_argument("--plot", type=Path, help="where the anytime plot goes (default --out/anytime.png)")
    args = parser.parse_args()
    budgets = [b * BASELINE_EPOCHS for b in sorted(args.budgets)]
    if not args.table:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        for data in args.data:
            ensure_builtin(data, scale=args.scale)
        runs = [Run(d, s, r) for r in range(args.repeats) for s in args.strategies for d in args.data]

        def budget(run: Run) -> int:  # repeats past --full-repeats stop at the second-largest budget
            return budgets[-1] if args.full_repeats is None or run.repeat < args.full_repeats else budgets[-2]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda run: measure(run, args.out, budget(run), args.scale), runs))
    records = load_records(args.out, args.data, args.strategies)
    if not records:
        sys.exit(f"error: {args.out / 'records'}: no records of {', '.join(args.data)} (run the benchmark first)")
    print(table(records, budgets))
    plot(records, budgets[-1], args.plot or args.out / "anytime.png")


if __name__ == "__main__":
    main()
