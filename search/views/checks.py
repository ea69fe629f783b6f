"""The checks after a study (tuning playbook): is the best point at the edge of the search space, which
features did it switch off, how many trials failed and why, how many diverged. Used by the report and by
the study's note in optuna-dashboard."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from search.views.format import format_value

EDGE_FRACTION = 0.1  # a best value within 10% of the range (log scale for log params) of a bound is "on the edge"


@dataclass(frozen=True)
class EdgeParam:
    """A parameter of the best trial at an end of its search space: within ``EDGE_FRACTION`` of a range's
    bound, or the smallest or largest of ordered numeric choices (``choices`` then lists them, sorted)."""

    name: str
    value: Any
    side: str  # "low" | "high"
    low: float
    high: float
    choices: tuple[float, ...] | None = None


def edge_params(best: FrozenTrial) -> list[EdgeParam]:
    """The numeric params of ``best`` at an end of the search space, bounds taken from the trial's own
    distributions (never from the values sampled so far). A 0 at a floor of 0 means "off" (no masks, no
    weight decay), not a range to widen, so it is left out (see ``zero_floor_params``)."""
    flagged = []
    for name, value in best.params.items():
        space = _numeric_space(best.distributions[name])
        if space is None or _is_zero_floor(value, space):
            continue
        low, high, log, choices = space
        if choices is not None:
            side = "low" if value == low else "high" if value == high else None
        else:
            if log:
                position = (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
            else:
                position = (value - low) / (high - low)
            side = "low" if position <= EDGE_FRACTION else "high" if position >= 1.0 - EDGE_FRACTION else None
        if side:
            flagged.append(EdgeParam(name, value, side, low, high, choices))
    return flagged


def zero_floor_params(best: FrozenTrial) -> list[str]:
    """The params of ``best`` that are 0 at a floor of 0 (a feature switched off)."""
    return [name for name, value in best.params.items()
            if (space := _numeric_space(best.distributions[name])) is not None and _is_zero_floor(value, space)]


def _numeric_space(dist: BaseDistribution) -> tuple[float, float, bool, tuple[float, ...] | None] | None:
    """(low, high, log, sorted choices or None) of a numeric range, or of categorical choices that are all
    numbers; None for strings, booleans, mixed or two choices (with two, every value is an end, so the
    check would fire on every study and say nothing) and ranges of one value."""
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        return (dist.low, dist.high, dist.log, None) if dist.high > dist.low else None
    if isinstance(dist, CategoricalDistribution) and len(dist.choices) >= 3 and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in dist.choices):
        ordered = tuple(sorted(dist.choices))
        return ordered[0], ordered[-1], False, ordered
    return None


def _is_zero_floor(value: Any, space: tuple[float, float, bool, tuple[float, ...] | None]) -> bool:
    return value == 0 and space[0] == 0


def check_lines(best: FrozenTrial | None, trials: Sequence[FrozenTrial], study_name: str | None = None) -> list[str]:
    """The checks after a study as markdown bullets: the best point on the edge of the space (or with a
    feature switched off) and, given the study's name, the next round that widens it; failed trials by reason,
    diverged trials."""
    lines = []
    if best is None:
        lines.append("- Edge of the space: no completed trial to check.")
    else:
        flagged = edge_params(best)
        for edge in flagged:
            if edge.choices is not None:
                end, more = ("smallest", "smaller") if edge.side == "low" else ("largest", "larger")
                lines.append(f"- Edge of the space: `{edge.name}` = {format_value(edge.value, 4)} is the {end} of the choices "
                             f"[{', '.join(format_value(c, 4) for c in edge.choices)}]; add a {more} choice and search again.")
            elif edge.side == "low" and edge.low == 0:
                lines.append(f"- Edge of the space: `{edge.name}` = {format_value(edge.value, 4)} is at the low end of "
                             f"[0, {format_value(edge.high, 4)}], next to 0; search more finely between 0 and it.")
            else:
                lines.append(f"- Edge of the space: `{edge.name}` = {format_value(edge.value, 4)} is at the {edge.side} end of "
                             f"[{format_value(edge.low, 4)}, {format_value(edge.high, 4)}]; widen the range past it and search again.")
        if study_name is not None:
            lines += next_round_lines(best, flagged, study_name)
        if not flagged:
            lines.append(f"- Edge of the space: no numeric parameter of the best trial lies within "
                         f"{EDGE_FRACTION:.0%} of a bound or at an end of its numeric choices.")
        off = zero_floor_params(best)
        if off:
            lines.append(f"- Switched off in the best trial (0 at the bottom of its range or choices, not an edge "
                         f"to widen): {', '.join(f'`{name}`' for name in off)}.")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    diverged = [t for t in trials if (_reason(t) or "").startswith("diverged")]
    reasons: dict[str, int] = {}
    for trial in failed:
        reason = (_reason(trial) or "unknown").split(":")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    detail = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items()))
    lines.append(f"- Failed: {len(failed)} of {len(trials)} trials" + (f" ({detail})." if detail else "."))
    lines.append(f"- Diverged (NaN/inf loss): {len(diverged)} trials"
                 + (f" ({', '.join(str(t.number) for t in diverged)})." if diverged else "."))
    return lines


def _reason(trial: FrozenTrial) -> str | None:
    """Why a trial failed or was pruned early (the worker's ``reason`` attr)."""
    reason = trial.user_attrs.get("reason")
    return None if reason is None else str(reason)


# -- the next round ---------------------------------------------------------------------------------------------
LOG_WIDEN = 3.0  # a log range at its edge is widened 3x past that bound
LINEAR_WIDEN = 0.5  # a linear range by half its width


def widened(edge: EdgeParam, dist: BaseDistribution) -> str | None:
    """The ``[space]`` value that widens ``edge``'s range past the bound the best trial sits on, as TOML; None
    where there is nothing to widen (a range next to 0: search finer instead; a choice set: add one by hand)."""
    if edge.choices is not None or not isinstance(dist, (FloatDistribution, IntDistribution)):
        return None
    low, high = dist.low, dist.high
    if edge.side == "low" and low == 0:
        return None
    if dist.log:
        low, high = (low / LOG_WIDEN, high) if edge.side == "low" else (low, high * LOG_WIDEN)
    else:
        width = (high - low) * LINEAR_WIDEN
        low, high = (max(0.0, low - width) if low >= 0 else low - width, high) if edge.side == "low" else \
            (low, high + width)
        low, high = round(low, 10), round(high, 10)  # 0.2 - 0.2 is 0, not 2.8e-17
    kind = "int" if isinstance(dist, IntDistribution) else "float"
    if kind == "int":
        low, high = math.floor(low), math.ceil(high)
        if dist.log:
            low = max(1, low)
    extras = (", log = true" if dist.log else "") + (f", step = {format_value(dist.step, 4)}"
                                                      if dist.step not in (None, 1) else "")
    return f"{{ {kind} = [{_toml_number(low)}, {_toml_number(high)}]{extras} }}"


def _toml_number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def next_round_lines(best: FrozenTrial, edges: Sequence[EdgeParam], study_name: str) -> list[str]:
    """The round-2 recipe for ``best``'s ``edges``: the changed ``[space]`` lines and the command that starts the
    next study from this one (``search.run --from``); [] when nothing is to widen."""
    changed = [(edge.name, value) for edge in edges
               if (value := widened(edge, best.distributions[edge.name])) is not None]
    if not changed:
        return []
    name = f"{study_name}-r2"
    return [f"- Next round: copy the spec with `[study] name = \"{name}\"` and these `[space]` lines (keep each "
            f"line's `when`), then start it from this study, which it inherits without retraining:", "",
            "  ```toml", *(f'  "{key}" = {value}' for key, value in changed), "  ```", "",
            f"  `python -m search.run --study {name} --from {study_name} --trials N`"]
