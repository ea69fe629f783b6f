"""Search quality per compute, on held-out test labels: what each strategy ships at equal compute, search plus export.

    python -m benchmarks.bench_search_quality --data demo sampled --repeats 3 --jobs 2 --out bench-quality
    python -m benchmarks.bench_search_quality --out bench-quality --table     # table, checks and plot from the records

Every strategy (``benchmarks/quality_strategies.py``: a search, or one training of a fixed config) runs as a study
(one worker, one torch thread, a sampler seed per repeat and worker restart, through ``python -m search.run``). Compute is counted in training
epochs, search plus export, in units of B = one 10-epoch baseline training. At every budget point P (15B, 20B,
30B, 45B, 60B by default) the strategy ships what a user gets from ``python -m search.best --export`` with no flags:
the study's best among the trials finished within P less that export's own epochs (five retrained fold models of a
one-split trial cost 5x its epochs; a cross-validated trial's own fold models nothing). That export's generated
kernel.py runs as its own process on the data set's held-out test clips and its submission is scored against
test_labels.csv. A study runs until it has spent the largest budget less its planned export. Data: the built-in
sets with 40% of the curated clips held out for validation (240 clips at scale 1; a cross-validated trial
validates on all of them).

Every study, export (by study, trial and recipe) and record is kept in ``--out`` (records/, exports/, studies/,
logs/), so an interrupted run, more repeats or a table of other budgets resume from what is there. ``--table``
prints the markdown table (median [min, max] of the repeats), the PASS/FAIL lines of the search's targets, and draws
the anytime plot. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from benchmarks.harness import REPO, exported_test_score, run_worker, search_run, write_spec
from benchmarks.quality_strategies import (
    BASELINE_EPOCHS,
    DEFAULT_FOLDS,
    DEFAULT_STRATEGIES,
    STRATEGIES,
    Run,
    export_epochs,
    held_out_at,
    medians,
    planned_export_epochs,
    shipped,
    spec_tables,
    target_checks,
    trials_searched,
)
from search.kaggle.recipes import default_recipe
from search.spec import load_spec
from search.study.record import is_feasible, load_study, trial_config
from trainer import atomic_write_text, ensure_builtin

RECORD_FORMAT = 2  # 2: exports counted in the budget (format 1 exported each trial's own weights, free)
DEFAULT_BUDGETS = [15, 20, 30, 45, 60]


def epochs_spent(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get("epochs_run") or 0) - int(trial.user_attrs.get("resumed_from_epoch") or 0)


def ordered_trials(study: optuna.Study) -> list[FrozenTrial]:
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sorted((t for t in study.get_trials(deepcopy=False) if t.state in finished), key=lambda t: t.number)


def total_epochs(study: optuna.Study) -> int:
    return sum(epochs_spent(t) for t in ordered_trials(study))


def run_study(run: Run, out: Path, search_epochs: int, scale: float) -> Path:
    """Run the study until it has spent ``search_epochs`` (one training: until its trial finished). Resumable: an
    existing database is continued."""
    studies = out / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    write_spec(studies / f"{run.name}.toml", spec_tables(run, scale))
    log = out / "logs" / f"{run.name}.log"
    # the most one trial can cost: a cross-validated one that pays for every fold
    trial_cost = run.trial_epochs * (run.folds if run.cv else 1)
    while True:
        handle = load_study(run.name, None, studies) if (studies / f"{run.name}.db").exists() else None
        done = ordered_trials(handle.study) if handle else []
        spent = total_epochs(handle.study) if handle else 0
        if (run.once and done) or (not run.once and handle and spent >= search_epochs):
            return studies
        # as many trials as the budget left would take unpruned, plus one: the study stops close to the budget
        more = 1 if run.once else (search_epochs - spent) // trial_cost + 1
        # a restarted worker with the same --seed would draw the same random proposals again: one seed per restart
        seed = run.repeat * 1000 + len(done)
        run_worker(search_run(run.name, studies, "--trials", len(done) + more, "--threads", 1, "--seed", seed,
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


def export_and_score(run: Run, studies: Path, change: dict, data_dir: Path, out: Path) -> dict:
    """Export the change's trial as ``search.best --export`` does by default, run its kernel on the held-out test
    clips and score it; cached in ``out/exports`` by study, trial and recipe. The export's trained epochs must be
    what the budget counted (else the accounting is wrong: raises)."""
    cache = out / "exports" / f"{run.name}-t{change['trial']}-{change['recipe']}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    test, exported, export_s, kernel_s = exported_test_score(
        run.name, studies, ["--trial", str(change["trial"]), "--threads", "1"], data_dir,
        out / "logs" / f"{run.name}-export.log")
    if (exported["recipe"], exported["trained_epochs"]) != (change["recipe"], change["export_epochs"]):
        raise RuntimeError(f"{run.name} trial {change['trial']}: exported {exported['recipe']} training "
                           f"{exported['trained_epochs']} epochs; the budget counted {change['recipe']} at "
                           f"{change['export_epochs']}")
    result = {"test": test, "study": run.name, "trial": change["trial"], "recipe": change["recipe"],
              "trained_epochs": exported["trained_epochs"], "export_s": round(export_s, 1),
              "kernel_s": round(kernel_s, 1)}
    atomic_write_text(cache, json.dumps(result))
    return result


def measure(run: Run, out: Path, budgets: list[int], scale: float) -> dict:
    """The run's record: its study run far enough for the largest budget, and the export shipped at each budget
    point scored (an earlier record's budget points are kept)."""
    record_path = out / "records" / f"{run.name}.json"
    earlier = json.loads(record_path.read_text()) if record_path.exists() else {}
    if earlier.get("format") == RECORD_FORMAT:
        if set(budgets) <= set(earlier["budgets"]):
            return earlier
        budgets = sorted(set(budgets) | set(earlier["budgets"]))
    started = time.perf_counter()
    studies = run_study(run, out, max(0, budgets[-1] - planned_export_epochs(run)), scale)
    data_dir = ensure_builtin(run.data, scale=scale)
    spec = load_spec(studies / f"{run.name}.toml")
    trials = ordered_trials(load_study(run.name, None, studies).study)
    changes = []
    for spent, trial in incumbents(trials):
        recipe, _ = default_recipe(trial, spec.kernel)
        changes.append({"epochs": spent, "trial": trial.number, "val": trial.value, "recipe": recipe.name,
                        "export_epochs": export_epochs(recipe, trial_config(trial, spec).optim.epochs)})
    searched = None if run.once else sum(epochs_spent(t) for t in trials)
    # a flat line's one training is exported whatever the budget; a search's best at each budget point
    chosen = changes[-1:] if run.once else [shipped(changes, b, searched) for b in budgets]
    for change in chosen:
        if change is not None and "test" not in change:
            change["test"] = export_and_score(run, studies, change, data_dir, out)["test"]
    record = {"format": RECORD_FORMAT, "data": run.data, "strategy": run.strategy, "label": run.label,
              "repeat": run.repeat, "folds": run.folds if run.cv else None, "trial_epochs": run.trial_epochs,
              "epochs_override": run.epochs,
              "scale": scale, "budgets": budgets, "budget_epochs": budgets[-1], "searched_epochs": searched,
              "trials": [{"number": t.number, "state": t.state.name, "value": t.value, "epochs": epochs_spent(t),
                          "folds_done": t.user_attrs.get("folds_done"),
                          "wall_s": float(t.user_attrs.get("wall_time") or 0.0), "startup": t.user_attrs.get("startup")}
                         for t in trials],
              "incumbents": changes}
    record["bench_s"] = time.perf_counter() - started
    atomic_write_text(record_path, json.dumps(record, indent=1))
    points = ", ".join(f"{b / BASELINE_EPOCHS:g}B " + (f"{v:.4f}" if v is not None else "—")
                       for b in budgets for v in [held_out_at(record, b)])
    spent = sum(epochs_spent(t) for t in trials)
    print(f"{run.name}: {len(trials)} trials, {spent} search epochs; ships (held-out test lwlrap) {points}", flush=True)
    return record


def _b(epochs: int) -> str:
    return f"{epochs / BASELINE_EPOCHS:g}B"


def _order(label: str) -> int:
    return list(STRATEGIES).index(label.split()[0])


def table(records: list[dict], budgets: list[int]) -> str:
    """Markdown: per data set and strategy, the median [min, max] over the repeats of the held-out test lwlrap of
    what ships at each budget point; how many trials the search had run for it and what the export was at the
    largest."""
    head = " | ".join(f"{_b(b)} ({b} ep)" for b in budgets)
    lines = [f"| data | strategy | repeats | test lwlrap at {head} | trials at {_b(budgets[-1])} | ships |",
             "|---|---|---|" + "---|" * len(budgets) + "---|---|"]
    for data, label in sorted({(r["data"], r["label"]) for r in records}, key=lambda k: (k[0], _order(k[1]), k[1])):
        group = [r for r in records if r["data"] == data and r["label"] == label]
        cells = []
        for budget in budgets:
            values = [v for v in (held_out_at(r, budget) for r in group) if v is not None]
            cells.append(f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]"
                         + ("" if len(values) == len(group) else f" ({len(values)} of {len(group)})")
                         if values else "—")
        counts = [n for n in (trials_searched(r, budgets[-1]) for r in group) if n is not None]
        ships = Counter(c["recipe"] for r in group for c in [shipped(r["incumbents"], budgets[-1], r["searched_epochs"])]
                        if c is not None)
        trials = f"{statistics.median(counts):.0f}" if counts else "—"  # no repeat ships anything there
        lines.append(f"| {data} | {label} | {len(group)} | " + " | ".join(cells)
                     + f" | {trials} | {', '.join(ships) or '—'} |")
    return "\n".join(lines)


def plot(records: list[dict], budgets: list[int], path: Path) -> None:
    """The anytime plot: per data set, each search's median (band: min..max of the repeats) at the budget points,
    each one-training line flat from what it costs on."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["data"] for r in records})
    figure, axes = plt.subplots(1, len(sets), figsize=(6.5 * len(sets), 4.5), squeeze=False)
    labels = sorted({r["label"] for r in records}, key=lambda k: (_order(k), k))
    for axis, data in zip(axes[0], sets):
        for index, label in enumerate(labels):
            group = [r for r in records if r["data"] == data and r["label"] == label]
            xs, mids, lows, highs = [], [], [], []
            for budget in budgets:
                values = [v for v in (held_out_at(r, budget) for r in group) if v is not None]
                if values and len(values) == len(group):
                    xs.append(budget / BASELINE_EPOCHS)
                    mids.append(statistics.median(values))
                    lows.append(min(values))
                    highs.append(max(values))
            if not xs:
                continue
            flat = group[0]["searched_epochs"] is None
            axis.plot(xs, mids, color=f"C{index}", marker="" if flat else "o", linestyle="--" if flat else "-",
                      label=label + (" (one training)" if flat else ""))
            axis.fill_between(xs, lows, highs, color=f"C{index}", alpha=0.12)
        axis.set_title(f"{data}: what ships, on held-out test clips")
        axis.set_xlabel(f"compute, search + export (B = one {BASELINE_EPOCHS}-epoch baseline training)")
        axis.set_ylabel("test lwlrap (median, band = min..max of repeats)")
        axis.grid(alpha=0.3)
    # one legend below the panels: inside either it hid part of the bands
    legend = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.legend(legend.values(), legend.keys(), loc="lower center", ncol=min(len(legend), 4), fontsize=8,
                  frameon=False)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def load_records(out: Path, data: list[str], strategies: list[str]) -> tuple[list[dict], int]:
    """This format's records of these sets and strategies in ``out/records``, and how many of an earlier format
    were left out."""
    found = [json.loads(path.read_text()) for path in sorted((out / "records").glob("*.json"))]
    current = [r for r in found if r.get("format") == RECORD_FORMAT]
    return [r for r in current if r["data"] in data and r["strategy"] in strategies], len(found) - len(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=["demo", "sampled"])
    parser.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budgets", type=float, nargs="+", default=DEFAULT_BUDGETS,
                        help=f"budget points (search + export) in units of B = {BASELINE_EPOCHS} epochs")
    parser.add_argument("--folds", type=int, help="K of every cross-validated strategy (default: each strategy's own, "
                        f"else {DEFAULT_FOLDS})")
    parser.add_argument("--epochs", type=int, help="every training's epochs instead of each strategy's (a tiny run)")
    parser.add_argument("--full-repeats", type=int,
                        help="only this many repeats run to the largest budget, the others to the one below it")
    parser.add_argument("--scale", type=float, default=1.0, help="size of the built-in data sets")
    parser.add_argument("--jobs", type=int, default=2, help="studies run side by side (one torch thread each)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-quality")
    parser.add_argument("--table", action="store_true", help="table, checks and plot of the records in --out")
    parser.add_argument("--plot", type=Path, help="where the anytime plot goes (default --out/anytime.png)")
    args = parser.parse_args()
    budgets = sorted({round(b * BASELINE_EPOCHS) for b in args.budgets})
    if not args.table:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        for data in args.data:
            ensure_builtin(data, scale=args.scale)
        runs = [Run(d, s, r, args.folds or STRATEGIES[s].get("folds", DEFAULT_FOLDS), args.epochs)
                for r in range(args.repeats) for s in args.strategies for d in args.data]

        def measured(run: Run) -> dict:  # repeats past --full-repeats stop at the second-largest budget
            full = args.full_repeats is None or run.repeat < args.full_repeats or len(budgets) < 2
            return measure(run, args.out, budgets if full else budgets[:-1], args.scale)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(measured, runs))
    records, earlier = load_records(args.out, args.data, args.strategies)
    if not records:
        sys.exit(f"error: {args.out / 'records'}: no records of {', '.join(args.data)} of this benchmark's format "
                 f"{RECORD_FORMAT} (run the benchmark first)")
    print(table(records, budgets))
    print("\nTargets (medians of the repeats):")
    print("\n".join(f"- {line}" for line in target_checks(medians(records, budgets), budgets)))
    if earlier:
        print(f"\n({earlier} record(s) of an earlier format left out: exports were not counted in their budget)")
    plot(records, budgets, args.plot or args.out / "anytime.png")


if __name__ == "__main__":
    main()
