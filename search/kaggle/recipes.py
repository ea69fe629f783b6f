"""Export recipes: what ``search.best --export`` trains for Kaggle from a finished study.

A search ranks configs at the trial budget; the Kaggle score comes from what is finally trained. A recipe is
one answer to "train longer? all curated? folds? seeds? an ensemble?", as data: ``RECIPES``. The default is
the recipe that scored best on held-out test clips on both built-in sets (``benchmarks/bench_export.py``,
benchmarks/README.md "Export recipes"); the explicit flags (``--epochs``, ``--full-curated``, ``--folds``, ``--seeds``,
``--ensemble``, ``--reuse-checkpoints``) still export exactly what they say instead.
"""
from __future__ import annotations

from dataclasses import dataclass

from optuna.trial import FrozenTrial

from search.spec import Kernel
from search.study.folds import finished_folds
from trainer import ConfigError


@dataclass(frozen=True)
class Recipe:
    """One way to turn the study's best (or its greedy ensemble) into the exported models."""

    name: str
    summary: str  # what it trains, as the export prints it
    epochs_scale: int = 1  # each model trains this many times its trial's epochs (a cosine schedule stretches)
    full_curated: bool = False  # the validation clips are trained on too: no held-out score
    seeds: int = 1
    folds: int | None = None
    ensemble: int | None = None  # greedy selection rounds over the whole study's validation predictions
    trial_folds: bool = False  # a cross-validated trial's own fold models: nothing is trained

    @property
    def models(self) -> int | None:
        """How many models the kernel runs, when the recipe fixes it (an ensemble's selection decides its own, a
        cross-validated trial's folds theirs)."""
        return None if self.ensemble is not None or self.trial_folds else (self.folds or self.seeds)

    @property
    def as_trained(self) -> bool:
        """The trials' own configs unchanged: their kept weights are the models (``--reuse-checkpoints``)."""
        return self.epochs_scale == 1 and not self.full_curated and self.seeds == 1 and self.folds is None


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("cv-folds", "the trial's own fold models from its cross-validation, as trained (nothing is retrained)",
           trial_folds=True),
    Recipe("single", "the best trial's config, trained as its trial trained it"),
    Recipe("single-2x", "the best trial's config at 2x its epochs", epochs_scale=2),
    Recipe("single-3x", "the best trial's config at 3x its epochs", epochs_scale=3),
    Recipe("full-curated", "the best trial's config on all curated clips (no validation hold-out)",
           full_curated=True),
    Recipe("full-curated-2x", "the best trial's config on all curated clips at 2x its epochs", epochs_scale=2,
           full_curated=True),
    Recipe("folds-5", "the best trial's config, one model per curated fold of 5, pooled", folds=5),
    Recipe("seeds-3", "the best trial's config with 3 seeds, pooled", seeds=3),
    Recipe("ensemble-8", "a greedy ensemble of the study's trials (8 rounds), members as trained", ensemble=8),
    Recipe("ensemble-8-2x", "a greedy ensemble of the study's trials (8 rounds), members at 2x their epochs",
           ensemble=8, epochs_scale=2),
)}
# Measured by benchmarks/bench_export.py on both built-in sets (benchmarks/README.md "Export recipes"), best first: the default is
# the first whose models fit the spec's kernel budget (the last is one model, so it always fits). folds-5 led on
# sampled (+0.083 over single) and tied full-curated-2x on demo (+0.047); full-curated-2x is the best one model.
DEFAULT_RECIPES = ("folds-5", "full-curated-2x")


def recipe_named(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"--recipe {name!r}: expected one of {', '.join(RECIPES)}") from None


def over_budget(models: int | None, trial: FrozenTrial, kernel: Kernel | None) -> str | None:
    """Why ``models`` copies of ``trial``'s model do not fit the spec's kernel budget (the trial's measured
    ``kernel_time_s`` each), or None when they fit or nothing is known to say otherwise."""
    per_model = trial.user_attrs.get("kernel_time_s")
    if kernel is None or models is None or models <= 1 or not isinstance(per_model, (int, float)):
        return None
    limit = kernel.budget_s * kernel.safety
    if models * per_model <= limit:
        return None
    return (f"{models} models x {per_model:,.0f} s (trial {trial.number}'s projected kernel time) = "
            f"{models * per_model:,.0f} s > the kernel budget of {limit:,.0f} s ([kernel] budget_s x safety)")


def check_kernel_budget(label: str, models: int, trial: FrozenTrial, kernel: Kernel | None) -> None:
    """Refuse, before anything trains, models that would not fit the kernel budget together: one line."""
    why = over_budget(models, trial, kernel)
    if why is not None:
        raise ConfigError(f"{label}: {why}; choose fewer models")


def default_recipe(trial: FrozenTrial, kernel: Kernel | None) -> tuple[Recipe, str]:
    """The recipe for ``trial``, and why: a trial that cross-validated all its folds ships its fold models as
    trained (what its value measured); else the measured best recipe whose models fit the kernel budget. A
    cross-validated trial's K models were already checked against the budget when it ran."""
    folds = finished_folds(trial.user_attrs)
    if folds is not None:
        return RECIPES["cv-folds"], (f"trial {trial.number} cross-validated all {folds} folds: its out-of-fold lwlrap "
                                     f"is the score of exactly these {folds} models")
    passed = []
    for name in DEFAULT_RECIPES:
        recipe = RECIPES[name]
        why = over_budget(recipe.models, trial, kernel)
        if why is None:
            reason = "the best on held-out clips of both built-in sets that fits the kernel budget"
            return recipe, reason + "".join(f"; {p}" for p in passed)
        passed.append(f"{name} would not fit: {why}")
    raise AssertionError("the last default recipe is one model: it always fits")
