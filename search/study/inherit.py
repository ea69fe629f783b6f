"""Tuning in rounds: a new study starts from the finished trials of the previous one (``search.run --from OLD``).

When NEW is created, each COMPLETE or PRUNED trial of OLD whose config NEW's spec would train exactly (every
searched value inside NEW's space, everything else equal to NEW's base and epoch budget) is added to NEW with
NEW's distributions: its value, intermediate values (so the pruner's rungs know it), ASHA's rung records, its
constraints and user attrs, marked ``from_study``/``from_trial``. Nothing is retrained. A trial NEW could not
have proposed is left out and counted: outside the space, or trained another config (another base or epoch
budget, whose curves and values would mislead NEW's sampler and pruner). NEW's baseline is still its own
``[base]``; OLD's best is queued first when NEW's space holds it and it was not inherited as it stands.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from search.spec import StudySpec
from search.study.artifacts import FILES_FROM_ATTR
from search.study.record import best_trial, trial_config
from trainer import ConfigError, TrainConfig

INHERITED_ATTR = "inherited_from"  # study system attr: {"study", "added", "left_out"}
RUNG_ATTR_PREFIX = "completed_rung_"  # Optuna's SuccessiveHalvingPruner keeps each trial's rung score here
CONSTRAINTS_ATTR_PREFIX = "constraints"  # Optuna's trial.set_constraint keeps "constraints:<name>" here
INHERITED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def inside(distribution: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is a point of ``distribution`` (within its range, on its step)."""
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if isinstance(distribution, (FloatDistribution, IntDistribution)):
        if not distribution.low <= value <= distribution.high:
            return False
        step = distribution.step
        return step is None or math.isclose((value - distribution.low) / step,
                                            round((value - distribution.low) / step), abs_tol=1e-8)
    return False


def _values(trial: FrozenTrial) -> tuple[dict[str, Any], TrainConfig | None]:
    """The flat values ``trial`` trained with and its config (its params and None without a recorded config)."""
    if "config" not in trial.user_attrs:
        return dict(trial.params), None
    try:
        config = trial_config(trial)
    except (LookupError, ConfigError):
        return dict(trial.params), None
    return config.flat(), config


def space_point(spec: StudySpec, trial: FrozenTrial, flat: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """NEW's params for the values ``trial`` trained with (``flat``, else read from the trial), or None when NEW's
    space does not hold them."""
    flat = _values(trial)[0] if flat is None else flat
    params = spec.active_params({p.key: flat[p.key] for p in spec.space if p.key in flat})
    return params if all(inside(spec.param(k).distribution, v) for k, v in params.items()) else None


def point_in(spec: StudySpec, trial: FrozenTrial) -> tuple[dict[str, Any] | None, str]:
    """NEW's params for ``trial`` when NEW would train its config exactly, and ""; else None and why not
    ("outside" the space, "config": another base or epoch budget, or no recorded config; "folds": another
    ``[study] folds``, so its value measures another thing: one split's lwlrap, or OOF over other folds)."""
    if trial.user_attrs.get("folds") != spec.folds:
        return None, "folds"
    flat, config = _values(trial)
    params = space_point(spec, trial, flat)
    if params is None:
        return None, "outside"
    try:
        same = config is not None and spec.config_for(params) == config
    except ConfigError:
        return None, "outside"
    return (params, "") if same else (None, "config")


@dataclass(frozen=True)
class Source:
    """The previous round: its study, and where its trials' files are (artifact location, study uid), which the
    inherited trials reference in place rather than copy."""

    study: optuna.Study
    artifacts: str | None = None
    uid: str | None = None


@dataclass(frozen=True)
class Inheritance:
    """What ``inherit`` did, for the worker's one line and the study's record."""

    source: str
    added: Mapping[str, int]  # state name -> count
    outside: int
    other_config: int
    best_queued: int | None  # OLD's trial number queued first
    other_folds: int = 0

    def line(self) -> str:
        added = sum(self.added.values())
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.added.items()) if n)
        text = f"inherited {added} trials of study {self.source!r}" + (f" ({states})" if states else "")
        left = [f"{n} {why}" for n, why in ((self.outside, "outside this spec's space"),
                                             (self.other_config, "trained another config (base or epochs differ)"),
                                             (self.other_folds, "validated on other folds ([study] folds differs)"))
                if n]
        text += "; left out " + ", ".join(left) if left else ""
        if self.best_queued is not None:
            text += f"; its best, #{self.best_queued}, queued first after the baseline"
        return text

    def record(self) -> dict[str, Any]:
        return {"study": self.source, "added": sum(self.added.values()),
                "left_out": self.outside + self.other_config + self.other_folds}


def inherit(study: optuna.Study, spec: StudySpec, previous: Source) -> Inheritance:
    """Add the previous round's finished trials that ``spec`` would train exactly to ``study`` (called once,
    when the study is created, after its baseline was queued)."""
    source = previous.study
    files = (previous.artifacts, previous.uid) if previous.artifacts and previous.uid else None
    distributions = {p.key: p.distribution for p in spec.space}
    added: dict[str, int] = {}
    outside = other = other_folds = 0
    copies, inherited_numbers = [], set()
    for trial in source.get_trials(deepcopy=False, states=INHERITED_STATES):
        params, why = point_in(spec, trial)
        if params is None:
            outside += why == "outside"
            other += why == "config"
            other_folds += why == "folds"
            continue
        copies.append(_copy(trial, params, {k: distributions[k] for k in params}, source.study_name, files))
        inherited_numbers.add(trial.number)
        added[trial.state.name] = added.get(trial.state.name, 0) + 1
    best = best_trial(source)
    queued = None
    if best is not None and best.number not in inherited_numbers and best.user_attrs.get("folds") == spec.folds:
        params = space_point(spec, best)
        if params is not None and params != spec.baseline_params():
            study.enqueue_trial(params, user_attrs={"startup": f"the best of study {source.study_name!r} "
                                                               f"(#{best.number})"})
            queued = best.number
    study.add_trials(copies)
    return Inheritance(source.study_name, added, outside, other, queued, other_folds)


def _copy(trial: FrozenTrial, params: dict[str, Any], distributions: dict[str, BaseDistribution],
          source: str, files: tuple[str, str] | None) -> FrozenTrial:
    user_attrs = {k: v for k, v in trial.user_attrs.items()
                  if k not in ("baseline", "run_dir", "worker_id", FILES_FROM_ATTR)}
    user_attrs.update(from_study=source, from_trial=trial.number)
    if files is not None:  # its checkpoints and predictions stay where the earlier round keeps them
        previous = trial.user_attrs.get(FILES_FROM_ATTR)  # an inherited trial of that round: its original files
        user_attrs[FILES_FROM_ATTR] = previous if isinstance(previous, Mapping) else {
            "artifacts": files[0], "uid": files[1], "trial": trial.number}
    system_attrs = {k: v for k, v in trial.system_attrs.items()
                    if k.startswith((RUNG_ATTR_PREFIX, CONSTRAINTS_ATTR_PREFIX))}
    return create_trial(state=trial.state, value=trial.value, params=params, distributions=distributions,
                        user_attrs=user_attrs, system_attrs=system_attrs,
                        intermediate_values=dict(trial.intermediate_values))


def inherited(trial: FrozenTrial) -> bool:
    return "from_study" in trial.user_attrs


def inherited_text(trials: Sequence[FrozenTrial]) -> str:
    """"12 of them inherited from study 'round1'" for the trials a ``--from`` brought in; "" when none."""
    sources: dict[str, int] = {}
    for trial in trials:
        if inherited(trial):
            source = str(trial.user_attrs["from_study"])
            sources[source] = sources.get(source, 0) + 1
    if not sources:
        return ""
    return f"{sum(sources.values())} of them inherited from " + ", ".join(
        f"study {name!r}" + (f" ({n})" if len(sources) > 1 else "") for name, n in sources.items())
