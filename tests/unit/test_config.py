"""Typed configs: strict dict -> dataclass conversion with field-naming errors."""

from __future__ import annotations

import pytest

from muxrec.config import TrainConfig, from_dict, load_model_file, with_overrides
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
    with pytest.raises(ConfigError, match="expected true or false|expected an integer"):
        from_dict(TrainConfig, {"epochs": True})


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
