"""``python -m search.report --study NAME``: a study's record as ``report.md`` plus Optuna's plots as PNGs.

The report answers what the tuning playbook asks after a study: how trials ended, the top 10, the best
config as a diff from the baseline, the compute the pruner saved, time per trial, whether the best point
sits on the edge of the space, how many trials failed or diverged, and the command that reproduces the best.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from search.plots import Plot, write_plots
from search.console import format_duration
from search.storage import add_study_arguments, default_storage_url, open_storage, studies_dir
from trainer.atomic import atomic_write_text
from trainer.config import flatten

TOP_N = 10
EDGE_FRACTION = 0.1  # a best value within 10% of the range (log scale for log params) of a bound is "on the edge"
BASELINE_ATTRS = ("is_baseline", "baseline")
REASON_ATTRS = ("fail_reason", "prune_reason", "reason")
_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)


class StudyNotFoundError(LookupError):
    """The study database or the study in it does not exist; the message says which and what exists."""


def load_study(study_name: str, storage_url: str | None = None,
               studies: str | os.PathLike | None = None) -> tuple[optuna.Study, str]:
    """Open an existing study for reading (``storage_url`` or the default SQLite file); returns (study, url).

    Never creates anything: a missing database file or study raises ``StudyNotFoundError`` naming what exists.
    """
    if storage_url is None:
        database = studies_dir(studies) / f"{study_name}.db"
        if not database.is_file():
            raise StudyNotFoundError(f"no study database {database} (start workers with "
                                     f"`python -m search.run --study {study_name}` or pass --storage URL)")
        storage_url = default_storage_url(study_name, database.parent)
    storage = open_storage(storage_url)
    try:
        return optuna.load_study(study_name=study_name, storage=storage), storage_url
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
        raise StudyNotFoundError(f"study {study_name!r} not found in {masked_url(storage_url)}; "
                                 f"studies there: {', '.join(names) or 'none'}") from None


def masked_url(url: str) -> str:
    """The storage URL with any password replaced by ``***`` (the report is meant to be shared)."""
    import sqlalchemy

    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def write_report(study: optuna.Study, out_dir: str | os.PathLike, *, storage_arg: str | None = None,
                 tensorboard_dir: str | os.PathLike | None = None) -> Path:
    """Write the PNGs and ``report.md`` for ``study`` into ``out_dir``; returns the path of ``report.md``.

    ``storage_arg`` is the ``--storage`` the user passed (repeated, password masked, in the reproduce
    command); ``tensorboard_dir`` is the study's ``tb/`` folder, mentioned when it exists.
    """
    if study._is_multi_objective():
        raise ValueError(f"study {study.study_name!r} has {len(study.directions)} objectives; "
                         "the report handles single-objective studies only")
    out_dir = Path(out_dir)
    plots = write_plots(study, out_dir)
    text = render_markdown(study, plots, out_dir, storage_arg=storage_arg, tensorboard_dir=tensorboard_dir)
    path = out_dir / "report.md"
    atomic_write_text(path, text)
    return path


def render_markdown(study: optuna.Study, plots: Sequence[Plot], out_dir: Path, *,
                    storage_arg: str | None = None, tensorboard_dir: str | os.PathLike | None = None) -> str:
    """The text of ``report.md`` (plots linked relative to ``out_dir``)."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(complete, key=lambda t: t.value, reverse=maximize)
    best = ranked[0] if ranked else None
    lines = [f"# Study `{study.study_name}`", "",
             f"Generated {dt.datetime.now().isoformat(timespec='seconds')}; objective: validation lwlrap "
             f"({'maximised' if maximize else 'minimised'}); {len(trials)} trials.", ""]

    lines += ["## Trials by state", "", "| state | trials |", "|---|---|"]
    lines += [f"| {state.name} | {sum(t.state == state for t in trials)} |" for state in _STATES]
    lines.append("")
    if best is None:
        lines += ["No trial has completed yet: there is no best trial, top list or best config.", ""]
    else:
        lines += _top_trials(ranked[:TOP_N]) + _best_section(study, best, trials, storage_arg)
    lines += _compute_section(study, trials) + _time_section(trials)
    lines += _checks_section(best, trials)
    lines += ["## Plots", ""]
    for plot in plots:
        if plot.path is None:
            lines.append(f"- {plot.title}: {plot.note}")
        else:
            lines += [f"### {plot.title}", "", f"![{plot.title}]({plot.path.relative_to(out_dir)})", ""]
            if plot.note:
                lines += [f"Note: {plot.note}.", ""]
    lines.append("")
    if tensorboard_dir is not None and Path(tensorboard_dir).is_dir():
        lines += ["## TensorBoard", "", f"Per-trial curves and HParams: `tensorboard --logdir {tensorboard_dir}`.", ""]
    return "\n".join(lines)


def _top_trials(top: Sequence[FrozenTrial]) -> list[str]:
    lines = [f"## Top {len(top)}", "", "| rank | trial | lwlrap | epochs | time | params |", "|---|---|---|---|---|---|"]
    for rank, trial in enumerate(top, start=1):
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(trial.params.items())) or "(baseline, no params)"
        seconds = trial_seconds(trial)
        lines.append(f"| {rank} | {trial.number} | {trial.value:.4f} | {trial.user_attrs.get('epochs_run', '?')} "
                     f"| {format_duration(seconds) if seconds is not None else '?'} | {params} |")
    return lines + [""]


def _best_section(study: optuna.Study, best: FrozenTrial, trials: Sequence[FrozenTrial],
                  storage_arg: str | None) -> list[str]:
    lines = ["## Best trial", "", f"Trial {best.number}, lwlrap {best.value:.4f}.", ""]
    baseline = baseline_trial(trials)
    if baseline is None:
        lines += ["No baseline trial (user attr `is_baseline`, or trial 0) to compare with.", ""]
    elif baseline.number == best.number:
        lines += ["The best trial is the baseline itself: the search has not beaten it yet.", ""]
    else:
        diff, source = config_diff(baseline, best)
        score = f"{baseline.value:.4f}" if baseline.value is not None else baseline.state.name
        lines += [f"Difference from the baseline (trial {baseline.number}, lwlrap {score}), by {source}:", ""]
        if diff:
            lines += ["| key | baseline | best |", "|---|---|---|"]
            lines += [f"| {key} | {_fmt(old)} | {_fmt(new)} |" for key, (old, new) in diff.items()]
        else:
            lines.append("(no difference)")
        lines.append("")
    storage = f" --storage '{masked_url(storage_arg)}'" if storage_arg else ""
    lines += ["Reproduce it (exports the config and retrains it):", "", "```",
              f"python -m search.best --study {study.study_name}{storage} --export --trial {best.number}", "```", ""]
    return lines


def baseline_trial(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The trial marked ``is_baseline`` (or ``baseline``, as search.run marks it), else the study's first
    trial (the search enqueues the baseline first)."""
    marked = [t for t in trials if any(t.user_attrs.get(key) is True for key in BASELINE_ATTRS)]
    if marked:
        return min(marked, key=lambda t: t.number)
    return min(trials, key=lambda t: t.number) if trials else None


def config_diff(baseline: FrozenTrial, other: FrozenTrial) -> tuple[dict[str, tuple[Any, Any]], str]:
    """Keys whose value differs, as ``{key: (baseline value, other value)}``, and what was compared.

    Compares the full configs (user attr ``config`` as JSON, else ``config.json`` in the trial's
    ``run_dir``) when both trials have one, else the search params.
    """
    old, new = _config(baseline), _config(other)
    source = "full config"
    if old is None or new is None:
        old, new, source = baseline.params, other.params, "search parameters"
    missing = "(absent)"
    keys = sorted(set(old) | set(new))
    return {k: (old.get(k, missing), new.get(k, missing)) for k in keys
            if old.get(k, missing) != new.get(k, missing)}, source


def _config(trial: FrozenTrial) -> dict[str, Any] | None:
    raw = trial.user_attrs.get("config")
    run_dir = trial.user_attrs.get("run_dir")
    if raw is None and isinstance(run_dir, str) and (Path(run_dir) / "config.json").is_file():
        raw = (Path(run_dir) / "config.json").read_text(encoding="utf-8")
    if raw is None:
        return None
    try:
        values = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:  # a half-written or foreign file: fall back to comparing params
        return None
    return flatten(values) if isinstance(values, dict) else None


def _compute_section(study: optuna.Study, trials: Sequence[FrozenTrial]) -> list[str]:
    lines = ["## Compute saved by pruning", ""]
    budget = study.user_attrs.get("epochs_budget")
    spec = study.user_attrs.get("spec")
    if budget is None and isinstance(spec, dict):  # search.run stores the spec's flat keys
        budget = spec.get("study.epochs")
    counted = [t for t in trials if isinstance(t.user_attrs.get("epochs_run"), (int, float))]
    if not counted:
        return lines + ["No trial recorded `epochs_run`.", ""]
    run = sum(t.user_attrs["epochs_run"] for t in counted)
    per_trial = [budget if isinstance(budget, (int, float)) else (_config(t) or {}).get("optim.epochs")
                 for t in counted]
    if any(not isinstance(b, (int, float)) for b in per_trial):
        return lines + [f"{run} epochs run over {len(counted)} trials; the full budget per trial is unknown "
                        "(no study user attr `epochs_budget` or spec `study.epochs`, nor `optim.epochs` in the "
                        "trial configs).", ""]
    full = sum(per_trial)
    saved = 1.0 - run / full if full else 0.0
    return lines + [f"{run} epochs run over {len(counted)} trials; running every one of them to its full budget "
                    f"would take {full} epochs: the pruner saved {saved:.0%} of the training compute.", ""]


def trial_seconds(trial: FrozenTrial) -> float | None:
    """Wall time of a trial: user attr ``wall_time``, else complete minus start time; None when unknown."""
    wall = trial.user_attrs.get("wall_time")
    if isinstance(wall, (int, float)) and math.isfinite(wall):
        return float(wall)
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def _time_section(trials: Sequence[FrozenTrial]) -> list[str]:
    lines = ["## Time per trial", ""]
    rows = []
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        seconds = [s for t in trials if t.state == state and (s := trial_seconds(t)) is not None]
        if seconds:
            rows.append(f"| {state.name} | {len(seconds)} | {format_duration(statistics.mean(seconds))} | "
                        f"{format_duration(statistics.median(seconds))} | {format_duration(max(seconds))} | "
                        f"{format_duration(sum(seconds))} |")
    if not rows:
        return lines + ["No finished trial has a recorded time.", ""]
    return lines + ["| state | trials | mean | median | max | total |", "|---|---|---|---|---|---|"] + rows + [""]


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


def _checks_section(best: FrozenTrial | None, trials: Sequence[FrozenTrial]) -> list[str]:
    lines = ["## Checks after the study", ""]
    if best is None:
        lines.append("- Edge of the space: no completed trial to check.")
    else:
        flagged = edge_params(best)
        for edge in flagged:
            if edge.choices is not None:
                end, more = ("smallest", "smaller") if edge.side == "low" else ("largest", "larger")
                lines.append(f"- Edge of the space: `{edge.name}` = {_fmt(edge.value)} is the {end} of the choices "
                             f"[{', '.join(map(_fmt, edge.choices))}]; add a {more} choice and search again.")
            elif edge.side == "low" and edge.low == 0:
                lines.append(f"- Edge of the space: `{edge.name}` = {_fmt(edge.value)} is at the low end of "
                             f"[0, {_fmt(edge.high)}], next to 0; search more finely between 0 and it.")
            else:
                lines.append(f"- Edge of the space: `{edge.name}` = {_fmt(edge.value)} is at the {edge.side} end of "
                             f"[{_fmt(edge.low)}, {_fmt(edge.high)}]; widen the range past it and search again.")
        if not flagged:
            lines.append(f"- Edge of the space: no numeric parameter of the best trial lies within "
                         f"{EDGE_FRACTION:.0%} of a bound or at an end of its numeric choices.")
        off = zero_floor_params(best)
        if off:
            lines.append(f"- Switched off in the best trial (0 at the bottom of its range or choices, not an edge "
                         f"to widen): {', '.join(f'`{name}`' for name in off)}.")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    diverged = [t for t in trials if _reason(t) == "nan"]
    reasons: dict[str, int] = {}
    for trial in failed:
        reason = _reason(trial) or "unknown"
        reasons[reason] = reasons.get(reason, 0) + 1
    detail = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items()))
    lines.append(f"- Failed: {len(failed)} of {len(trials)} trials" + (f" ({detail})." if detail else "."))
    lines.append(f"- Diverged (NaN/inf loss): {len(diverged)} trials"
                 + (f" ({', '.join(str(t.number) for t in diverged)})." if diverged else "."))
    return lines + [""]


def _reason(trial: FrozenTrial) -> str | None:
    """Why a trial failed or was pruned early: ``fail_reason``/``prune_reason``, or search.run's ``reason``."""
    for key in REASON_ATTRS:
        if trial.user_attrs.get(key) is not None:
            return str(trial.user_attrs[key])
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search.report", description=__doc__.splitlines()[0])
    add_study_arguments(parser)
    parser.add_argument("--out", help="output folder (default: <studies-dir>/<study>/report/)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        study, _ = load_study(args.study, args.storage, args.studies_dir)
        study_folder = studies_dir(args.studies_dir) / args.study
        out_dir = Path(args.out) if args.out else study_folder / "report"
        path = write_report(study, out_dir, storage_arg=args.storage, tensorboard_dir=study_folder / "tb")
    except (StudyNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
