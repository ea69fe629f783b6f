"""Export recipes: what ``search.best --export`` trains for Kaggle from a finished study.

A search ranks configs at the trial budget; the Kaggle score comes from what is finally trained. A recipe is
one answer to "train longer? all curated? folds? seeds? an ensemble?", as data: ``RECIPES``. The default is
the recipe that scored best on held-out test clips on both built-in sets (``benchmarks/bench_export.py``,
README "Export recipes"); the explicit flags (``--epochs``, ``--full-curated``, ``--folds``, ``--seeds``,
``--ensemble``, ``--reuse-checkpoints``) still export exactly what they say instead.
"""
from __future__ import annotations

from dataclasses import dataclass

from optuna.trial import FrozenTrial

from search.spec import Kernel
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

    @property
    def models(self) -> int | None:
        """How many models the kernel runs, when the recipe fixes it (an ensemble's selection decides its own)."""
        return None if self.ensemble is not None else (self.folds or self.seeds)

    @property
    def as_trained(self) -> bool:
        """The trials' own configs unchanged: their kept weights are the models (``--reuse-checkpoints``)."""
        return self.epochs_scale == 1 and not self.full_curated and self.seeds == 1 and self.folds is None


RECIPES: dict[str, Recipe] = {r.name: r for r in (
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
# Measured by benchmarks/bench_export.py on both built-in sets (README "Export recipes"): the best held-out test
# lwlrap on both, one model (no kernel time over the trial's), for 2x the trial's training.
DEFAULT_RECIPE = "full-curated-2x"
DEFAULT_TRIAL_RECIPE = "full-curated-2x"  # for ``--trial N`` when the default is an ensemble: the best one-config one
DEFAULT_WHY = ("the best on held-out test clips of both built-in sets, one model, no kernel time added; "
               "README 'Export recipes'")


def recipe_named(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"--recipe {name!r}: expected one of {', '.join(RECIPES)}") from None


def check_kernel_budget(label: str, models: int, trial: FrozenTrial, kernel: Kernel | None) -> None:
    """Refuse, before anything trains, ``models`` copies of ``trial``'s model whose projected kernel time (the
    trial's measured ``kernel_time_s`` each) is over the spec's budget: one line naming both numbers."""
    per_model = trial.user_attrs.get("kernel_time_s")
    if kernel is None or models <= 1 or not isinstance(per_model, (int, float)):
        return
    limit = kernel.budget_s * kernel.safety
    if models * per_model > limit:
        raise ConfigError(f"{label}: {models} models x {per_model:,.0f} s (trial {trial.number}'s projected kernel "
                          f"time) = {models * per_model:,.0f} s > the kernel budget of {limit:,.0f} s "
                          f"([kernel] budget_s x safety); choose fewer models")
