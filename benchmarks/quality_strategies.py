"""The search-quality benchmark's strategies, as data, and its arithmetic: what a strategy ships at a budget, and
whether the shipped search meets its targets.

A strategy is the search part of a spec ([sampler], [startup], [pruner], the trial budget in epochs and, for a
cross-validated one, ``[study] folds``) over the demo spec's space and base, or one training of that base with fixed
overrides (``train_once``: a flat line). Whatever it is, what it ships is what ``python -m search.best --export``
exports by default (``search.kaggle.recipes.default_recipe``): a trial that cross-validated all its folds ships its
fold models as trained (no epochs), any other trial five retrained fold models (5x its epochs). Compute is counted
in epochs, search plus export, in units of B = one 10-epoch baseline training.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from benchmarks.harness import STUDIES, read_spec
from search.kaggle.recipes import DEFAULT_RECIPES, RECIPES, Recipe

DEMO_SPEC = STUDIES / "demo.toml"
BASELINE_EPOCHS = 10  # B: one training of the demo spec's base; every budget is a multiple of it
VAL_FRACTION = 0.4  # pinned, not read from demo.toml: the recorded studies stay comparable if the spec moves
DEFAULT_FOLDS = 5  # K of the cross-validated strategies unless --folds says otherwise
OURS_EPOCHS = 30  # the shipped specs' trial budget (3B)

# The search part of a spec: [sampler], [startup], [pruner] and the trial budget in epochs.
OURS_TPE = {"name": "tpe", "n_startup_trials": 10, "multivariate": True, "group": True, "constant_liar": True}
# Optuna 5's TPESampler() as `optuna.create_study(direction="maximize")` builds it: always multivariate,
# constant liar on, group off, 10 random startup trials.
OPTUNA_TPE = {"name": "tpe", "n_startup_trials": 10, "multivariate": True, "group": False, "constant_liar": True}
NEAR_BASELINE = {"near_baseline": 6, "max_changes": 2}
NO_STARTUP = {"near_baseline": 0}
# ASHA rungs at 3, 9 and 27 keeping the top third, no decision before 4 trials reached a rung
OURS_ASHA = {"name": "asha", "min_resource": 3, "reduction_factor": 3, "min_early_stopping_rate": 0, "min_trials": 4}
# The knob sweep's one-knob winners (benchmarks/README.md, "The space, knob by knob"), stacked by hand: width 0.25,
# cosine to 0, one frequency mask of 7 bins, mixup 0.5, Lsoft beta 0.3 on the noisy clips at 2 curated per noisy.
STACKED_SWEEP = {"model.width": 0.25, "optim.schedule": "cosine", "optim.eta_min": 0.0, "augment.freq_masks": 1,
                 "augment.freq_mask_bins": 7, "augment.mixup_alpha": 0.5, "loss.name": "lsoft", "loss.lsoft_beta": 0.3,
                 "data.use_noisy": True, "data.curated_noisy_ratio": 2.0}
CV_RACE = {**OURS_ASHA, "fold_reduction_factor": 2, "fold_min_trials": 1}
STACK = {**NEAR_BASELINE, "stack": True, "stack_neighbours": 2}
STRATEGIES: dict[str, dict[str, Any]] = {
    # the shipped specs (a test checks it): TPE (group, liar), 6 near-baseline startup trials, 30-epoch trials, ASHA
    "ours": {"epochs": OURS_EPOCHS, "sampler": OURS_TPE, "startup": NEAR_BASELINE, "pruner": OURS_ASHA},
    # the same, each trial a K-fold cross-validation raced at the fold boundaries (half go on at each)
    "ours-cv": {"epochs": OURS_EPOCHS, "cv": True, "sampler": OURS_TPE, "startup": NEAR_BASELINE,
                "pruner": {**OURS_ASHA, "fold_reduction_factor": 2}},
    # ... and after the startup trials the baseline with every change that beat it, then its neighbours
    "ours-cv-stack": {"epochs": OURS_EPOCHS, "cv": True, "sampler": OURS_TPE,
                      "startup": {**NEAR_BASELINE, "stack": True, "stack_neighbours": 2},
                      "pruner": {**OURS_ASHA, "fold_reduction_factor": 2}},
    # Design points after the first run (ours-cv finished 2 trials by 30B): the fold race with its own quorum of 1
    # (a challenger goes on to fold 1 only if it is in the top half of those that finished fold 0, the baseline
    # among them), 10-epoch trials at K = 5 (50 epochs a cross-validation) or 30-epoch trials at K = 3 (90)
    "cv-10ep": {"epochs": 10, "cv": True, "folds": 5, "sampler": OURS_TPE, "startup": NEAR_BASELINE,
                "pruner": CV_RACE},
    "cv-10ep-stack": {"epochs": 10, "cv": True, "folds": 5, "sampler": OURS_TPE, "startup": STACK, "pruner": CV_RACE},
    "cv-30ep-stack": {"epochs": OURS_EPOCHS, "cv": True, "folds": 3, "sampler": OURS_TPE, "startup": STACK,
                      "pruner": CV_RACE},
    # 30-epoch trials at K = 5 (150 epochs a cross-validation): its baseline ships what no-search ships
    "cv-30ep-k5-stack": {"epochs": OURS_EPOCHS, "cv": True, "folds": 5, "sampler": OURS_TPE, "startup": STACK,
                         "pruner": CV_RACE},
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
    # what a user gets without searching: the shipped spec's baseline trial, trained once
    "no-search": {"train_once": {"optim.epochs": OURS_EPOCHS}},
    # an expert line, not a strategy: the sweep chose its winners on these sets' test labels
    "stacked-sweep": {"train_once": {"optim.epochs": OURS_EPOCHS, **STACKED_SWEEP}},
    # the hand tuning's kept changes (its "BCE + min-max BCE" had no gradient in the min-max term: plain BCE)
    "seed-recipe": {"train_once": {"optim.epochs": 3 * BASELINE_EPOCHS, "optim.batch_size": 64,
                                   "optim.schedule": "cosine", "optim.eta_min": 1e-5, "augment.mixup_alpha": 1.0}},
}
ONE_TRAINING_SPACE = {"model.dropout": {"float": [0.0, 0.5], "step": 0.05}}  # a spec needs a space; never sampled
# What the search that ships is measured against; the others (ours-10ep, random, hyperband, seed-recipe) are the
# earlier tables'.
DEFAULT_STRATEGIES = ("ours", "ours-cv", "ours-cv-stack", "no-search", "optuna-defaults", "stacked-sweep")
# the searches that may ship next: the targets are checked for each
CANDIDATES = ("ours-cv", "ours-cv-stack", "cv-10ep", "cv-10ep-stack", "cv-30ep-stack", "cv-30ep-k5-stack")
LEVEL = 0.005  # "level with": at most this far below (a quarter of the demo base's 3-seed test spread, 0.022)


@dataclass(frozen=True)
class Run:
    """One study of the benchmark: a strategy on a data set, one repeat (its seed)."""

    data: str
    strategy: str
    repeat: int
    folds: int = DEFAULT_FOLDS  # K of a cross-validated strategy; the others ignore it
    epochs: int | None = None  # every training's epochs instead of the strategy's own (a tiny run)

    @property
    def cv(self) -> bool:
        return bool(STRATEGIES[self.strategy].get("cv"))

    @property
    def once(self) -> dict[str, Any] | None:
        """The overrides of a one-training strategy (a flat line); None for a search."""
        return STRATEGIES[self.strategy].get("train_once")

    @property
    def trial_epochs(self) -> int:
        """Epochs of one training (of one fold, cross-validated)."""
        return self.epochs or (self.once["optim.epochs"] if self.once else STRATEGIES[self.strategy]["epochs"])

    @property
    def label(self) -> str:
        """The strategy as the table names it (a cross-validated one with its K)."""
        return f"{self.strategy} K={self.folds}" if self.cv else self.strategy

    @property
    def name(self) -> str:
        return (f"q-{self.data}-{self.strategy}" + (f"-k{self.folds}" if self.cv else "")
                + (f"-e{self.epochs}" if self.epochs else "") + f"-r{self.repeat}")


def spec_tables(run: Run, scale: float) -> dict[str, dict]:
    """The demo spec with this run's data set, strategy, budget and seeds; every trial keeps its weights."""
    demo = read_spec(DEMO_SPEC)
    strategy = STRATEGIES[run.strategy]
    once = run.once or {}
    study = {"data": run.data, "data_scale": scale, "keep_weights": 100000, "epochs": run.trial_epochs,
             **({"folds": run.folds} if run.cv else {})}
    base = {**demo["base"], "data.val_fraction": VAL_FRACTION, **once, **({"seed": run.repeat} if once else {})}
    base.pop("optim.epochs", None)  # the trial budget is [study] epochs
    if once:
        search = {"sampler": {"name": "random"}, "startup": NO_STARTUP, "pruner": {"name": "none"},
                  "space": ONE_TRAINING_SPACE}
    else:
        search = {"sampler": strategy["sampler"], "startup": {"seed": run.repeat, **strategy["startup"]},
                  "pruner": strategy["pruner"], "space": demo["space"]}
    return {"study": study, "base": base, **search}


# -- compute: search plus export ----------------------------------------------------------------------------------
def export_epochs(recipe: Recipe, trial_epochs: int) -> int:
    """Epochs ``recipe`` trains to export a trial of ``trial_epochs`` (export.json's ``trained_epochs``): none for a
    cross-validated trial's own fold models, each model's epochs for the others."""
    if recipe.trial_folds:
        return 0
    if recipe.models is None:
        raise ValueError(f"recipe {recipe.name}: its number of models is the selection's; not a default export")
    return recipe.models * recipe.epochs_scale * trial_epochs


def planned_export_epochs(run: Run) -> int:
    """What the default export of this run's best will cost, as its study is planned (its stop budget): nothing for
    a cross-validated trial, else the first default recipe's (the one that fits the kernel budget on the demo
    sets)."""
    return 0 if run.cv else export_epochs(RECIPES[DEFAULT_RECIPES[0]], run.trial_epochs)


def shipped(incumbents: Sequence[Mapping[str, Any]], budget: int, searched: int | None) -> Mapping[str, Any] | None:
    """The change of best a user ships at ``budget`` epochs in all: the last whose search epochs (``epochs``, spent
    when it became the best) plus its export's (``export_epochs``) fit in it. None when none fits yet, or when the
    study stopped (``searched`` epochs) short of the budget less that export: a later trial might have won there.
    ``searched`` None: one training, complete whatever the budget."""
    chosen = None
    for change in incumbents:
        if change["epochs"] + change["export_epochs"] <= budget:
            chosen = change
    if chosen is None or (searched is not None and searched + chosen["export_epochs"] < budget):
        return None
    return chosen


def held_out_at(record: Mapping[str, Any], budget: int) -> float | None:
    """Held-out test lwlrap of what the record's strategy ships at ``budget`` (None: nothing, or not exported)."""
    change = shipped(record["incumbents"], budget, record["searched_epochs"])
    return None if change is None else change.get("test")


def trials_searched(record: Mapping[str, Any], budget: int) -> int | None:
    """How many trials the study had finished when what it ships at ``budget`` was chosen (the budget less the
    export); None when nothing ships there."""
    change = shipped(record["incumbents"], budget, record["searched_epochs"])
    if change is None:
        return None
    spent, count = 0, 0
    for trial in record["trials"]:
        spent += trial["epochs"]
        if spent > budget - change["export_epochs"]:
            break
        count += 1
    return count


def medians(records: Iterable[Mapping[str, Any]], budgets: Sequence[int]) -> dict[str, dict[str, dict[int, float]]]:
    """data -> strategy label -> budget -> median over the repeats that ship something there (all of them must:
    a budget some repeats did not reach has no median)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["data"], record["label"]), []).append(record)
    found: dict[str, dict[str, dict[int, float]]] = {}
    for (data, label), group in groups.items():
        for budget in budgets:
            values = [held_out_at(r, budget) for r in group]
            if values and all(v is not None for v in values):
                found.setdefault(data, {}).setdefault(label, {})[budget] = statistics.median(values)
    return found


# -- the targets --------------------------------------------------------------------------------------------------
def _b(epochs: int) -> str:
    return f"{epochs / BASELINE_EPOCHS:g}B"


def _nearest(budgets: Sequence[int], target_b: float) -> int:
    return min(budgets, key=lambda b: (abs(b - target_b * BASELINE_EPOCHS), b))


def target_checks(found: Mapping[str, Mapping[str, Mapping[int, float]]], budgets: Sequence[int]) -> list[str]:
    """One line per target, data set and candidate strategy (``CANDIDATES``), PASS, FAIL or n/a (a line it needs is
    not in the records), with the numbers: at least level with today's ``ours`` at every budget point; ahead of
    ``no-search`` by 0.02 at the point nearest 20B and by 0.04 nearest 45B; level with ``stacked-sweep`` there."""
    lines = []
    at_20, at_45 = _nearest(budgets, 20), _nearest(budgets, 45)
    for data in sorted(found):
        rows = found[data]
        for label in sorted(r for r in rows if r.split()[0] in CANDIDATES):
            mine = rows[label]
            lines.append(_versus_every_point(data, label, mine, rows.get("ours"), budgets))
            lines.append(_versus(data, label, mine, rows.get("no-search"), "no-search", at_20, 0.02))
            lines.append(_versus(data, label, mine, rows.get("no-search"), "no-search", at_45, 0.04))
            lines.append(_versus(data, label, mine, rows.get("stacked-sweep"), "stacked-sweep", at_45, -LEVEL))
    return lines


def _verdict(ok: bool | None) -> str:
    return "n/a " if ok is None else ("PASS" if ok else "FAIL")


def _versus(data: str, label: str, mine: Mapping[int, float], other: Mapping[int, float] | None, name: str,
            budget: int, margin: float) -> str:
    what = (f"ahead of {name} by >= {margin:.2f}" if margin > 0 else f"level with {name} (>= {name} - {-margin})")
    if other is None or budget not in other or budget not in mine:
        return f"{_verdict(None)} {data} {label}: {what} at {_b(budget)}: no median of both there"
    gain = mine[budget] - other[budget]
    return (f"{_verdict(gain >= margin)} {data} {label}: {what} at {_b(budget)}: {mine[budget]:.4f} vs "
            f"{other[budget]:.4f} ({gain:+.4f})")


def _versus_every_point(data: str, label: str, mine: Mapping[int, float], ours: Mapping[int, float] | None,
                        budgets: Sequence[int]) -> str:
    what = f"level with ours (>= ours - {LEVEL}) at every budget point"
    points = [b for b in budgets if ours is not None and b in ours]  # where ours ships nothing, anything is level
    if not points:
        return f"{_verdict(None)} {data} {label}: {what}: no median of ours"
    cells = [f"{_b(b)} " + (f"{mine[b]:.4f} vs {ours[b]:.4f}" if b in mine else f"nothing vs {ours[b]:.4f}")
             for b in points]
    ok = all(b in mine and mine[b] >= ours[b] - LEVEL for b in points)
    return f"{_verdict(ok)} {data} {label}: {what}: " + ", ".join(cells)
