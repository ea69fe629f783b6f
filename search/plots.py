"""The report's pictures: Optuna's matplotlib visualisations of a study, written as PNGs atomically.

A plot that cannot be drawn yet (no completed trial, too few trials for importances) is skipped with a
one-line note for ``report.md`` instead of failing the whole report.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from trainer.atomic import atomic_path

# PED-ANOVA (Optuna 5's default importance evaluator) looks at the top 10% of trials and is stable with
# at least 5 of them, i.e. about 50 completed trials; below that the bars are a rough hint only.
IMPORTANCE_STABLE_TRIALS = 50


@dataclass(frozen=True)
class Plot:
    """One picture of the report: its file (None when skipped), title and a note for the reader."""

    name: str
    title: str
    path: Path | None
    note: str = ""


def write_plots(study: optuna.Study, out_dir: str | os.PathLike) -> list[Plot]:
    """Draw the five study plots into ``out_dir`` (history, intermediate values, importances, parallel
    coordinates, slice); returns what was written and why anything was skipped."""
    import matplotlib

    matplotlib.use("Agg")  # the report runs on headless GPU boxes; never try to open a window
    from optuna.visualization import matplotlib as optuna_mpl

    with warnings.catch_warnings():
        # Optuna marks its matplotlib backend experimental; that warning says nothing about this study.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _write_plots(study, Path(out_dir), optuna_mpl)


def _write_plots(study: optuna.Study, out_dir: Path, optuna_mpl: Any) -> list[Plot]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with_curves = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    with_params = [t for t in complete if t.params]
    plots: list[Plot] = []

    def add(name: str, title: str, draw: Callable[[], Any], skip_reason: str | None, note: str = "") -> None:
        if skip_reason:
            plots.append(Plot(name, title, None, skip_reason))
            return
        path = out_dir / f"{name}.png"
        _save(draw(), path)
        plots.append(Plot(name, title, path, note))

    no_complete = "skipped: no completed trial yet" if not complete else None
    no_params = no_complete or ("skipped: no completed trial has parameters" if not with_params else None)
    add("optimization_history", "Optimisation history",
        lambda: optuna_mpl.plot_optimization_history(study), no_complete)
    add("intermediate_values", "Intermediate values (validation lwlrap per epoch)",
        lambda: optuna_mpl.plot_intermediate_values(study),
        None if with_curves else "skipped: no trial reported an intermediate value")

    importances, importance_note = param_importances(study)
    add("param_importances", "Parameter importances",
        lambda: optuna_mpl.plot_param_importances(study),
        None if importances else f"skipped: {importance_note}", importance_note)
    add("parallel_coordinate", "Parallel coordinates", lambda: optuna_mpl.plot_parallel_coordinate(study), no_params)
    add("slice", "Slice (objective against each parameter)", lambda: optuna_mpl.plot_slice(study), no_params)
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


def _save(axes: Any, path: Path) -> None:
    """Save the figure behind ``axes`` (one Axes or an array of them) as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    first = axes.flat[0] if hasattr(axes, "flat") else axes
    figure = first.figure
    figure.set_size_inches(max(figure.get_figwidth(), 8.0), max(figure.get_figheight(), 5.0))
    with atomic_path(path) as tmp:
        # bbox_inches="tight" instead of tight_layout(): the parallel-coordinate colorbar axes reject the latter
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
