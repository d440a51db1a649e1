"""Ray start-up settings that need no running Ray."""

from __future__ import annotations

import pytest
from ray.data.context import ShuffleStrategy

from muxrec.errors import ConfigError
from muxrec.ray_env import SHUFFLE_ENV, shuffle_strategy


def test_group_bys_use_the_sort_based_shuffle_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv(SHUFFLE_ENV, raising=False)
    assert shuffle_strategy() is ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    monkeypatch.setenv(SHUFFLE_ENV, "shuffle_v2")
    assert shuffle_strategy() is ShuffleStrategy.SHUFFLE_V2


def test_an_unknown_shuffle_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(SHUFFLE_ENV, "fast")
    with pytest.raises(ConfigError, match=r"MUXREC_RAY_SHUFFLE: expected one of .*sort_shuffle_pull_based.*, got 'fast'"):
        shuffle_strategy()
