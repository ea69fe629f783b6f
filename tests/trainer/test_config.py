import json

import pytest

from trainer.config import ConfigError, TrainConfig, parse_set_args


def test_defaults_are_the_m12sl_baseline():
    c = TrainConfig()
    assert (c.features.n_fft, c.features.hop, c.features.n_mels) == (1764, 220, 64)
    assert (c.model.depth, c.model.activation, c.model.bn_position, c.model.head) == (34, "relu", "before", "linear")
    assert (c.optim.optimizer, c.optim.lr, c.optim.batch_size, c.optim.epochs, c.optim.schedule) == \
        ("adam", 3e-4, 32, 10, "none")
    assert (c.loss.name, c.augment.mixup_alpha, c.data.use_noisy) == ("bce", 0.0, False)


def test_json_round_trip_is_exact():
    c = TrainConfig().with_overrides({"optim.lr": 1.2345e-4, "features.fmax": 16000.0, "model.head": "mlp",
                                      "data.n_folds": 5, "data.val_fold": 2})
    assert TrainConfig.from_json(c.to_json()) == c
    assert json.loads(c.to_json())["features"]["fmax"] == 16000.0


def test_frozen():
    with pytest.raises(AttributeError):
        TrainConfig().seed = 3  # type: ignore[misc]


def test_toml_with_sections(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('seed = 7\n[model]\nactivation = "silu"\nwidth = 0.5\n[optim]\nlr = 1e-3\n')
    c = TrainConfig.from_toml(path)
    assert (c.seed, c.model.activation, c.model.width, c.optim.lr) == (7, "silu", 0.5, 1e-3)


@pytest.mark.parametrize("overrides, message", [
    ({"model.activation": "tanh"}, "model.activation='tanh' is not allowed; expected one of: relu, prelu, elu, silu, sigmoid"),
    ({"optim.lr": "-1"}, "optim.lr=-1.0 is out of range; expected a value in (0.0, 10.0]"),
    ({"model.depth": "50"}, "model.depth=50 is not allowed; expected one of: 18, 34"),
    ({"model.colour": "red"}, "unknown key 'model.colour'; model has: activation, arch,"),
    ({"modle.depth": 18}, "unknown key 'modle.depth'; config has:"),
    ({"optim.batch_size": "many"}, "optim.batch_size='many' is not a valid int"),
    ({"data.use_noisy": "maybe"}, "data.use_noisy='maybe' is not a valid bool"),
    ({"features.fmax": 30000}, "features.fmax=30000.0 is above the Nyquist frequency"),
    ({"features.hop": 4000}, "features.hop=4000 must not exceed features.n_fft=1764"),
    ({"data.val_fold": 1}, "data.n_folds and data.val_fold go together"),
    ({"model": 3}, "'model' is a section"),
    ({"optim.lr": "nan"}, "optim.lr=nan: expected a finite number"),
    ({"model.dropout": "inf"}, "model.dropout=inf: expected a finite number"),
    ({"optim.grad_clip": float("nan")}, "optim.grad_clip=nan: expected a finite number"),
])
def test_bad_values_name_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig().with_overrides(overrides)
    assert message in str(info.value)


def test_set_args_parse_to_field_types():
    c = TrainConfig().with_overrides(parse_set_args(["optim.epochs=3", "features.fmax=none", "data.use_noisy=true",
                                                     "model.width=0.25"]))
    assert (c.optim.epochs, c.features.fmax, c.data.use_noisy, c.model.width) == (3, None, True, 0.25)
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set_args(["optim.epochs"])


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[model]\nactivation = "r\xe9lu"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml: not UTF-8 text \(byte 23\); save the file as UTF-8"):
        TrainConfig.from_toml(path)


def test_toml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nactivation = 'tanh'\n")
    with pytest.raises(ConfigError, match=r"bad.toml: model.activation='tanh'"):
        TrainConfig.from_toml(path)
    with pytest.raises(ConfigError, match="config file not found"):
        TrainConfig.from_toml(tmp_path / "missing.toml")


def test_diff_lists_only_changed_keys():
    base = TrainConfig()
    assert base.with_overrides({"model.head": "mlp", "optim.lr": 1e-3}).diff(base) == \
        {"model.head": "mlp", "optim.lr": 1e-3}
