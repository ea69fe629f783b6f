"""The report's pictures, drawn with plain matplotlib so they stay readable at 25 parameters and 200 trials.

History, slice and parallel coordinates show COMPLETE trials at their value and PRUNED trials, hollow and
grey, at their last reported value: the lwlrap at the epoch the pruner cut them, below what they would have
reached, so never counted as a best. Under ASHA most trials are pruned and hold most of what the study
learnt. FAILED, running and waiting trials are left out. A plot that cannot be drawn yet is skipped with a
one-line note for ``report.md`` instead of failing the report. PNGs are written atomically.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from search.study.folds import trial_folds
from search.study.record import last_reported, trial_config
from search.views import figures as draw
from search.views.figures import ParamScale, TrialPoint
from trainer import atomic_path

# PED-ANOVA (Optuna 5's default importance evaluator) looks at the top 10% of trials and is stable with
# at least 5 of them, i.e. about 50 completed trials; below that the bars are a rough hint only.
IMPORTANCE_STABLE_TRIALS = 50
MAX_PARALLEL_AXES = 8  # beyond ~8 axes the lines between neighbours no longer tell a story
SLICE_COLUMNS = 4
MAX_SLICE_PANELS = 28  # 7 rows of 4: every parameter of the demo (26) and fat2019 (25) specs
HIGHLIGHTED_CURVES = 8


@dataclass(frozen=True)
class Plot:
    """One picture of the report: its file (None when skipped), title and a note for the reader."""

    name: str
    title: str
    path: Path | None
    note: str = ""


def plotted_trials(trials: Sequence[FrozenTrial]) -> list[TrialPoint]:
    """COMPLETE trials at their value and PRUNED trials at their last finite reported value, by number."""
    points = []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state == TrialState.COMPLETE:
            value = trial.value
        elif trial.state == TrialState.PRUNED and trial.intermediate_values:
            value = last_reported(trial)
        else:
            continue
        if value is not None and math.isfinite(value):
            points.append(TrialPoint(trial.number, float(value), trial.state == TrialState.PRUNED, trial.params))
    return points


def param_scales(trials: Sequence[FrozenTrial]) -> dict[str, ParamScale]:
    """Each parameter's axis from the search space (the newest trial's distribution), never from the values
    that happen to have been sampled; a value outside it (the spec changed under ``--force``) widens it."""
    distributions, seen = {}, {}
    for trial in sorted(trials, key=lambda t: t.number):
        distributions.update(trial.distributions)
        for name, value in trial.params.items():
            seen.setdefault(name, []).append(value)
    scales = {}
    for name, dist in distributions.items():
        values = seen.get(name, [])
        if isinstance(dist, CategoricalDistribution):
            extra = [v for v in dict.fromkeys(values) if v not in dist.choices]
            scales[name] = ParamScale(name, choices=tuple(dist.choices) + tuple(extra))
        else:
            scales[name] = ParamScale(name, low=min([dist.low, *values]), high=max([dist.high, *values]),
                                      log=dist.log, integer=isinstance(dist, IntDistribution))
    return scales


def rank_params(points: Sequence[TrialPoint], scales: Mapping[str, ParamScale],
                importances: Mapping[str, float]) -> tuple[list[str], str]:
    """Every parameter, most telling first, and how they were ranked: by importance, then (for the ones
    importances leave out, or all when there are none) by how closely the objective follows them."""
    association = {name: _association(points, scale) for name, scale in scales.items()}
    by_importance = sorted((n for n in importances if n in scales), key=lambda n: -importances[n])
    rest = sorted((n for n in scales if n not in importances), key=lambda n: (-association[n], n))
    if importances:
        how = "by parameter importance" + (", then by rank correlation with the objective" if rest else "")
    else:
        how = ("by rank correlation with the objective (correlation ratio for categories) over complete and "
               "pruned trials, as importances are unavailable")
    return by_importance + rest, how


def _association(points: Sequence[TrialPoint], scale: ParamScale) -> float:
    """How closely the objective follows a parameter, in [0, 1]: |Spearman correlation| for numbers, the
    correlation ratio for categories, times the share of trials that have the parameter (a conditional
    parameter set in 3 trials correlates perfectly by chance too often); 0 below 3 trials or one value."""
    pairs = [(p.params[scale.name], p.value) for p in points if scale.name in p.params]
    if len(pairs) < 3 or len({x for x, _ in pairs}) < 2:
        return 0.0
    y = np.array([v for _, v in pairs])
    if scale.choices is not None:
        groups = [y[[x == c for x, _ in pairs]] for c in scale.choices]
        between = sum(len(g) * (g.mean() - y.mean()) ** 2 for g in groups if len(g))
        total = ((y - y.mean()) ** 2).sum()
        strength = math.sqrt(between / total) if total > 0 else 0.0
    else:
        correlation = np.corrcoef(_ranks([float(x) for x, _ in pairs]), _ranks(y))[0, 1]
        strength = abs(correlation) if math.isfinite(correlation) else 0.0
    return float(strength) * len(pairs) / len(points)


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks with ties averaged (Spearman's), so the many equal values of a 0-2 integer carry no order."""
    values = np.asarray(values, dtype=float)
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    _, group = np.unique(values, return_inverse=True)
    return (np.bincount(group, ranks) / np.bincount(group))[group]


def write_plots(study: optuna.Study, out_dir: str | os.PathLike) -> list[Plot]:
    """Draw the five study plots into ``out_dir`` (history, intermediate values, importances, parallel
    coordinates, slice); returns what was written and why anything was skipped."""
    out_dir = Path(out_dir)
    trials = study.get_trials(deepcopy=False)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    points = plotted_trials(trials)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    curves = [t for t in finished if t.intermediate_values]
    scales = param_scales(finished)
    importances, importance_note = param_importances(study)
    ranked, ranked_how = rank_params(points, scales, importances)
    axes, panels = ranked[:MAX_PARALLEL_AXES], ranked[:MAX_SLICE_PANELS]
    failed = sum(t.state == TrialState.FAIL for t in trials)

    no_points = None if points else "skipped: no completed or pruned trial has a value yet"
    no_params = no_points or (None if ranked else "skipped: no trial has parameters")
    no_curves = None if curves else "skipped: no completed or pruned trial reported an intermediate value"
    left_out = f"{failed} failed trial{'s' if failed != 1 else ''} not shown" if failed else ""
    pruned = any(p.pruned for p in points)
    cut_short = "at their last reported value: the lwlrap at the epoch the pruner cut them, not what they would have reached"
    hollow = f"hollow grey points are pruned trials {cut_short}" if pruned else ""
    dashed = f"dashed grey lines are pruned trials {cut_short}" if pruned else ""
    chosen = (f"the {len(axes)} highest-ranked of {len(ranked)} parameters" if len(axes) < len(ranked)
              else f"all {len(ranked)} parameters") + f", ranked {ranked_how}"
    shown = f"{len(panels)} of {len(ranked)} parameters, " if len(panels) < len(ranked) else ""
    highlighted = (f"the best {HIGHLIGHTED_CURVES} trials in colour (completed ones first; a pruned one dashed), "
                   "the others in grey" if len(curves) > HIGHLIGHTED_CURVES else "")

    plots: list[Plot] = []

    def add(name: str, title: str, draw_figure: Callable[[], Any], skip_reason: str | None, note: str) -> None:
        if skip_reason:
            plots.append(Plot(name, title, None, skip_reason))
            return
        path = out_dir / f"{name}.png"
        save_figure(draw_figure(), path)
        plots.append(Plot(name, title, path, note))

    add("optimization_history", "Optimisation history",
        lambda: draw.history(points, maximize, failed), no_points, _join(hollow, left_out))
    add("intermediate_values", "Intermediate values (validation lwlrap per epoch)",
        lambda: draw.intermediate_values(curves, maximize, HIGHLIGHTED_CURVES, fold_epochs=fold_epochs(curves)),
        no_curves,
        _join(highlighted, "x marks where the pruner cut a trial" if pruned else "", left_out))
    add("param_importances", "Parameter importances", lambda: draw.importances(importances, importance_note),
        None if importances else f"skipped: {importance_note}", importance_note)
    add("parallel_coordinate", "Parallel coordinates",
        lambda: draw.parallel_coordinates(points, [scales[n] for n in axes], maximize, importances), no_params,
        _join(chosen, dashed, left_out))
    add("slice", "Slice (objective against each parameter)",
        lambda: draw.slice_grid(points, [scales[n] for n in panels], maximize, SLICE_COLUMNS), no_params,
        _join(f"{shown}panels ordered {ranked_how}", hollow, left_out))
    return plots


def param_importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """Optuna's default parameter importances and a caveat for the reader; ``{}`` with the reason when
    there are too few completed trials to compute them."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.params]
    if len(complete) < 2:
        return {}, f"importances need at least 2 completed trials with parameters, the study has {len(complete)}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            importances = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError) as error:  # e.g. no parameter shared by all completed trials
            return {}, f"importances could not be computed: {error}"
    messages = sorted({str(w.message).splitlines()[0] for w in caught})
    # PED-ANOVA warns "... Parameter importances will be equal." when too few trials separate the top
    # quantile from the rest; normalised, such a result would still show a misleading 100% bar.
    degenerate = [m for m in messages if "will be equal" in m]
    if degenerate or not importances or not any(value > 0 for value in importances.values()):
        reason = f" ({degenerate[0]})" if degenerate else ""
        return {}, f"importances are not informative with {len(complete)} completed trials{reason}"
    note = ""
    if len(complete) < IMPORTANCE_STABLE_TRIALS:
        note = (f"only {len(complete)} completed trials: PED-ANOVA is stable from about "
                f"{IMPORTANCE_STABLE_TRIALS}, so read these importances as a rough hint")
    elif messages:
        note = "; ".join(messages)
    return dict(importances), note


def save_figure(figure: Any, path: Path) -> None:
    """Save ``figure`` as a PNG, atomically (a pyplot-free Figure needs no closing)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")  # fit labels drawn outside the axes


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def fold_epochs(trials: Sequence[FrozenTrial]) -> int | None:
    """One fold's epochs in a cross-validated study (its trials record ``folds``), else None."""
    for trial in trials:
        if trial_folds(trial.user_attrs):
            try:
                return trial_config(trial).optim.epochs
            except (LookupError, ValueError):
                return None
    return None
