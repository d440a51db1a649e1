"""The synthetic generator: deterministic, any size, and its planted truth is really there."""

from __future__ import annotations

import numpy as np
import pytest

from muxrec.data import synthetic_config
from muxrec.data.synthetic import CARDINALITY, SyntheticConfig, generate
from muxrec.spec import SourceSpec


def test_same_seed_same_data_other_seed_other_data():
    a, ta = generate(SyntheticConfig(rows=2000, seed=1))
    b, _ = generate(SyntheticConfig(rows=2000, seed=1))
    c, _ = generate(SyntheticConfig(rows=2000, seed=2))
    assert a.equals(b) and not a.equals(c)
    assert a.num_rows == 2000
    assert 0.1 < ta.click_rate < 0.6 and 0 < ta.conversion_rate < ta.click_rate


def test_conversion_only_after_click():
    table, _ = generate(SyntheticConfig(rows=5000, seed=3))
    click, conv = table["click"].to_numpy(), table["conversion"].to_numpy()
    assert conv.sum() > 0 and not np.any((conv == 1) & (click == 0))


def _rate_spread(table, *columns):
    """Std of the click rate across groups of `columns` (groups with >= 200 rows)."""
    keys = [tuple(r) for r in zip(*(table[c].to_pylist() for c in columns))]
    click = table["click"].to_numpy()
    groups: dict = {}
    for k, y in zip(keys, click):
        groups.setdefault(k, []).append(y)
    rates = [np.mean(v) for v in groups.values() if len(v) >= 200]
    return float(np.std(rates))


def test_pairwise_signal_lives_in_the_pair_not_in_either_field():
    table, truth = generate(SyntheticConfig(rows=120_000, seed=5))
    (pair,) = truth.pairs
    alone = max(_rate_spread(table, pair[0]), _rate_spread(table, pair[1]))
    together = _rate_spread(table, *pair)
    assert together > 3 * alone, (together, alone)
    # A pure-noise field carries no signal, alone or crossed with a real one.
    assert _rate_spread(table, "noise_a") < 0.03


def test_third_order_signal_needs_all_three_fields():
    table, truth = generate(SyntheticConfig(rows=150_000, seed=6))
    (triple,) = truth.triples
    best_pair = max(_rate_spread(table, a, b) for a, b in [triple[:2], triple[1:], (triple[0], triple[2])])
    assert _rate_spread(table, *triple) > 2.5 * best_pair


def test_history_reveals_the_topics_a_user_clicks():
    """Rows whose item shares a topic word with the user's history click more often."""
    table, _ = generate(SyntheticConfig(rows=30_000, seed=8))
    titles = dict(zip(table["item_id"].to_pylist(), table["title"].to_pylist()))
    click = table["click"].to_numpy()
    overlap = []
    for item, history in zip(table["item_id"].to_pylist(), table["history"].to_pylist()):
        words = set(titles.get(item, "").split())
        seen = {w for h in history for w in titles.get(int(h), "").split()}
        overlap.append(len(words & seen) >= 2)
    overlap = np.array(overlap)
    assert click[overlap].mean() > click[~overlap].mean() + 0.1


def test_config_is_validated():
    with pytest.raises(ValueError, match="rows must be >= 1"):
        SyntheticConfig(rows=0)
    assert set(CARDINALITY) >= {"region", "ad_type", "device", "daypart", "slot"}


def test_a_list_from_yaml_options_makes_a_usable_config():
    cfg = synthetic_config(SourceSpec(loader="synthetic", options={"rows": 50, "history_len": [2, 4]}))
    assert cfg.history_len == (2, 4)
    assert generate(cfg)[0].num_rows == 50  # the config is hashable: _world caches by it
