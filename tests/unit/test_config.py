"""Typed configs: strict dict -> dataclass validation (pydantic) with one-line, field-naming errors."""

from __future__ import annotations

import json

import pytest

from muxrec.config import TrainConfig, from_dict, load_model_file, to_dict, with_overrides
from muxrec.errors import ConfigError

from tests.conftest import CONFIGS


def test_train_config_defaults_and_validation():
    assert from_dict(TrainConfig, {}) == TrainConfig()
    assert from_dict(TrainConfig, {"lr": 1}).lr == 1.0  # ints are fine where floats are expected
    with pytest.raises(ConfigError, match=r"TrainConfig.batch_size: expected an integer, got 'big'"):
        from_dict(TrainConfig, {"batch_size": "big"})
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        from_dict(TrainConfig, {"epochs": 0})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate'\]"):
        from_dict(TrainConfig, {"learning_rate": 0.1})
    with pytest.raises(ConfigError, match=r"TrainConfig.epochs: expected an integer, got True"):
        from_dict(TrainConfig, {"epochs": True})


@pytest.mark.parametrize("data, message", [
    ({"epochs": "3"}, r"TrainConfig.epochs: expected an integer, got '3'"),  # no string -> number coercion
    ({"epochs": 3.0}, r"TrainConfig.epochs: expected an integer, got 3.0"),
    ({"lr": True}, r"TrainConfig.lr: expected a number, got True"),
    ({"lr": float("nan")}, r"TrainConfig.lr: expected a finite number, got nan"),
    ({"lr": None}, r"TrainConfig.lr: expected a number, got None"),
    ({"learning_rate": 1, "epoch": 2}, r"unknown key\(s\) \['epoch', 'learning_rate'\]; known: \['batch_size'"),
])
def test_types_are_strict_and_errors_are_one_line(data, message):
    with pytest.raises(ConfigError, match=message) as err:
        from_dict(TrainConfig, data)
    assert "\n" not in str(err.value)


def test_model_config_errors_name_the_nested_field():
    from muxrec.models import make_config

    with pytest.raises(ConfigError, match=r"^deepfm config.hidden_units\[1\]: expected an integer, got '8'$"):
        make_config("deepfm", {"hidden_units": [4, "8"]})
    with pytest.raises(ConfigError, match=r"^deepfm config.activation: must be one of \['relu', .*\], got 'swish'$"):
        make_config("deepfm", {"activation": "swish"})
    with pytest.raises(ConfigError, match=r"^deepfm config.hidden_units: expected a list, got 8$"):
        make_config("deepfm", {"hidden_units": 8})
    with pytest.raises(ConfigError, match=r"^deepfm config: expected a mapping, got list$"):
        make_config("deepfm", [1])
    # Several problems: all of them, on one line.
    with pytest.raises(ConfigError, match=r"dropout: expected a number, got 'x'; deepfm config.batch_norm: expected "
                                          r"true or false, got 1"):
        make_config("deepfm", {"dropout": "x", "batch_norm": 1})


@pytest.mark.parametrize("name", ["deepfm", "dcn_v2", "optinter", "final_mlp"])
def test_to_dict_round_trips(name):
    from muxrec.models import make_config

    cfg = make_config(name, {})
    data = to_dict(cfg)
    assert json.loads(json.dumps(data)) == data and all(not isinstance(v, tuple) for v in data.values())
    assert make_config(name, data) == cfg


@pytest.mark.parametrize("path", sorted((CONFIGS / "models").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_model_files_are_valid(path):
    from muxrec.models import make_config

    mf = load_model_file(path)
    make_config(mf.architecture, mf.model)
    assert mf.name == path.stem and mf.train.epochs >= 1


def test_model_file_errors(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("model: {}\ntrian: {}\n")
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['trian'\]"):
        load_model_file(bad)
    bad.write_text("architecture: deepfm\nmodel: {dropout: 0.1}\n")
    variant = load_model_file(bad)
    assert (variant.name, variant.architecture, variant.model) == ("m", "deepfm", {"dropout": 0.1})
    bad.write_text("model: [1, 2]\n")
    with pytest.raises(ConfigError, match="`model` must be a mapping"):
        load_model_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_model_file(tmp_path / "missing.yaml")


def test_overrides_apply_to_model_and_train_sections():
    mf = load_model_file(CONFIGS / "models" / "deepfm.yaml")
    changed = with_overrides(mf, ["train.lr=3e-3", "train.patience=4", "model.hidden_units=[64, 32]"])
    assert changed.train.lr == 3e-3 and changed.train.patience == 4  # "3e-3" is a number, not a string
    assert changed.model["hidden_units"] == [64, 32] and mf.model["hidden_units"] == [256, 128]
    with pytest.raises(ConfigError, match=r"--set 'lr=3': use model.<field>=<value> or train.<field>=<value>"):
        with_overrides(mf, ["lr=3"])
    with pytest.raises(ConfigError, match="patience"):
        with_overrides(mf, ["train.patience=soon"])
