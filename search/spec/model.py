"""Study specs: one TOML file per study in ``studies/`` that a user edits without reading the code.

A spec names the data, the trial budget (epochs), the base config (= the baseline trial), the search
strategy (``[sampler]``, ``[pruner]``, ``[startup]``), an optional Kaggle-kernel time budget, checkpoint
retention, and the search space as dotted ``TrainConfig`` keys::

    [space]
    "optim.lr" = { float = [1e-4, 3e-3], log = true }
    "model.head" = { choices = ["linear", "mlp"] }
    "model.head_hidden" = { int = [64, 512], step = 64, when = { "model.head" = "mlp" } }

This module is the spec model; ``search.spec.checks`` reads and validates the file (``load_spec``; every error
names the file, the key and what was expected); ``search.spec.strategy`` builds the sampler, pruner and startup.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

import search.spec.strategy as strategy
from trainer import BUILTIN_DATASETS, ConfigError, TrainConfig, ensure_builtin, flatten

DATA_ENV = "FAT2019_DATA"
DEMO = "demo"  # the data location that means the built-in synthetic set
PER_MACHINE_KEYS = ("study.data",)  # may differ between workers of one study; not in the fingerprint


def builtin_data() -> dict[str, Callable[..., Path]]:
    """Data locations that name a built-in set (generated into the cache on first use) -> its builder:
    ``demo`` (synthetic tones) and ``sampled`` (sampled instruments and speech, see trainer.synth)."""
    return {name: functools.partial(ensure_builtin, name) for name in BUILTIN_DATASETS}


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

    def describe(self) -> str:
        d: Any = self.distribution
        if isinstance(d, CategoricalDistribution):
            return f"choices {list(d.choices)}"
        return f"[{d.low}, {d.high}]" + (f" step {d.step}" if d.step not in (None, 1) else "") + (" log" if d.log else "")


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
    data: str | None  # a folder, a built-in set's name, or None = must come from --data / $FAT2019_DATA
    data_scale: float  # size of a built-in set
    epochs: int
    folds: int | None  # None: a trial trains one split; K: a trial cross-validates the K curated folds
    keep_weights: int  # best.pth is kept for this many top trials; the others' weights are deleted
    base: Mapping[str, Any]  # dotted overrides of TrainConfig(); with optim.epochs = epochs
    sampler: Mapping[str, Any]
    pruner: Mapping[str, Any]
    startup: Mapping[str, Any]
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

    def fold_config(self, config: TrainConfig, fold: int) -> TrainConfig:
        """A cross-validated trial's config for ``fold`` (0-based): its curated fold held out, the rest trained."""
        if self.folds is None:
            return config
        return config.with_overrides({"data.n_folds": self.folds, "data.val_fold": fold},
                                     source=f"{self.path} [study] folds")

    @property
    def steps(self) -> int:
        """The last step a trial reports: ``epochs`` on one split, ``epochs x folds`` cross-validated (a fold's
        boundary is step ``(k + 1) x epochs``)."""
        return self.epochs * (self.folds or 1)

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

    def active_params(self, candidate: Mapping[str, Any]) -> dict[str, Any]:
        """The params of ``candidate`` that apply (their conditions hold), in spec order."""
        values = self.base_config().flat()
        params: dict[str, Any] = {}
        for param in self.space:
            if param.key in candidate and param.is_active({**values, **params}):
                params[param.key] = candidate[param.key]
            else:
                values.pop(param.key, None)
        return params

    def baseline_params(self) -> dict[str, Any]:
        """The base config's values for the params active under it (what the first trial runs)."""
        return self.active_params(self.base_config().flat())

    def param(self, key: str) -> Param:
        return next(p for p in self.space if p.key == key)

    # -- the search strategy ---------------------------------------------------------------------
    def make_sampler(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        """The spec's sampler; ``seed`` overrides the spec's seed."""
        return strategy.make_sampler(self.sampler, seed)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        """The spec's pruner over epochs (steps are 1-based epochs), racing at fold boundaries with ``folds``."""
        return strategy.make_pruner(self.pruner, self.epochs, folds=self.folds)

    def startup_points(self) -> list[tuple[dict[str, Any], list[str]]]:
        """The startup trials queued after the baseline: (params, changed knobs) near the baseline."""
        settings = {**strategy.STARTUP_DEFAULTS, **self.startup}
        return strategy.startup_points(self.space, self.baseline_params(), count=settings["near_baseline"],
                                       max_changes=settings["max_changes"], seed=settings["seed"],
                                       active=self.active_params)

    def stacked_points(self, trials: Sequence[FrozenTrial]) -> list[tuple[dict[str, Any], str]]:
        """With ``[startup] stack = true``, once every startup trial has finished: the baseline with every change
        that beat it, and its neighbours (``search.spec.strategy.stacked_points``); else nothing."""
        settings = {**strategy.STARTUP_DEFAULTS, **self.startup}
        baseline = next((t for t in trials if t.user_attrs.get("baseline")), None)
        startup = [t for t in trials if "startup" in t.user_attrs]
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        if (not settings["stack"] or baseline is None or baseline.state not in finished[:2]
                or len(startup) < settings["near_baseline"] or any(t.state not in finished for t in startup)):
            return []
        won = strategy.winning_changes(baseline, trials, self.baseline_params())
        return strategy.stacked_points(self.baseline_params(), won, neighbours=settings["stack_neighbours"],
                                       active=self.active_params)

    def data_location(self, arg: str | os.PathLike | None = None) -> str:
        """Where the data is: ``--data`` arg > $FAT2019_DATA > spec ``study.data``."""
        for value in (arg, os.environ.get(DATA_ENV), self.data):
            if value:
                return str(value)
        raise SpecError(f"{self.path}: no data location; pass --data DIR, set ${DATA_ENV}, or set "
                        f"[study] data = \"/path/to/fat2019\" (or one of the built-in sets: "
                        f"{', '.join(builtin_data())})")

    # -- identity --------------------------------------------------------------------------------
    def canonical(self) -> dict[str, Any]:
        """The spec as flat dotted keys without per-machine fields; what the fingerprint hashes."""
        flat = _flat_document(self.document)
        return {k: v for k, v in flat.items() if k not in PER_MACHINE_KEYS}

    def fingerprint(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_spec(study: str, studies_dir: str | os.PathLike) -> Path:
    """``--study NAME`` means ``<studies_dir>/NAME.toml``; a path to a .toml file is taken as is.

    A name without a spec file is one error line listing the specs that are there.
    """
    candidate = Path(study)
    if candidate.suffix == ".toml":
        return candidate
    path = Path(studies_dir) / f"{study}.toml"
    if not path.is_file():
        names = sorted(p.stem for p in Path(studies_dir).glob("*.toml"))
        close = difflib.get_close_matches(study, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SpecError(f"{path}: study spec not found; {hint}specs in {studies_dir}: {', '.join(names) or 'none'}")
    return path


def spec_differences(stored: Mapping[str, Any], mine: Mapping[str, Any]) -> list[str]:
    """Readable lines ``key: study has X, this spec has Y`` between two ``canonical()`` dicts."""
    lines = []
    for key in sorted(set(stored) | set(mine)):
        if stored.get(key, "<unset>") != mine.get(key, "<unset>"):
            lines.append(f"{key}: study has {stored.get(key, '<unset>')!r}, this spec has {mine.get(key, '<unset>')!r}")
    return lines


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
