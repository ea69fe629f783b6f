"""How each report plot is drawn (``search.views.plots`` decides what goes in and writes the files).

Figures are built with ``matplotlib.figure.Figure``, not pyplot: no GUI backend, no global figure list to
close, so the report draws the same on a headless GPU box as in a test. Complete trials are filled and
coloured, pruned trials hollow or dashed grey (``PRUNED_LABEL``), so a reader never mistakes a value cut
short for a finished one.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, MaxNLocator, PercentFormatter
from optuna.trial import FrozenTrial, TrialState

OBJECTIVE = "lwlrap"
PRUNED_LABEL = "pruned (last value, at the epoch it was cut)"
PRUNED_GREY = "0.55"
BEST_COLOUR = "#d62728"  # red marks the best trial in every plot
COMPLETE_COLOUR = "#1f77b4"
# tab10 with red first (the best curve) and without its grey, which marks pruned and unranked trials here
DISTINCT_COLOURS = [BEST_COLOUR, COMPLETE_COLOUR, "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
                    "#17becf"]
INACTIVE = -0.12  # parallel coordinates: where a trial without a conditional parameter crosses its axis
OBJECTIVE_MAP = "viridis"


@dataclass(frozen=True)
class TrialPoint:
    """A trial as the plots draw it: a COMPLETE trial's value, or a PRUNED trial's last reported value."""

    number: int
    value: float
    pruned: bool
    params: Mapping[str, Any]


@dataclass(frozen=True)
class ParamScale:
    """Where a parameter's values sit on an axis: categorical choices at 0..k-1 in the space's order,
    numbers on the space's range (log for log parameters)."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    integer: bool = False

    def fraction(self, value: Any) -> float:
        """The value's place on [0, 1]."""
        if self.choices is not None:
            return self.choices.index(value) / (len(self.choices) - 1) if len(self.choices) > 1 else 0.5
        if self.high <= self.low:
            return 0.5
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def tick_values(self) -> list[float]:
        """A numeric axis's ticks: both bounds, and round values (1-2-5 on log axes) not crowding them."""
        if self.high <= self.low:
            return [self.low]
        locator = LogLocator(subs=(1.0, 2.0, 5.0)) if self.log else MaxNLocator(nbins=4, integer=self.integer)
        inner = [float(v) for v in locator.tick_values(self.low, self.high) if self.low < v < self.high]
        apart = [v for v in inner if min(abs(self.fraction(v) - self.fraction(b)) for b in (self.low, self.high)) > 0.1]
        return [self.low, *apart, self.high]

    def ticks(self) -> list[tuple[float, str]]:
        """(fraction, label) pairs to label a parallel-coordinate axis with."""
        if self.choices is not None:
            return [(self.fraction(c), _label(c)) for c in self.choices]
        return [(self.fraction(v), self.label(v)) for v in self.tick_values()]

    def label(self, value: Any) -> str:
        return _label(int(round(value)) if self.integer else value)


def history(points: Sequence[TrialPoint], maximize: bool, failed: int = 0) -> Figure:
    """Objective per trial number, with the best-so-far line over completed trials only (a pruned value
    is an early epoch's, so it can never be the study's best)."""
    figure = Figure(figsize=(10, 5))
    ax = figure.subplots()
    complete = [p for p in points if not p.pruned]
    pruned = [p for p in points if p.pruned]
    if pruned:
        ax.scatter([p.number for p in pruned], [p.value for p in pruned], s=22, facecolors="none",
                   edgecolors=PRUNED_GREY, linewidths=0.9, label=PRUNED_LABEL, zorder=2)
    if complete:
        ax.scatter([p.number for p in complete], [p.value for p in complete], s=26, color=COMPLETE_COLOUR,
                   label="complete", zorder=3)
        accumulate = np.maximum.accumulate if maximize else np.minimum.accumulate
        best_so_far = list(accumulate([p.value for p in complete]))
        ax.step([p.number for p in complete] + [points[-1].number], best_so_far + best_so_far[-1:], where="post",
                color=BEST_COLOUR, linewidth=1.6, zorder=4, label=f"best so far (complete trials): {best_so_far[-1]:.4f}")
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"validation {OBJECTIVE}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize=9, frameon=False)
    left_out = f", {failed} failed (not shown)" if failed else ""
    ax.set_title(f"{len(complete)} complete, {len(pruned)} pruned{left_out}", fontsize=10)
    return figure


def intermediate_values(trials: Sequence[FrozenTrial], maximize: bool, highlighted: int, *,
                        fold_epochs: int | None = None) -> Figure:
    """Objective per epoch: the best ``highlighted`` trials (completed ones first, then pruned ones by
    their last value) in distinct colours, best on top, every other trial as a thin grey line. ``fold_epochs``:
    a cross-validated study's epochs per fold (its curves step to each fold's end after fold 1)."""
    def last(trial: FrozenTrial) -> float:
        value = trial.intermediate_values[max(trial.intermediate_values)]
        return value if math.isfinite(value) else (-math.inf if maximize else math.inf)

    ranked = sorted(trials, key=lambda t: (t.state != TrialState.COMPLETE, -last(t) if maximize else last(t)))
    curves = {t.number: np.array(sorted(t.intermediate_values.items())) for t in trials}
    figure = Figure(figsize=(11, 5.5))
    ax = figure.subplots()
    for rank, trial in enumerate(ranked[:highlighted]):
        pruned = trial.state == TrialState.PRUNED
        ax.plot(*curves[trial.number].T, color=DISTINCT_COLOURS[rank % len(DISTINCT_COLOURS)],
                linewidth=2.6 if rank == 0 else 1.5, linestyle="--" if pruned else "-", marker="o", markersize=3,
                zorder=3 + highlighted - rank,
                label=f"#{trial.number}  {last(trial):.4f}" + ("  (pruned)" if pruned else ""))
    others = ranked[highlighted:]
    if others:
        ax.add_collection(LineCollection([curves[t.number] for t in others], colors="0.8", linewidths=0.8,
                                         zorder=1, label=f"other trials ({len(others)})"))
    cut = [curves[t.number][-1] for t in trials if t.state == TrialState.PRUNED]
    if cut:
        ax.scatter(*np.array(cut).T, marker="x", s=16, color=PRUNED_GREY, linewidths=0.9, zorder=2,
                   label="where the pruner cut a trial")
    ax.autoscale_view()
    if fold_epochs:
        ax.set_xlabel(f"epoch of fold 1, then the end of each fold ({fold_epochs} epochs each)")
        ax.set_ylabel(f"validation {OBJECTIVE} (out-of-fold after fold 1)")
    else:
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {OBJECTIVE}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    shown = min(highlighted, len(ranked))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title_fontsize=9,
              title=f"best {shown} of {len(ranked)} trials" if shown < len(ranked) else f"{len(ranked)} trials")
    return figure


def importances(values: Mapping[str, float], caption: str = "") -> Figure:
    """Horizontal bars, most important on top, each labelled with its share."""
    names = sorted(values, key=lambda n: values[n])
    figure = Figure(figsize=(9, 1.5 + 0.3 * len(names)))
    ax = figure.subplots()
    bars = ax.barh(range(len(names)), [values[n] for n in names], color=COMPLETE_COLOUR)
    ax.bar_label(bars, labels=[f"{values[n]:.0%}" if values[n] >= 0.005 or values[n] == 0 else "<1%" for n in names],
                 padding=3, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.set_xlabel("importance (Optuna's default evaluator, PED-ANOVA; the bars sum to 100%)")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlim(0, max(values.values()) * 1.15)
    ax.grid(axis="x", alpha=0.3)
    if caption:  # Optuna's warnings can run to two long sentences: wrap them to the figure's width
        ax.set_title(textwrap.fill(caption, 100), fontsize=9, loc="left")
    return figure


def parallel_coordinates(points: Sequence[TrialPoint], scales: Sequence[ParamScale], maximize: bool,
                         importances: Mapping[str, float]) -> Figure:
    """One vertical axis per parameter plus the objective on the right; completed trials coloured by their
    value (best on top, the best one in red), pruned ones dashed grey behind them."""
    low, high = min(p.value for p in points), max(p.value for p in points)
    margin = 0.0 if high > low else 0.01  # one value, or all equal: still a usable axis
    objective = ParamScale(OBJECTIVE, low=low - margin, high=high + margin)
    axes = [*scales, objective]
    x = np.arange(len(axes), dtype=float)

    def line(point: TrialPoint) -> np.ndarray:
        return np.column_stack([x, [_place(scale, point) for scale in scales] + [objective.fraction(point.value)]])

    figure = Figure(figsize=(2.0 + 1.6 * len(axes), 6.5))
    ax = figure.subplots()
    complete = sorted((p for p in points if not p.pruned), key=lambda p: p.value if maximize else -p.value)
    pruned = [p for p in points if p.pruned]
    handles = []
    if pruned:
        ax.add_collection(LineCollection([line(p) for p in pruned], colors=PRUNED_GREY, linewidths=0.7,
                                         linestyles="--", alpha=0.45, zorder=1, label=PRUNED_LABEL))
        handles.append(Line2D([], [], color=PRUNED_GREY, linestyle="--", label=PRUNED_LABEL))
    if complete:
        # colours span the completed trials only: early-epoch pruned values would wash them into one hue
        values = np.array([p.value for p in complete])
        norm = Normalize(values.min(), values.max() if values.max() > values.min() else values.min() + 1e-3)
        coloured = LineCollection([line(p) for p in complete], cmap=OBJECTIVE_MAP, norm=norm, linewidths=1.3,
                                  alpha=0.9, zorder=2, label="complete")
        coloured.set_array(values)
        ax.add_collection(coloured)
        figure.colorbar(coloured, ax=ax, pad=0.02, fraction=0.03, label=f"validation {OBJECTIVE} (complete trials)")
        best = line(complete[-1])
        ax.plot(*best.T, color=BEST_COLOUR, linewidth=2.6, zorder=3)
        handles += [Line2D([], [], color=coloured.cmap(0.75), linewidth=1.5, label="complete (colour: value)"),
                    Line2D([], [], color=BEST_COLOUR, linewidth=2.6,
                           label=f"best (#{complete[-1].number}, {complete[-1].value:.4f})")]
    for i, scale in enumerate(axes):
        ax.axvline(i, color="0.25", linewidth=0.9, zorder=0)
        ticks = scale.ticks() if scale is not objective else [(objective.fraction(v), f"{v:.3f}")
                                                              for v in np.linspace(objective.low, objective.high, 5)]
        if scale is not objective and any(scale.name not in p.params for p in points):
            ticks.append((INACTIVE, "not set"))
        for y, text in ticks:
            ax.text(i - 0.04, y, text, ha="right", va="center", fontsize=8, zorder=4,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.75})
    # axis names as top x tick labels: one label per axis, readable back from the figure
    names = [scale.name.replace(".", ".\n", 1) + (f"\n{importances[scale.name]:.0%}" if scale.name in importances else "")
             for scale in axes]
    ax.set_xticks(x, names, fontsize=9)
    ax.xaxis.tick_top()
    ax.xaxis.get_major_ticks()[-1].label2.set_fontweight("bold")
    ax.tick_params(axis="x", length=0, pad=8)
    ax.set_yticks([])
    ax.spines[:].set_visible(False)
    ax.set_xlim(-0.6, len(axes) - 0.8)
    ax.set_ylim(INACTIVE - 0.06, 1.08)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=3, fontsize=9, frameon=False)
    return figure


def slice_grid(points: Sequence[TrialPoint], scales: Sequence[ParamScale], maximize: bool, columns: int) -> Figure:
    """One small panel per parameter, in a grid of ``columns``, the objective on a shared y axis."""
    columns = min(columns, len(scales))
    rows = math.ceil(len(scales) / columns)
    width = 3.5 if columns >= 3 else 4.5
    figure = Figure(figsize=(width * columns, 2.7 * rows + 0.6))
    # fixed spacing, not constrained layout: that one takes seconds to solve for 28 panels
    grid = figure.subplots(rows, columns, squeeze=False,
                           gridspec_kw={"hspace": 0.42, "wspace": 0.06,
                                        "top": 1.0 - 0.45 / figure.get_figheight(), "bottom": 0.02, "left": 0.05, "right": 0.99})
    complete = [p for p in points if not p.pruned]
    best = (max if maximize else min)(complete, key=lambda p: p.value) if complete else None
    # one y range for every panel, set by hand: sharey=True costs seconds of bookkeeping at 28 panels
    low, high = min(p.value for p in points), max(p.value for p in points)
    margin = 0.05 * (high - low) or 0.01
    for i, (ax, scale) in enumerate(zip(grid.flat, scales)):
        _slice_panel(ax, scale, points, best)
        ax.set_ylim(low - margin, high + margin)
        if i % columns:
            ax.tick_params(labelleft=False)
        else:
            ax.set_ylabel(OBJECTIVE, fontsize=9)
    for ax in list(grid.flat)[len(scales):]:
        ax.set_visible(False)
    handles = [Line2D([], [], linestyle="", marker="o", color=COMPLETE_COLOUR, label="complete"),
               Line2D([], [], linestyle="", marker="o", markerfacecolor="none", markeredgecolor=PRUNED_GREY,
                      label=PRUNED_LABEL),
               Line2D([], [], linestyle="", marker="*", markersize=11, color=BEST_COLOUR, label="best complete trial")]
    figure.legend(handles=handles, loc="upper center", ncol=3, fontsize=9, frameon=False)
    return figure


def _slice_panel(ax: Any, scale: ParamScale, points: Sequence[TrialPoint], best: TrialPoint | None) -> None:
    """Categories as labelled columns and small int ranges as integers, both with points spread a little
    sideways so they do not hide each other; log parameters on a log axis."""
    having = [p for p in points if scale.name in p.params]
    pruned = [p for p in having if p.pruned]
    complete = [p for p in having if not p.pruned]
    ax.scatter([_slice_x(scale, p) for p in pruned], [p.value for p in pruned], s=16, facecolors="none",
               edgecolors=PRUNED_GREY, linewidths=0.8, label=PRUNED_LABEL, zorder=2)
    ax.scatter([_slice_x(scale, p) for p in complete], [p.value for p in complete], s=16, color=COMPLETE_COLOUR,
               label="complete", zorder=3)
    if best is not None and scale.name in best.params:
        ax.scatter([_slice_x(scale, best)], [best.value], s=90, marker="*", color=BEST_COLOUR, zorder=4)
    count = f"  ({len(having)} of {len(points)} trials)" if len(having) < len(points) else ""
    ax.set_title(scale.name + count, fontsize=9)
    if scale.choices is not None:
        labels = [_label(c) for c in scale.choices]
        ax.set_xticks(range(len(labels)), labels, rotation=30 if sum(map(len, labels)) > 24 else 0)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    else:
        if scale.log:
            ax.set_xscale("log")
        ticks = scale.tick_values()
        ax.set_xticks(ticks, [scale.label(v) for v in ticks])
        ax.minorticks_off()
        if scale.log:
            ax.set_xlim(scale.low / 1.15, scale.high * 1.15)
        else:
            jittered = scale.integer and scale.high - scale.low <= 10
            margin = 0.5 if jittered else 0.05 * (scale.high - scale.low) or 0.5
            ax.set_xlim(scale.low - margin, scale.high + margin)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)


def _place(scale: ParamScale, point: TrialPoint) -> float:
    """Where a trial crosses a parallel-coordinate axis; at a category the lines fan out (over 30% of the
    gap between choices, at most 0.1 of the axis) instead of stacking into one."""
    if scale.name not in point.params:
        return INACTIVE
    spread = min(0.3 / max(len(scale.choices) - 1, 1), 0.1) if scale.choices is not None else 0.0
    return scale.fraction(point.params[scale.name]) + _jitter(point.number) * spread


def _slice_x(scale: ParamScale, point: TrialPoint) -> float:
    value = point.params[scale.name]
    if scale.choices is not None:
        return scale.choices.index(value) + _jitter(point.number) * 0.5
    if scale.integer and scale.high - scale.low <= 10:  # few integers (0-2 masks): columns, like categories
        return value + _jitter(point.number) * 0.3
    return float(value)


def _jitter(number: int) -> float:
    """A fixed offset in [-0.5, 0.5) per trial (golden-ratio sequence): evenly spread, same on every run."""
    return (number * 0.6180339887) % 1.0 - 0.5


def _label(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
