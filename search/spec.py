"""Study specs: one TOML file per study in ``studies/`` that a user edits without reading the code.

A spec names the data, the trial budget (epochs), the base config (= the baseline trial), sampler, pruner,
an optional Kaggle-kernel time budget, and the search space as dotted ``TrainConfig`` keys::

    [space]
    "optim.lr" = { float = [1e-4, 3e-3], log = true }
    "model.head" = { choices = ["linear", "mlp"] }
    "model.head_hidden" = { int = [64, 512], step = 64, when = { "model.head" = "mlp" } }

Every error names the spec file, the key and what was expected.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from trainer.config import ConfigError, TrainConfig, flatten, read_toml

DATA_ENV = "FAT2019_DATA"
DEMO = "demo"  # the data location that means the built-in synthetic set
PER_MACHINE_KEYS = ("study.data",)  # may differ between workers of one study; not in the fingerprint

_SECTIONS = {"study", "base", "sampler", "pruner", "kernel", "space"}
_STUDY_KEYS = {"name", "data", "demo_scale", "epochs"}
_SAMPLERS = {"tpe": {"seed", "n_startup_trials"}, "random": {"seed"}}
_PRUNERS = {  # name -> settings a user may give (Optuna's own argument names)
    "median": {"n_startup_trials", "n_warmup_steps", "interval_steps"},
    "hyperband": {"min_resource", "reduction_factor"},
    "asha": {"min_resource", "reduction_factor", "min_early_stopping_rate"},
    "none": set(),
}
_KERNEL_KEYS = {"budget_s", "test_audio_s", "safety"}
_PARAM_KINDS = ("float", "int", "choices")
_PARAM_KEYS = {"float", "int", "choices", "log", "step", "when"}


class SpecError(ConfigError):
    """A study spec is not acceptable; the message names the file, the key and what was expected."""


@dataclass(frozen=True)
class Param:
    """One searched ``TrainConfig`` key; ``when`` maps other keys to the values that switch it on."""

    key: str
    distribution: BaseDistribution
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def is_active(self, values: Mapping[str, Any]) -> bool:
        """Whether the conditions hold for ``values`` (dotted key -> value, missing = inactive)."""
        return all(key in values and values[key] in allowed for key, allowed in self.when.items())

    def suggest(self, trial: optuna.Trial) -> Any:
        d = self.distribution
        if isinstance(d, FloatDistribution):
            return trial.suggest_float(self.key, d.low, d.high, log=d.log, step=d.step)
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.key, d.low, d.high, log=d.log, step=d.step)
        assert isinstance(d, CategoricalDistribution)
        return trial.suggest_categorical(self.key, d.choices)


@dataclass(frozen=True)
class Kernel:
    """Kaggle kernel budget: projected test-set inference time must stay below ``budget_s * safety``."""

    budget_s: float
    test_audio_s: float
    safety: float

    def projected_s(self, inference_cost: float) -> float:
        """Kernel seconds for the test set at ``inference_cost`` seconds per second of audio."""
        return inference_cost * self.test_audio_s

    def violation(self, inference_cost: float) -> float:
        """Optuna constraint value: > 0 means over budget (infeasible)."""
        return self.projected_s(inference_cost) - self.budget_s * self.safety


@dataclass(frozen=True)
class StudySpec:
    """A parsed, validated study spec (see the module docstring for the file format)."""

    path: Path
    name: str
    data: str | None  # a folder, "demo", or None = must come from --data / $FAT2019_DATA
    demo_scale: float
    epochs: int
    base: Mapping[str, Any]  # dotted overrides of TrainConfig(); with optim.epochs = epochs
    sampler: Mapping[str, Any]
    pruner: Mapping[str, Any]
    kernel: Kernel | None
    space: tuple[Param, ...]
    document: Mapping[str, Any]  # the TOML as parsed, for the fingerprint and mismatch messages

    # -- configs ---------------------------------------------------------------------------------
    def base_config(self) -> TrainConfig:
        """The study's base config; its values for the space's keys make the baseline trial."""
        return TrainConfig().with_overrides({**self.base, "optim.epochs": self.epochs}, source=str(self.path))

    def config_for(self, params: Mapping[str, Any]) -> TrainConfig:
        """The base config with a trial's params applied (raises ConfigError for impossible combinations)."""
        return self.base_config().with_overrides(params, source=f"{self.path} trial params")

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest every active parameter in spec order; inactive ones keep the base value."""
        values = self.base_config().flat()
        params: dict[str, Any] = {}
        for param in self.space:
            if param.is_active({**values, **params}):
                params[param.key] = param.suggest(trial)
            else:
                values.pop(param.key, None)  # a condition on an inactive param does not hold
        return params

    def baseline_params(self) -> dict[str, Any]:
        """The base config's values for the params active under it (what the first trial runs)."""
        values = self.base_config().flat()
        params: dict[str, Any] = {}
        for param in self.space:
            if param.is_active({**values, **params}):
                params[param.key] = values[param.key]
            else:
                values.pop(param.key, None)
        return params

    # -- study parts -----------------------------------------------------------------------------
    def make_sampler(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        """The spec's sampler (Optuna 5 defaults otherwise); ``seed`` overrides the spec's seed."""
        settings = dict(self.sampler)
        name = settings.pop("name")
        if seed is not None:
            settings["seed"] = seed
        if name == "random":
            return optuna.samplers.RandomSampler(**settings)
        return optuna.samplers.TPESampler(**settings)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        """The spec's pruner over epochs (steps are 1-based epochs)."""
        settings = dict(self.pruner)
        name = settings.pop("name")
        if name == "median":
            return optuna.pruners.MedianPruner(**settings)
        if name == "hyperband":
            return optuna.pruners.HyperbandPruner(max_resource=self.epochs, **settings)
        if name == "asha":
            return optuna.pruners.SuccessiveHalvingPruner(**settings)
        return optuna.pruners.NopPruner()

    def data_location(self, arg: str | os.PathLike | None = None) -> str:
        """Where the data is: ``--data`` arg > $FAT2019_DATA > spec ``study.data``; "demo" = built-in set."""
        for value in (arg, os.environ.get(DATA_ENV), self.data):
            if value:
                return str(value)
        raise SpecError(f"{self.path}: no data location; pass --data DIR, set ${DATA_ENV}, or set "
                        f"[study] data = \"/path/to/fat2019\" (or \"{DEMO}\")")

    # -- identity --------------------------------------------------------------------------------
    def canonical(self) -> dict[str, Any]:
        """The spec as flat dotted keys without per-machine fields; what the fingerprint hashes."""
        flat = _flat_document(self.document)
        return {k: v for k, v in flat.items() if k not in PER_MACHINE_KEYS}

    def fingerprint(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_spec(path: str | os.PathLike) -> StudySpec:
    """Read and validate a study spec TOML file."""
    path = Path(path)
    return parse_spec(read_toml(path, what="study spec", error=SpecError), path)


def find_spec(study: str, studies_dir: str | os.PathLike) -> Path:
    """``--study NAME`` means ``<studies_dir>/NAME.toml``; a path to a .toml file is taken as is."""
    candidate = Path(study)
    if candidate.suffix == ".toml":
        return candidate
    return Path(studies_dir) / f"{study}.toml"


def spec_differences(stored: Mapping[str, Any], mine: Mapping[str, Any]) -> list[str]:
    """Readable lines ``key: study has X, this spec has Y`` between two ``canonical()`` dicts."""
    lines = []
    for key in sorted(set(stored) | set(mine)):
        if stored.get(key, "<unset>") != mine.get(key, "<unset>"):
            lines.append(f"{key}: study has {stored.get(key, '<unset>')!r}, this spec has {mine.get(key, '<unset>')!r}")
    return lines


def parse_spec(document: Mapping[str, Any], path: Path) -> StudySpec:
    """Validate a parsed TOML document; see ``load_spec``."""
    _check_keys(document, _SECTIONS, path, "top level")
    study = _table(document, "study", path)
    _check_keys(study, _STUDY_KEYS, path, "[study]")
    name = study.get("name", path.stem)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise SpecError(f"{path}: [study] name={name!r}: expected letters, digits, '-' or '_'")
    data = study.get("data")
    if data is not None and not isinstance(data, str):
        raise SpecError(f"{path}: [study] data={data!r}: expected a folder path or \"{DEMO}\"")
    demo_scale = _positive(study, "demo_scale", 1.0, path, "[study]")
    epochs = study.get("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise SpecError(f"{path}: [study] epochs={epochs!r}: expected the trial budget in epochs (an integer >= 1)")

    base = dict(_table(document, "base", path))
    if "optim.epochs" in base:
        raise SpecError(f"{path}: [base] \"optim.epochs\": set the trial budget as [study] epochs instead")
    try:
        base_config = TrainConfig().with_overrides({**base, "optim.epochs": epochs}, source=f"{path} [base]")
    except ConfigError as exc:
        raise SpecError(str(exc)) from None

    sampler = dict(_table(document, "sampler", path))
    sampler.setdefault("name", "tpe")
    _check_named(sampler, _SAMPLERS, path, "[sampler]")
    pruner = dict(_table(document, "pruner", path))
    pruner.setdefault("name", "median")
    _check_named(pruner, _PRUNERS, path, "[pruner]")

    kernel = None
    if "kernel" in document:
        table = _table(document, "kernel", path)
        _check_keys(table, _KERNEL_KEYS, path, "[kernel]")
        kernel = Kernel(budget_s=_positive(table, "budget_s", 3600.0, path, "[kernel]"),
                        test_audio_s=_positive(table, "test_audio_s", None, path, "[kernel]"),
                        safety=_positive(table, "safety", 0.5, path, "[kernel]"))

    space = _parse_space(_table(document, "space", path), base_config, path)
    spec = StudySpec(path=path, name=name, data=data, demo_scale=demo_scale, epochs=epochs, base=base,
                     sampler=sampler, pruner=pruner, kernel=kernel, space=space, document=document)
    _check_baseline_in_space(spec)
    try:  # settings Optuna rejects (e.g. reduction_factor = 1) fail here, not in a worker
        spec.make_pruner(), spec.make_sampler()
    except ValueError as exc:
        raise SpecError(f"{path}: [pruner] or [sampler]: {exc}") from None
    return spec


# -- validation helpers ---------------------------------------------------------------------------
def _table(document: Mapping[str, Any], name: str, path: Path) -> Mapping[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}: [{name}] must be a table, got {value!r}")
    return value


def _check_keys(table: Mapping[str, Any], allowed: set[str], path: Path, where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SpecError(f"{path}: {where}: unknown key {unknown[0]!r}; expected one of: {', '.join(sorted(allowed))}")


def _check_named(table: dict[str, Any], registry: Mapping[str, set[str]], path: Path, where: str) -> None:
    name = table["name"]
    if name not in registry:
        raise SpecError(f"{path}: {where} name={name!r}: expected one of: {', '.join(registry)}")
    _check_keys(table, registry[name] | {"name"}, path, f"{where} (name = {name!r})")
    for key, value in table.items():
        if key != "name" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise SpecError(f"{path}: {where} {key}={value!r}: expected a non-negative integer")


def _positive(table: Mapping[str, Any], key: str, default: float | None, path: Path, where: str) -> float:
    value = table.get(key, default)
    if value is None:
        raise SpecError(f"{path}: {where} {key} is required")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SpecError(f"{path}: {where} {key}={value!r}: expected a positive number")
    return float(value)


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
        distribution = next(p for p in spec.space if p.key == key).distribution
        if isinstance(distribution, CategoricalDistribution):
            inside = value in distribution.choices
        else:
            inside = distribution._contains(float(value))
        if not inside:
            raise SpecError(f"{spec.path}: [space] {key!r}: the base value {value!r} (from [base] or TrainConfig()) "
                            f"is outside {_describe(distribution)}; the baseline trial must be a point of "
                            f"the space: widen the range or set \"{key}\" in [base]")


def _describe(distribution: BaseDistribution) -> str:
    if isinstance(distribution, CategoricalDistribution):
        return f"choices {list(distribution.choices)}"
    d: Any = distribution
    return f"[{d.low}, {d.high}]" + (f" step {d.step}" if d.step not in (None, 1) else "") + (" log" if d.log else "")


def _flat_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten sections but keep dotted TrainConfig keys whole: ``base.optim.lr``, ``space.optim.lr``."""
    flat: dict[str, Any] = {}
    for section, table in document.items():
        if section in ("base", "space") and isinstance(table, Mapping):
            for key, value in table.items():
                flat[f"{section}.{key}"] = json.loads(json.dumps(value, sort_keys=True))
        elif isinstance(table, Mapping):
            flat.update(flatten(table, f"{section}."))
        else:
            flat[section] = table
    return flat
