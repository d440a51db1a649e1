"""Behaviour histories: only earlier, positive, train-split interactions; nothing leaks from valid /
test rows or from the future. Checked by hand on a tiny table and exhaustively on ML-100K."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from muxrec.data import load_source
from muxrec.encoding import split_of
from muxrec.errors import SpecError
from muxrec.history import add_histories
from muxrec.spec import load_spec, parse_spec

from tests.conftest import CONFIGS


def _spec(max_len: int = 3):
    return parse_spec({
        "name": "h", "source": {"loader": "parquet", "path": "/none"},
        "labels": [{"name": "click", "source": "rating", "threshold": 4}],
        # row r goes to split bucket r % 4: 0 test, 1 valid, 2-3 train
        "split": {"hash": {"row": 1}, "buckets": 4, "test": [0], "valid": [1]},
        "tables": {"item": {}},
        "features": [
            {"name": "item", "kind": "categorical", "table": "item"},
            {"name": "history", "kind": "sequence", "table": "item", "max_len": max_len,
             "history": {"user": "user", "item": "item", "time": "t", "label": "click"}},
        ],
    })


def test_history_by_hand():
    #        row: 0     1     2     3     4     5     6     7     8
    # split:      test  valid train train test  valid train train test
    table = pa.table({
        "row": pa.array(range(9), pa.int64()),
        "user": pa.array([1, 1, 1, 1, 1, 1, 1, 1, 2], pa.int64()),
        "item": pa.array([10, 11, 12, 13, 14, 15, 16, 17, 18], pa.int64()),
        "t": pa.array([1, 2, 3, 4, 5, 6, 6, 7, 1], pa.int64()),
        "rating": pa.array([5, 5, 5, 2, 5, 5, 5, 5, 5], pa.int64()),
    })
    hist = add_histories(table, _spec())["history"].to_pylist()
    # Items 10, 11, 14, 15 are positives of test/valid rows: never in any history. 13 is a negative.
    assert hist[0] == [] and hist[1] == [] and hist[2] == []
    assert hist[3] == ["12"]  # 12 at t=3 < 4
    assert hist[6] == ["12"]  # 16 is at the same time t=6: strictly before excludes it
    assert hist[7] == ["16", "12"]  # most recent first
    assert hist[8] == []  # another user
    assert add_histories(table, _spec(max_len=1))["history"].to_pylist()[7] == ["16"]


def test_history_follows_a_label_given_by_values():
    table = pa.table({
        "row": pa.array([2, 3, 6, 7], pa.int64()),  # all train
        "user": pa.array([1, 1, 1, 1], pa.int64()),
        "item": pa.array([12, 13, 16, 17], pa.int64()),
        "t": pa.array([1, 2, 3, 4], pa.int64()),
        "outcome": pa.array(["bought", "viewed", "Bought", "bought"]),
    })
    data = _spec().model_dump(mode="json")
    data["labels"] = [{"name": "click", "source": "outcome", "positive": ["bought"]}]
    assert add_histories(table, parse_spec(data))["history"].to_pylist() == [[], ["12"], ["12"], ["12"]]
    data["labels"] = [{"name": "click", "source": "outcome", "when": "!= 'viewed'"}]
    assert add_histories(table, parse_spec(data))["history"].to_pylist() == [[], ["12"], ["12"], ["16", "12"]]


def test_history_label_must_exist():
    bad = _spec().model_dump(mode="json")
    bad["features"][1]["history"]["label"] = "purchase"
    with pytest.raises(SpecError, match="history label 'purchase' is not one of the labels"):
        parse_spec(bad)


def test_ml100k_histories_never_leak(ml100k_dir):
    spec = load_spec(CONFIGS / "ml-100k-history.yaml")
    raw = add_histories(load_source(spec.source), spec)
    users = raw["user_id"].to_numpy()
    items = raw["item_id"].to_numpy()
    times = raw["timestamp"].to_numpy()
    splits = split_of(raw, spec).to_numpy(zero_copy_only=False)
    positive = raw["rating"].to_numpy() >= 4
    # (user, item) is unique in ML-100K: each history entry names exactly one interaction.
    key = users * 10_000 + items
    assert len(np.unique(key)) == len(key)
    where = {k: i for i, k in enumerate(key)}

    history = raw["history"]
    lengths = pc.list_value_length(history).to_numpy()
    parents = np.repeat(np.arange(raw.num_rows), lengths)
    entries = pc.list_flatten(history).to_numpy(zero_copy_only=False).astype(np.int64)
    source = np.array([where[u * 10_000 + i] for u, i in zip(users[parents], entries)])
    assert len(entries) > 2_000_000  # a real history, not an empty one that trivially passes
    assert (splits[source] == "train").all(), "a history item comes from a valid/test row"
    assert positive[source].all(), "a history item was not rated >= 4"
    assert (times[source] < times[parents]).all(), "a history item is not strictly earlier"
    # Most recent first, and complete up to max_len: the count of eligible earlier events, capped at 50.
    within = np.diff(times[source])
    same_row = parents[1:] == parents[:-1]
    assert (within[same_row] <= 0).all()
    rng = np.random.default_rng(0)
    for r in rng.choice(raw.num_rows, size=300, replace=False):
        eligible = (users == users[r]) & (splits == "train") & positive & (times < times[r])
        assert lengths[r] == min(50, int(eligible.sum()))
