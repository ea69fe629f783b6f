"""The search strategy of a study: sampler, pruner and startup trials, built from the spec.

Every setting a result depends on is written in the spec (``[sampler]``, ``[pruner]``, ``[startup]``);
what a spec leaves out takes the defaults below, which the search-quality benchmark chose (benchmarks/README.md,
"Search quality") — never a library's implicit default, so an Optuna upgrade cannot change a study.
"""
from __future__ import annotations

import math
import random
import warnings
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

# name -> {setting: type}; the types are checked when the spec is read.
SAMPLER_SETTINGS: dict[str, dict[str, type]] = {
    "tpe": {"seed": int, "n_startup_trials": int, "multivariate": bool, "group": bool, "constant_liar": bool},
    "gp": {"seed": int, "n_startup_trials": int},
    "random": {"seed": int},
}
SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {
    # group: conditional params (head_hidden only with the mlp head, ...) join the joint model in their
    # own group instead of being sampled independently; constant_liar: parallel panes spread out.
    "tpe": {"n_startup_trials": 10, "multivariate": True, "group": True, "constant_liar": True},
    "gp": {"n_startup_trials": 10},
    "random": {},
}
PRUNER_SETTINGS: dict[str, dict[str, type]] = {
    "asha": {"min_resource": int, "reduction_factor": int, "min_early_stopping_rate": int, "min_trials": int,
             "fold_reduction_factor": int, "fold_min_trials": int},
    "hyperband": {"min_resource": int, "reduction_factor": int, "min_trials": int, "fold_reduction_factor": int,
                  "fold_min_trials": int},
    "median": {"n_startup_trials": int, "n_warmup_steps": int, "interval_steps": int, "min_trials": int,
               "fold_reduction_factor": int, "fold_min_trials": int},
    "none": {},
}
PRUNER_DEFAULTS: dict[str, dict[str, Any]] = {
    "asha": {"min_resource": 3, "reduction_factor": 2, "min_early_stopping_rate": 0, "min_trials": 8,
             "fold_reduction_factor": 2},
    "hyperband": {"min_resource": 2, "reduction_factor": 3, "min_trials": 4, "fold_reduction_factor": 2},
    "median": {"n_startup_trials": 0, "n_warmup_steps": 2, "interval_steps": 1, "min_trials": 4,
               "fold_reduction_factor": 2},
    "none": {},
}
MAX_FOLDS = 20  # TrainConfig's data.n_folds range
STARTUP_SETTINGS: dict[str, type] = {"near_baseline": int, "max_changes": int, "seed": int, "stack": bool,
                                     "stack_neighbours": int}
# stack: after the startup trials, queue the baseline with every change that beat it, as a hand tuner stacks
# what helped (``stacked_points``); off unless a spec turns it on.
STARTUP_DEFAULTS: dict[str, Any] = {"near_baseline": 6, "max_changes": 2, "seed": 0, "stack": False,
                                    "stack_neighbours": 2}


def make_sampler(settings: Mapping[str, Any], seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler a spec's ``[sampler]`` table describes (``name`` plus its settings); ``seed`` overrides."""
    values = {**SAMPLER_DEFAULTS[settings["name"]], **{k: v for k, v in settings.items() if k != "name"}}
    if seed is not None:
        values["seed"] = seed
    with warnings.catch_warnings():  # the spec chose its settings (TPE's ``group``): every CLI would print it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _SAMPLERS[settings["name"]](values)


_SAMPLERS: dict[str, Callable[[dict[str, Any]], optuna.samplers.BaseSampler]] = {
    "tpe": lambda v: optuna.samplers.TPESampler(**v),
    "gp": lambda v: optuna.samplers.GPSampler(**v),
    "random": lambda v: optuna.samplers.RandomSampler(**v),
}


def make_pruner(settings: Mapping[str, Any], max_epochs: int, *, folds: int | None = None
                ) -> optuna.pruners.BasePruner:
    """The pruner a spec's ``[pruner]`` table describes, over steps = epochs, wrapped in a rung quorum; with
    ``folds``, the epochs are fold 0's and a race at each fold boundary decides who pays for the next fold."""
    name = settings["name"]
    values = {**PRUNER_DEFAULTS[name], **{k: v for k, v in settings.items() if k != "name"}}
    min_trials = values.pop("min_trials", 0)
    fold_reduction_factor = values.pop("fold_reduction_factor", None)
    # the fold race's own quorum: a whole fold costs as much as a one-split trial, so waiting for min_trials
    # others at a boundary makes the first trials pay every fold; unset, it is the rungs' quorum
    fold_min_trials = values.pop("fold_min_trials", min_trials)
    inner = _PRUNERS[name](values, max_epochs)
    pruner = RungQuorumPruner(inner, min_trials) if min_trials else inner
    if folds is None or fold_reduction_factor is None:  # "none" never prunes: every trial pays every fold
        return pruner
    if fold_reduction_factor < 1:
        raise ValueError(f"fold_reduction_factor={fold_reduction_factor}: expected 1 (never cut at a fold) or more")
    if fold_min_trials < 0:
        raise ValueError(f"fold_min_trials={fold_min_trials}: expected 0 or more")
    return FoldRacePruner(pruner, max_epochs, folds, fold_reduction_factor, fold_min_trials)


_PRUNERS: dict[str, Callable[[dict[str, Any], int], optuna.pruners.BasePruner]] = {
    "asha": lambda v, e: optuna.pruners.SuccessiveHalvingPruner(**v),
    "hyperband": lambda v, e: optuna.pruners.HyperbandPruner(max_resource=e, **v),
    "median": lambda v, e: optuna.pruners.MedianPruner(**v),
    "none": lambda v, e: optuna.pruners.NopPruner(),
}


class RungQuorumPruner(optuna.pruners.BasePruner):
    """No prune decision at an epoch until ``min_trials`` other trials have reported that epoch.

    ASHA with ``min_resource = 1`` otherwise decides among the very few trials that reached a rung (early
    in a study: the baseline alone), which cuts every slower-starting config. The inner pruner is always
    consulted, so it records its rung values; only its "prune" is held back while the quorum is missing.
    """

    def __init__(self, inner: optuna.pruners.BasePruner, min_trials: int) -> None:
        self.inner = inner
        self.min_trials = min_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not self.inner.prune(study, trial):
            return False
        others = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                          TrialState.RUNNING))
        peers = sum(1 for t in others if t.number != trial.number and step in t.intermediate_values)
        return peers >= self.min_trials


class FoldRacePruner(optuna.pruners.BasePruner):
    """Racing k-fold cross-validations: inside fold 0 (steps 1..``epochs`` - 1) the inner pruner judges epochs as
    on one split; at the end of fold k (step ``(k + 1) x epochs``, the out-of-fold lwlrap of folds 0..k) a trial
    goes on to fold k + 1 only if it is in the top 1/``reduction_factor`` of the trials that reported that
    boundary, once ``min_trials`` others have (so the baseline and its first challengers are compared on equal
    folds). Steps inside later folds are never reported, so they are never judged."""

    def __init__(self, inner: optuna.pruners.BasePruner, epochs: int, folds: int, reduction_factor: int,
                 min_trials: int) -> None:
        self.inner = inner
        self.epochs = epochs
        self.folds = folds
        self.reduction_factor = reduction_factor
        self.min_trials = min_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        if step < self.epochs:
            return self.inner.prune(study, trial)
        if step % self.epochs or step >= self.epochs * self.folds:
            return False  # not a boundary, or the last fold is done: the trial completes
        others = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                          TrialState.RUNNING))
        peers = [t.intermediate_values[step] for t in others
                 if t.number != trial.number and step in t.intermediate_values]
        if len(peers) < self.min_trials:
            return False
        value = trial.intermediate_values[step]
        ranked = sorted([*peers, value], reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
        keep = max(1, len(ranked) // self.reduction_factor)
        cut = ranked[keep - 1]  # the worst value that still goes on; a tie with it goes on too
        return value < cut if study.direction == optuna.study.StudyDirection.MAXIMIZE else value > cut


def startup_points(space: Sequence[Any], baseline: Mapping[str, Any], *, count: int, max_changes: int,
                   seed: int, active: Callable[[Mapping[str, Any]], dict[str, Any]]
                   ) -> list[tuple[dict[str, Any], list[str]]]:
    """Points near the baseline, as the hand tuning explored: each changes 1..``max_changes`` knobs of the
    baseline (cycling through the knobs so the points cover different ones), every other knob at its
    baseline value. Returns (params, changed keys) per point; deterministic for ``seed``.

    ``space`` holds ``search.spec.Param``s; ``active`` keeps the params that apply to a candidate (a
    changed knob may switch a conditional one off). Knobs a change switches on are left to the sampler.
    """
    rng = random.Random(seed)
    knobs = [p for p in space if p.key in baseline]
    cycle: list[Any] = []
    points: list[tuple[dict[str, Any], list[str]]] = []
    for index in range(count):
        changes = 1 + index % max(1, max_changes)
        chosen: list[Any] = []
        while len(chosen) < min(changes, len(knobs)):
            if not cycle:
                cycle = list(knobs)
                rng.shuffle(cycle)
            param = cycle.pop()
            if param not in chosen:
                chosen.append(param)
        params = dict(baseline)
        for param in chosen:
            params[param.key] = _other_value(param.distribution, baseline[param.key], rng)
        points.append((active(params), [p.key for p in chosen]))
    return points


def _other_value(distribution: BaseDistribution, current: Any, rng: random.Random) -> Any:
    """A value of ``distribution`` other than ``current``: another choice, or a uniform (log-uniform) draw."""
    if isinstance(distribution, CategoricalDistribution):
        others = [c for c in distribution.choices if c != current]
        return rng.choice(others) if others else current
    assert isinstance(distribution, (FloatDistribution, IntDistribution))
    low, high = distribution.low, distribution.high
    for _ in range(20):
        if distribution.log:
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        if distribution.step is not None:
            value = round(low + round((value - low) / distribution.step) * distribution.step, 10)
        value = min(max(value, low), high)
        if isinstance(distribution, IntDistribution):
            value = int(round(value))
        else:
            value = float(value)
        if value != current:
            return value
    return current


def winning_changes(baseline: FrozenTrial, trials: Sequence[FrozenTrial], baseline_params: Mapping[str, Any],
                    direction: optuna.study.StudyDirection = optuna.study.StudyDirection.MAXIMIZE
                    ) -> dict[str, tuple[Any, float]]:
    """Each knob some trial changed from the baseline and beat it with: knob -> (value, gain). A trial is compared
    with the baseline at the last step both reported (the same rung, or the same fold boundary), so a trial cut at
    epoch 3 is judged on epoch 3. Of two winners changing one knob, the larger gain keeps it; a trial that changed
    several knobs lends them all its gain (the changes that came together stay together)."""
    sign = 1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    won: dict[str, tuple[Any, float]] = {}
    for trial in trials:
        if trial.number == baseline.number or trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        common = set(trial.intermediate_values) & set(baseline.intermediate_values)
        if not common:
            continue
        step = max(common)
        gain = sign * (trial.intermediate_values[step] - baseline.intermediate_values[step])
        changes = {k: v for k, v in trial.params.items() if k in baseline_params and baseline_params[k] != v}
        if gain <= 0 or not changes:
            continue
        for key, value in changes.items():
            if key not in won or gain > won[key][1]:
                won[key] = (value, gain)
    return won


def stacked_points(baseline_params: Mapping[str, Any], won: Mapping[str, tuple[Any, float]], *, neighbours: int,
                   active: Callable[[Mapping[str, Any]], dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """The baseline with every winning change (the stack), then up to ``neighbours`` stacks without one change,
    the weakest first (is it noise, or does it clash with the others?). Returns (params, note) per point; none
    while fewer than two changes won (one winner is its own trial already)."""
    if len(won) < 2:
        return []
    def named(changes: Mapping[str, Any]) -> str:
        return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(changes.items()))

    changes = {k: v for k, (v, _) in won.items()}
    points = [(active({**baseline_params, **changes}), f"stack: {named(changes)}")]
    for key in sorted(won, key=lambda k: won[k][1])[:neighbours] if len(won) > 2 else []:
        rest = {k: v for k, v in changes.items() if k != key}
        points.append((active({**baseline_params, **rest}), f"stack without {key}: {named(rest)}"))
    return points
