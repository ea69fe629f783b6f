"""Study queries in one place: opening a study, its identity and stored spec, "the best trial", the
baseline, a trial's exact config, config diffs and where the study's data lives.

The command-line modules (run, best, report, dashboard) only parse arguments and print; every question
they ask of a study is answered here, so "best" means the same trial everywhere.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from search.spec import SpecError, StudySpec, builtin_data
from search.study.storage import default_storage_url, open_storage, studies_dir
from trainer import DataError, TrainConfig, flatten

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Study system attrs (not user attrs: `optuna studies` prints user attrs, and the spec is a big blob).
UID_ATTR = "fat2019_search:uid"
SPEC_ATTR = "fat2019_search:spec"
FINGERPRINT_ATTR = "fat2019_search:spec_fingerprint"
KERNEL_CONSTRAINT = "kernel_time"  # the Optuna constraint a [kernel] budget sets (> 0 = over budget)


class StudyNotFoundError(LookupError):
    """The study database or the study in it does not exist; the message says which and what exists."""


@dataclass
class StudyHandle:
    """An open study with the storage it lives in (Optuna's Study does not expose its system attrs)."""

    study: optuna.Study
    storage: optuna.storages.BaseStorage
    url: str

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def study_id(self) -> int:
        return self.storage.get_study_id_from_name(self.study.study_name)

    def system_attrs(self) -> dict[str, Any]:
        return self.storage.get_study_system_attrs(self.study_id)

    def uid(self) -> str:
        """The study's identity in its storage: two studies of one name in two storages never share
        trial folders or artifacts. Studies created before it existed get one on first use."""
        attrs = self.system_attrs()
        return str(attrs[UID_ATTR]) if UID_ATTR in attrs else new_uid(self.storage, self.study_id)

    def stored_spec(self) -> dict[str, Any]:
        """The spec (flat ``canonical()`` keys) the study was started with; {} when none was stored."""
        value = self.system_attrs().get(SPEC_ATTR)
        return dict(value) if isinstance(value, Mapping) else {}


def new_uid(storage: optuna.storages.BaseStorage, study_id: int) -> str:
    """Give the study a fresh identity (its creator, or the first reader of a study older than uids)."""
    uid = uuid.uuid4().hex[:12]
    storage.set_study_system_attr(study_id, UID_ATTR, uid)
    return uid


def redact(url: str) -> str:
    """The storage URL with any password replaced by ``***`` (for printing and shared reports)."""
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def load_study(study_name: str, storage_url: str | None = None,
               studies: str | os.PathLike | None = None) -> StudyHandle:
    """Open an existing study for reading (``storage_url`` or the default SQLite file).

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
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
        raise StudyNotFoundError(f"study {study_name!r} not found in {redact(storage_url)}; "
                                 f"studies there: {', '.join(names) or 'none'}") from None
    return StudyHandle(study, storage, storage_url)


# -- which trial ------------------------------------------------------------------------------------
def is_feasible(trial: FrozenTrial) -> bool:
    """Whether a trial met every constraint (the kernel-time budget); trials without constraints do."""
    return all(value <= 0 for value in trial.constraints.values())


def ranked_trials(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """COMPLETE trials, best first (feasible or not); ``trials``: the study's, when the caller has just read them."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(complete, key=lambda t: t.value, reverse=maximize)


def best_trial(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None) -> FrozenTrial | None:
    """THE best trial of the service: the best COMPLETE trial that meets every constraint (Optuna 5's
    constraint-aware ``study.best_trial``); None when there is none. search.best, search.report, the pane
    lines and the dashboard note all use this. ``trials``: the study's as the caller just read them (the same
    choice, the first of equals by number, without another read)."""
    if trials is not None:
        feasible = [t for t in ranked_trials(study, trials) if is_feasible(t)]
        if not feasible:
            return None
        return min((t for t in feasible if t.value == feasible[0].value), key=lambda t: t.number)
    try:
        return study.best_trial
    except ValueError:  # no COMPLETE trial, or none feasible
        return None


def last_reported(trial: FrozenTrial) -> float | None:
    """The value a trial reported at its last epoch (the running best: the objective reports ``best_lwlrap``),
    what a PRUNED trial is ranked by; None before its first report."""
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


def baseline_trial(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The baseline: the COMPLETE trial of the ``baseline``-marked chain (retries keep the mark), else the
    first marked trial, else the study's first trial (the search enqueues the baseline first)."""
    marked = [t for t in trials if t.user_attrs.get("baseline") is True]
    complete = [t for t in marked if t.state == TrialState.COMPLETE]
    if complete:
        return min(complete, key=lambda t: t.number)
    if marked:
        return min(marked, key=lambda t: t.number)
    return min(trials, key=lambda t: t.number) if trials else None


def trials_keeping_weights(study: optuna.Study, keep: int, trials: Sequence[FrozenTrial] | None = None) -> set[int]:
    """Checkpoint retention: the numbers of the ``keep`` best feasible COMPLETE trials (the best trial is the
    first of them) plus the baseline, the reference of every comparison; none at all when ``keep`` is 0."""
    if not keep:
        return set()
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    kept = {t.number for t in [t for t in ranked_trials(study, trials) if is_feasible(t)][:keep]}
    baseline = baseline_trial(trials)
    if baseline is not None and baseline.state == TrialState.COMPLETE:
        kept.add(baseline.number)
    return kept


def on_host(trials: Sequence[FrozenTrial], worker_id: str) -> list[FrozenTrial]:
    """The trials whose worker (user attr ``worker_id``, ``host:pid``) runs on the host of ``worker_id``: the
    ones that share its cores and GPUs."""
    host = worker_id.rsplit(":", 1)[0]
    return [t for t in trials if str(t.user_attrs.get("worker_id", "")).rsplit(":", 1)[0] == host]


def pruning_saved(trials: Sequence[FrozenTrial], epochs: int) -> float | None:
    """The share of training epochs pruning saved: finished trials' ``epochs_run`` against each at ``epochs``;
    None when there is none to count or a finished trial did not record its epochs."""
    finished = [t for t in trials if t.state in FINISHED]
    if not finished or epochs <= 0 or any(not isinstance(t.user_attrs.get("epochs_run"), (int, float))
                                          for t in finished):
        return None
    return 1 - sum(t.user_attrs["epochs_run"] for t in finished) / (epochs * len(finished))


# -- what a trial ran -------------------------------------------------------------------------------
def trial_config(trial: FrozenTrial, spec: StudySpec | None = None) -> TrainConfig:
    """The exact TrainConfig the trial ran: user attr ``config``, else the spec's base config with the
    trial's params."""
    raw = trial.user_attrs.get("config")
    if raw is not None:
        values = json.loads(raw) if isinstance(raw, str) else raw
        return TrainConfig.from_dict(values, source=f"trial {trial.number} user attr 'config'")
    if spec is not None:
        return spec.config_for(trial.params)
    raise LookupError(f"trial {trial.number}: its config is unknown (no 'config' user attr and no study spec "
                      f"to rebuild it from its params)")


def config_diff(baseline: FrozenTrial, other: FrozenTrial) -> tuple[dict[str, tuple[Any, Any]], str]:
    """Keys whose value differs, as ``{key: (baseline value, other value)}``, and what was compared:
    the full configs when both trials recorded one, else the search params."""
    old, new = _flat_config(baseline), _flat_config(other)
    source = "full config"
    if old is None or new is None:
        old, new, source = dict(baseline.params), dict(other.params), "search parameters"
    missing = "(absent)"
    keys = sorted(set(old) | set(new))
    return {k: (old.get(k, missing), new.get(k, missing)) for k in keys
            if old.get(k, missing) != new.get(k, missing)}, source


def _flat_config(trial: FrozenTrial) -> dict[str, Any] | None:
    raw = trial.user_attrs.get("config")
    if raw is None:
        return None
    try:
        values = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return None
    return flatten(values) if isinstance(values, dict) else None


def trial_seconds(trial: FrozenTrial) -> float | None:
    """Wall time of a trial: user attr ``wall_time``, else complete minus start time; None when unknown."""
    wall = trial.user_attrs.get("wall_time")
    if isinstance(wall, (int, float)) and math.isfinite(wall):
        return float(wall)
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


# -- where the data is ------------------------------------------------------------------------------
def resolve_data(spec: StudySpec | None, data_arg: str | None) -> Path:
    """The data folder of a study: ``--data`` > $FAT2019_DATA > the spec's ``[study] data``; a built-in
    set's name (``demo``, ...) means that set, generated into the cache on first use."""
    if spec is None:
        if not data_arg:
            raise SpecError("the study's spec file was not found, so its data location is unknown: pass --data DIR "
                            "(or --studies-dir DIR where <study>.toml lives)")
        location, scale = data_arg, 1.0
    else:
        location, scale = spec.data_location(data_arg), spec.data_scale
    if location in builtin_data():
        return builtin_data()[location](scale=scale)
    path = Path(location).expanduser()
    if not (path / "train_curated.csv").is_file():
        where = f" (from --data, $FAT2019_DATA or [study] data in {spec.path})" if spec is not None else ""
        raise DataError(f"data location {str(path)!r} has no train_curated.csv; expected the unzipped FAT2019 "
                        f"folder{where}, or one of the built-in sets: {', '.join(builtin_data())}")
    return path

