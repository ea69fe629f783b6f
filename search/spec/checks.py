"""Reading a study spec file: every table, key and value checked, every error one line naming the file,
the key and what was expected. Builds the ``search.spec.StudySpec`` model."""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Mapping

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

import search.spec.strategy as strategy
from search.spec.model import Kernel, Param, SpecError, StudySpec, builtin_data
from trainer import ConfigError, TrainConfig, read_toml

_SECTIONS = {"study", "base", "sampler", "pruner", "startup", "kernel", "space"}
_STUDY_KEYS = {"name", "data", "data_scale", "epochs", "keep_weights", "folds"}
_KERNEL_KEYS = {"budget_s", "test_audio_s", "safety"}
_PARAM_KINDS = ("float", "int", "choices")
_PARAM_KEYS = {"float", "int", "choices", "log", "step", "when"}
DEFAULT_KEEP_WEIGHTS = 5


def parse_spec(document: Mapping[str, Any], path: Path) -> StudySpec:
    """Validate a parsed TOML document; see ``load_spec`` below."""
    _check_keys(document, _SECTIONS, path, "top level")
    study = _table(document, "study", path)
    _check_keys(study, _STUDY_KEYS, path, "[study]")
    name = study.get("name", path.stem)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise SpecError(f"{path}: [study] name={name!r}: expected letters, digits, '-' or '_'")
    data = study.get("data")
    if data is not None and not isinstance(data, str):
        raise SpecError(f"{path}: [study] data={data!r}: expected a folder path or a built-in set "
                        f"({', '.join(builtin_data())})")
    data_scale = _positive(study, "data_scale", 1.0, path, "[study]")
    epochs = _integer(study, "epochs", None, path, "[study]", low=1, what="the trial budget in epochs")
    keep_weights = _integer(study, "keep_weights", DEFAULT_KEEP_WEIGHTS, path, "[study]", low=0,
                            what="how many top trials keep their weights")
    folds = None if "folds" not in study else _integer(study, "folds", None, path, "[study]", low=2,
                                                          what="the curated folds each trial cross-validates")

    base = dict(_table(document, "base", path))
    if "optim.epochs" in base:
        raise SpecError(f"{path}: [base] \"optim.epochs\": set the trial budget as [study] epochs instead")
    try:
        base_config = TrainConfig().with_overrides({**base, "optim.epochs": epochs}, source=f"{path} [base]")
    except ConfigError as exc:
        raise SpecError(str(exc)) from None

    sampler = _named_settings(document, "sampler", "tpe", strategy.SAMPLER_SETTINGS, path)
    pruner = _named_settings(document, "pruner", "asha", strategy.PRUNER_SETTINGS, path)
    startup = dict(_table(document, "startup", path))
    _check_typed(startup, strategy.STARTUP_SETTINGS, path, "[startup]")

    kernel = None
    if "kernel" in document:
        table = _table(document, "kernel", path)
        _check_keys(table, _KERNEL_KEYS, path, "[kernel]")
        kernel = Kernel(budget_s=_positive(table, "budget_s", 3600.0, path, "[kernel]"),
                        test_audio_s=_positive(table, "test_audio_s", None, path, "[kernel]"),
                        safety=_positive(table, "safety", 0.5, path, "[kernel]"))

    if folds is not None:
        _check_folds(folds, base, _table(document, "space", path), path)
    space = _parse_space(_table(document, "space", path), base_config, path)
    spec = StudySpec(path=path, name=name, data=data, data_scale=data_scale, epochs=epochs, folds=folds,
                     keep_weights=keep_weights, base=base, sampler=sampler, pruner=pruner, startup=startup,
                     kernel=kernel, space=space, document=document)
    _check_baseline_in_space(spec)
    try:  # settings Optuna rejects (e.g. reduction_factor = 1) fail here, not in a worker
        spec.make_pruner(), spec.make_sampler()
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{path}: [pruner] or [sampler]: {exc}") from None
    return spec


# The split a cross-validated trial deals itself; a [base] or [space] value for it would fight the folds.
_FOLD_KEYS = ("data.n_folds", "data.val_fold", "data.full_curated")


def _check_folds(folds: int, base: Mapping[str, Any], space: Mapping[str, Any], path: Path) -> None:
    """``[study] folds`` owns the curated split: every fold is held out once, so no other split setting."""
    largest = strategy.MAX_FOLDS
    if folds > largest:
        raise SpecError(f"{path}: [study] folds={folds}: expected at most {largest} (data.n_folds' range)")
    for key in _FOLD_KEYS:  # data.val_fraction may stay: the folds decide the held-out share, it is unused
        if key in base and not (key == "data.full_curated" and base[key] is False):
            raise SpecError(f"{path}: [base] \"{key}\": [study] folds = {folds} deals the curated folds itself "
                            f"(every fold is held out once); remove the key")
        if key in space:
            raise SpecError(f"{path}: [space] \"{key}\": [study] folds = {folds} deals the curated folds itself; "
                            f"it cannot be searched")


# -- validation helpers ---------------------------------------------------------------------------
def _table(document: Mapping[str, Any], name: str, path: Path) -> Mapping[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}: [{name}] must be a table, got {value!r}")
    return value


def _check_keys(table: Mapping[str, Any], allowed: set[str], path: Path, where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(allowed), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SpecError(f"{path}: {where}: unknown key {unknown[0]!r}; {hint}expected one of: "
                        f"{', '.join(sorted(allowed))}")


def _named_settings(document: Mapping[str, Any], section: str, default: str,
                    registry: Mapping[str, Mapping[str, type]], path: Path) -> dict[str, Any]:
    table = dict(_table(document, section, path))
    table.setdefault("name", default)
    name = table["name"]
    if name not in registry:
        raise SpecError(f"{path}: [{section}] name={name!r}: expected one of: {', '.join(registry)}")
    _check_typed({k: v for k, v in table.items() if k != "name"}, registry[name], path,
                 f"[{section}] (name = {name!r})")
    return table


def _check_typed(table: Mapping[str, Any], types: Mapping[str, type], path: Path, where: str) -> None:
    _check_keys(table, set(types), path, where)
    for key, value in table.items():
        if types[key] is bool and not isinstance(value, bool):
            raise SpecError(f"{path}: {where} {key}={value!r}: expected true or false")
        if types[key] is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise SpecError(f"{path}: {where} {key}={value!r}: expected a non-negative integer")


def _positive(table: Mapping[str, Any], key: str, default: float | None, path: Path, where: str) -> float:
    value = table.get(key, default)
    if value is None:
        raise SpecError(f"{path}: {where} {key} is required")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise SpecError(f"{path}: {where} {key}={value!r}: expected a positive number")
    return float(value)


def _integer(table: Mapping[str, Any], key: str, default: int | None, path: Path, where: str, *, low: int,
             what: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(f"{path}: {where} {key}={value!r}: expected {what} (an integer >= {low})")
    return value


def _parse_space(table: Mapping[str, Any], base: TrainConfig, path: Path) -> tuple[Param, ...]:
    flat = base.flat()
    params: list[Param] = []
    for key, entry in table.items():
        where = f"[space] {key!r}"
        if key not in flat:
            close = difflib.get_close_matches(key, list(flat), n=3)
            hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"expected one of: {', '.join(sorted(flat))}"
            raise SpecError(f"{path}: {where}: unknown TrainConfig key; {hint}")
        if key == "optim.epochs":
            raise SpecError(f"{path}: {where}: the budget is [study] epochs, it cannot be searched")
        if not isinstance(entry, Mapping):
            raise SpecError(f"{path}: {where}: expected a table like {{ float = [lo, hi] }}, got {entry!r}")
        _check_keys(entry, _PARAM_KEYS, path, where)
        kinds = [k for k in _PARAM_KINDS if k in entry]
        if len(kinds) != 1:
            raise SpecError(f"{path}: {where}: expected exactly one of float = [lo, hi], int = [lo, hi], choices = [...]")
        distribution = _distribution(kinds[0], entry, path, where)
        when = _conditions(entry.get("when", {}), [p.key for p in params], list(table), base, path, where)
        _check_values_build(key, distribution, base, path, where)
        params.append(Param(key=key, distribution=distribution, when=when))
    return tuple(params)


def _distribution(kind: str, entry: Mapping[str, Any], path: Path, where: str) -> BaseDistribution:
    log, step = entry.get("log", False), entry.get("step")
    if not isinstance(log, bool):
        raise SpecError(f"{path}: {where}: log={log!r}: expected true or false")
    if kind == "choices":
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices or "log" in entry or "step" in entry:
            raise SpecError(f"{path}: {where}: expected choices = [a, b, ...] (non-empty, without log/step)")
        return CategoricalDistribution(choices)
    bounds = entry[kind]
    number = int if kind == "int" else (int, float)
    if (not isinstance(bounds, list) or len(bounds) != 2
            or any(isinstance(b, bool) or not isinstance(b, number) for b in bounds) or not bounds[0] <= bounds[1]):
        raise SpecError(f"{path}: {where}: {kind}={bounds!r}: expected [low, high] {kind}s with low <= high")
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0 or log):
        raise SpecError(f"{path}: {where}: step={step!r}: expected a positive {kind}, and no step with log = true")
    if log and bounds[0] <= 0:
        raise SpecError(f"{path}: {where}: log = true needs low > 0, got {bounds[0]!r}")
    try:
        if kind == "int":
            return IntDistribution(bounds[0], bounds[1], log=log, step=step or 1)
        return FloatDistribution(float(bounds[0]), float(bounds[1]), log=log,
                                 step=None if step is None else float(step))
    except ValueError as exc:
        raise SpecError(f"{path}: {where}: {exc}") from None


def _conditions(when: Any, earlier: list[str], space_keys: list[str], base: TrainConfig, path: Path,
                where: str) -> dict[str, tuple[Any, ...]]:
    if not isinstance(when, Mapping):
        raise SpecError(f"{path}: {where}: when={when!r}: expected a table like {{ \"model.head\" = \"mlp\" }}")
    conditions = {}
    for key, allowed in when.items():
        if key in space_keys and key not in earlier:
            raise SpecError(f"{path}: {where}: when {key!r}: list {key!r} before this key in [space]")
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        for value in values:  # a misspelt value would silently switch the parameter off for good
            _check_builds(base, key, value, f"{path}: {where}: when {key!r} = {value!r}")
        conditions[key] = values
    return conditions


def _check_values_build(key: str, distribution: BaseDistribution, base: TrainConfig, path: Path, where: str) -> None:
    """Every choice (or both range ends) must make a valid config on its own."""
    if isinstance(distribution, CategoricalDistribution):
        values = list(distribution.choices)
    else:
        values = [distribution.low, distribution.high]  # type: ignore[attr-defined]
    for value in values:
        _check_builds(base, key, value, f"{path}: {where}: value {value!r} is not a valid config value")


def _check_builds(base: TrainConfig, key: str, value: Any, context: str) -> None:
    try:
        base.with_overrides({key: value}, source="")
    except ConfigError as exc:
        raise SpecError(f"{context} ({str(exc).lstrip(': ')})") from None


def _check_baseline_in_space(spec: StudySpec) -> None:
    """The baseline trial is a point of the space, so Optuna can record it with the same distributions."""
    for key, value in spec.baseline_params().items():
        param = spec.param(key)
        if not _contains(param.distribution, value):
            raise SpecError(f"{spec.path}: [space] {key!r}: the base value {value!r} (from [base] or TrainConfig()) "
                            f"is outside {param.describe()}; the baseline trial must be a point of "
                            f"the space: widen the range or set \"{key}\" in [base]")


def _contains(distribution: BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    d: Any = distribution
    if not d.low <= float(value) <= d.high:
        return False
    if d.step is None:
        return True
    steps = (float(value) - d.low) / d.step
    return abs(steps - round(steps)) < 1e-8


def load_spec(path: str | os.PathLike) -> StudySpec:
    """Read and validate a study spec TOML file."""
    path = Path(path)
    return parse_spec(read_toml(path, what="study spec", error=SpecError), path)
