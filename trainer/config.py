"""TrainConfig: the one frozen description of a training run.

Every knob a search may turn lives here; a search space only produces dotted-key overrides
(``{"model.activation": "prelu"}``) of a base config. ``TrainConfig()`` is the m12sl FAT2019
baseline (ResNet34 on 64-band log-mel, n_fft 1764 / hop 220, BCE, Adam 3e-4, batch 32, 10 epochs).
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A config value or key a user wrote is not acceptable; the message names it."""


def _choices(default: str, *allowed: str) -> Any:
    return field(default=default, metadata={"choices": allowed})


def _range(default: float | int | None, lo: float | None = None, hi: float | None = None,
           *, lo_open: bool = False) -> Any:
    return field(default=default, metadata={"range": (lo, hi, lo_open)})


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = _range(44100, 8000, 96000)
    n_fft: int = _range(1764, 64, 16384)
    hop: int = _range(220, 16, 8192)
    n_mels: int = _range(64, 8, 512)
    fmin: float = _range(20.0, 0.0, None)
    fmax: float | None = _range(None, 0.0, None, lo_open=True)  # None = sample_rate / 2
    power: float = _range(2.0, 0.5, 2.0)
    scale: str = _choices("db", "db", "log")
    top_db: float | None = _range(80.0, 10.0, 200.0)  # dB floor below the clip's peak; None = no floor
    normalize: str = _choices("clip", "clip", "none")  # per-clip mean/std, or raw values
    crop_frames: int = _range(3007, 16, 100000)  # 3007 frames = the baseline's 15 s at hop 220
    pad_mode: str = _choices("constant", "constant", "wrap")

    def cache_params(self) -> dict[str, Any]:
        """The fields that change the cached log-mel arrays (crop and pad act later)."""
        keys = ("sample_rate", "n_fft", "hop", "n_mels", "fmin", "fmax", "power", "scale", "top_db")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _choices("resnet", "resnet", "cnn")
    depth: int = field(default=34, metadata={"choices": (18, 34)})  # resnet only
    width: float = _range(1.0, 0.0625, 4.0)  # multiplier on the 64/128/256/512 stage widths
    activation: str = _choices("relu", "relu", "prelu", "elu", "silu", "sigmoid")
    bn_position: str = _choices("before", "before", "after")  # BatchNorm before or after the activation
    dropout: float = _range(0.0, 0.0, 0.95)  # before the head
    head: str = _choices("linear", "linear", "mlp")
    head_hidden: int = _range(128, 8, 4096)  # only used by head = "mlp"


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = _choices("adam", "adam", "adamw", "sgd")
    lr: float = _range(3e-4, 0.0, 10.0, lo_open=True)
    weight_decay: float = _range(0.0, 0.0, 1.0)
    batch_size: int = _range(32, 1, 4096)
    epochs: int = _range(10, 1, 10000)
    schedule: str = _choices("none", "none", "cosine")
    eta_min: float = _range(0.0, 0.0, 10.0)  # cosine floor
    warmup_epochs: int = _range(0, 0, 1000)  # linear warm-up, then the schedule
    grad_clip: float | None = _range(None, 0.0, None, lo_open=True)


@dataclass(frozen=True)
class AugmentConfig:
    mixup_alpha: float = _range(0.0, 0.0, 10.0)  # 0 = off
    time_masks: int = _range(0, 0, 16)  # SpecAugment
    time_mask_frames: int = _range(0, 0, 10000)
    freq_masks: int = _range(0, 0, 16)
    freq_mask_bins: int = _range(0, 0, 512)


@dataclass(frozen=True)
class LossConfig:
    name: str = _choices("bce", "bce", "bce_minmax", "lsoft")
    minmax_weight: float = _range(1.0, 0.0, 100.0)  # only for bce_minmax
    lsoft_beta: float = _range(0.7, 0.0, 1.0)  # only for lsoft; applied to noisy clips only


@dataclass(frozen=True)
class DataConfig:
    use_noisy: bool = False
    curated_noisy_ratio: float = _range(1.0, 0.0, 1000.0, lo_open=True)  # curated clips per noisy clip
    sampler: str = _choices("shuffle", "shuffle", "class_balanced")
    val_fraction: float = _range(0.2, 0.0, 0.9, lo_open=True)
    split_seed: int = _range(0, 0, None)
    val_fold: int | None = _range(None, 0, None)  # with n_folds: which curated fold is held out
    n_folds: int | None = _range(None, 2, 20)
    full_curated: bool = False  # also train on the validation part (final models)


@dataclass(frozen=True)
class TrainConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = _range(0, 0, None)
    device: str = _choices("auto", "auto", "cpu", "cuda", "mps")

    def __post_init__(self) -> None:
        f, d = self.features, self.data
        nyquist = f.sample_rate / 2
        if f.fmax is not None and f.fmax > nyquist:
            raise ConfigError(f"features.fmax={f.fmax} is above the Nyquist frequency {nyquist} of "
                              f"features.sample_rate={f.sample_rate}")
        if f.fmin >= (f.fmax if f.fmax is not None else nyquist):
            raise ConfigError(f"features.fmin={f.fmin} must be below fmax ({f.fmax or nyquist})")
        if f.hop > f.n_fft:
            raise ConfigError(f"features.hop={f.hop} must not exceed features.n_fft={f.n_fft}")
        if (d.n_folds is None) != (d.val_fold is None):
            raise ConfigError("data.n_folds and data.val_fold go together: set both or neither")
        if d.n_folds is not None and d.val_fold is not None and d.val_fold >= d.n_folds:
            raise ConfigError(f"data.val_fold={d.val_fold} must be below data.n_folds={d.n_folds}")

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> "TrainConfig":
        """Build from a nested dict (as in TOML/JSON); unknown keys and bad values raise ConfigError."""
        return _build(cls, values, prefix="", source=source)

    @classmethod
    def from_toml(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(read_toml(path, what="config file"), source=str(path))

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(json.loads(text), source="json")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def with_overrides(self, overrides: Mapping[str, Any], *, source: str = "override") -> "TrainConfig":
        """Return a copy with dotted-key overrides applied (``{"optim.lr": 1e-3}``); values are validated.

        String values (from ``--set key=value``) are parsed to the field's type.
        """
        values = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(values, key, value, source=source)
        return self.from_dict(values, source=source)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view of every field: ``{"model.depth": 34, ...}`` (for diffs and HParams)."""
        return flatten(self.to_dict())

    def diff(self, other: "TrainConfig") -> dict[str, Any]:
        """Dotted keys whose value in ``self`` differs from ``other``, with ``self``'s values."""
        mine, theirs = self.flat(), other.flat()
        return {k: v for k, v in mine.items() if theirs.get(k) != v}


def read_toml(path: str | Path, *, what: str, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """Parse a TOML file a user wrote; a missing file or bad syntax is one ``error`` line naming the file."""
    import tomllib  # here, not at the top: the Kaggle kernel imports this module and may run on Python < 3.11

    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML ({exc})") from None


def parse_set_args(items: list[str] | None) -> dict[str, str]:
    """Turn ``["optim.lr=1e-3", ...]`` (from ``--set``) into a dict; values stay strings."""
    result: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=0.001")
        result[key.strip()] = value.strip()
    return result


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


# -- internals ----------------------------------------------------------------------------------
def _set_dotted(values: dict[str, Any], key: str, value: Any, *, source: str) -> None:
    node: Any = values
    cls: Any = TrainConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            where = ".".join(parts[:depth]) or "config"
            raise ConfigError(f"{source}: unknown key {key!r}; {where} has: {', '.join(sorted(fields))}")
        ftype = _resolved_types(cls)[part]
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(ftype):
                raise ConfigError(f"{source}: {key!r} is a section; set one of its keys, e.g. {key}."
                                  f"{dataclasses.fields(ftype)[0].name}")
            node[part] = _parse_string(value, ftype, key, source) if isinstance(value, str) else value
            return
        if not dataclasses.is_dataclass(ftype):
            raise ConfigError(f"{source}: {'.'.join(parts[:depth + 1])!r} is a value, not a section")
        node, cls = node[part], ftype


def _parse_string(text: str, ftype: Any, key: str, source: str) -> Any:
    """Parse a ``--set`` value to the field's type (``none`` allowed where the field is optional)."""
    base, optional = _unwrap_optional(ftype)
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{source}: {key}={text!r} is not a valid {base.__name__}") from None
    return text


@typing.no_type_check
def _resolved_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(ftype: Any) -> tuple[Any, bool]:
    args = typing.get_args(ftype)
    if typing.get_origin(ftype) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return ftype, False


def _build(cls: type, values: Mapping[str, Any], *, prefix: str, source: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a table/dict, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{source}: unknown key {prefix}{unknown[0]!r}; {where} has: {', '.join(sorted(fields))}")
    hints = _resolved_types(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        ftype, key = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(ftype):
            kwargs[name] = _build(ftype, value, prefix=key + ".", source=source)
        else:
            kwargs[name] = _check_value(fields[name], ftype, value, key, source)
    return cls(**kwargs)


def _check_value(f: dataclasses.Field, ftype: Any, value: Any, key: str, source: str) -> Any:
    base, optional = _unwrap_optional(ftype)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: {key} may not be empty (expected {base.__name__})")
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}={value!r}: expected true or false")
    elif base is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{source}: {key}={value!r}: expected an integer")
        value = int(value)
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key}={value!r}: expected a number")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{source}: {key}={value!r}: expected a finite number")
    elif base is str and not isinstance(value, str):
        raise ConfigError(f"{source}: {key}={value!r}: expected a string")

    allowed = f.metadata.get("choices")
    if allowed is not None and value not in allowed:
        shown = ", ".join(str(a) for a in allowed)
        raise ConfigError(f"{source}: {key}={value!r} is not allowed; expected one of: {shown}")
    bounds = f.metadata.get("range")
    if bounds is not None:
        lo, hi, lo_open = bounds
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        too_high = hi is not None and value > hi
        if too_low or too_high:
            left = "(" if lo_open else "["
            raise ConfigError(f"{source}: {key}={value!r} is out of range; expected a value in "
                              f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]")
    return value
