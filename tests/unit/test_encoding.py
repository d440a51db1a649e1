"""derive / vocabulary / encode: OOV, hashing, multi-valued features, text, numeric checks."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from muxrec.encoding import (OOV_ID, SPLIT_COLUMN, TableVocab, Vocabulary, count_values, derive, encode, moments,
                             split_of)
from muxrec.errors import DataError

from tests.helpers import tiny_raw, tiny_spec


def _fit(spec, raw):
    derived = derive(raw, spec)
    return derived, Vocabulary.fit(spec, count_values(derived, spec), moments(derived, spec))


def test_min_count_sends_rare_values_and_unknowns_to_oov():
    spec, raw = tiny_spec(), tiny_raw(200)
    derived, vocab = _fit(spec, raw)
    counts = dict(zip(*[pc.value_counts(derived["color"]).field(k).to_pylist() for k in ("values", "counts")]))
    kept = [c for c, n in counts.items() if n >= 2]
    # Most frequent first, ties broken by value: ids are deterministic for the same data.
    assert vocab.tables["color"].values.to_pylist() == sorted(kept, key=lambda c: (-counts[c], c))
    ids = vocab.tables["color"].ids(pa.array(["red", "never-seen", None, "green"]))
    assert ids[1] == OOV_ID and ids[2] == OOV_ID
    assert ids[0] != OOV_ID and ids[3] != OOV_ID and ids[0] != ids[3]


def test_hashing_is_stable_and_bounded():
    spec = tiny_spec(features=[{"name": "color", "kind": "categorical", "hash_buckets": 7}])
    _, vocab = _fit(spec, tiny_raw(50))
    table = vocab.tables["color"]
    assert table.num_embeddings == 8
    values = pa.array([f"v{i}" for i in range(500)])
    ids = table.ids(values)
    assert ids.min() >= 1 and ids.max() <= 7
    # Same values -> same ids, in any order or batch (no Python hash() randomisation).
    np.testing.assert_array_equal(table.ids(values[::-1].take(pa.array(range(499, -1, -1)))), ids)
    assert len(set(ids.tolist())) == 7


def test_multi_valued_features_keep_order_truncate_and_map_unknowns():
    spec = tiny_spec()
    derived, vocab = _fit(spec, tiny_raw(300))
    rows = tiny_raw(3).to_pylist()
    rows[0]["tags"] = ["a", "zzz", "b", "c", "d"]  # 5 values, max_len 3, one unknown
    rows[1]["tags"] = []
    rows[2]["tags"] = None
    enc = encode(derive(pa.Table.from_pylist(rows, schema=tiny_raw(1).schema), spec), spec, vocab)
    tags = enc["tags"].to_pylist()
    lookup = vocab.tables["tags"].ids
    assert tags[0] == [int(lookup(pa.array(["a"]))[0]), OOV_ID, int(lookup(pa.array(["b"]))[0])]
    assert tags[1] == [] and tags[2] == []


def test_delimited_string_lists_need_a_separator():
    spec = tiny_spec(features=[{"name": "tags", "kind": "multi_categorical", "max_len": 4, "separator": "|"}])
    raw = tiny_raw(4).set_column(2, "tags", pa.array(["a|b", "c", "", "a|a|d"]))
    assert derive(raw, spec)["tags"].to_pylist() == [["a", "b"], ["c"], [""], ["a", "a", "d"]]
    with pytest.raises(DataError, match="got a string column, expected a list"):
        derive(raw, tiny_spec(features=[{"name": "tags", "kind": "multi_categorical", "max_len": 4}]))


def test_text_is_lowercased_tokenised_and_truncated():
    spec = tiny_spec()
    raw = tiny_raw(2).set_column(4, "title", pa.array(["Hello, WORLD!! foo-bar baz qux", None]))
    assert derive(raw, spec)["title"].to_pylist() == [["hello", "world", "foo", "bar"], []]


def test_slice_and_fill_make_release_year():
    spec = tiny_spec(features=[{"name": "year", "kind": "categorical", "source": "date", "slice": [-4, None],
                                "fill": "unknown"}])
    raw = tiny_raw(3).append_column("date", pa.array(["01-Jan-1995", "", None]))
    assert derive(raw, spec)["year"].to_pylist() == ["1995", "unknown", "unknown"]


def test_integer_and_float_categories_agree():
    spec = tiny_spec(features=[{"name": "code", "kind": "categorical"}])
    ints = derive(tiny_raw(2).append_column("code", pa.array([3, 4])), spec)["code"]
    floats = derive(tiny_raw(2).append_column("code", pa.array([3.0, 4.0])), spec)["code"]
    assert ints.to_pylist() == floats.to_pylist() == ["3", "4"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_in_numeric_input_are_rejected_naming_the_feature(bad):
    raw = tiny_raw(5)
    prices = raw["price"].to_pylist()
    prices[3] = bad
    with pytest.raises(DataError, match=r"feature 'price': 1 NaN/inf value\(s\), first at row 3"):
        derive(raw.set_column(3, "price", pa.array(prices)), tiny_spec())


def test_missing_numeric_needs_a_fill_value():
    raw = tiny_raw(4)
    raw = raw.set_column(3, "price", pa.array([1.0, None, 2.0, 3.0]))
    with pytest.raises(DataError, match="1 missing value.*first at row 1.*declare `fill`"):
        derive(raw, tiny_spec())
    spec = tiny_spec(features=[{"name": "price", "kind": "numeric", "fill": 0.5}])
    assert derive(raw, spec)["price"].to_pylist() == [1.0, 0.5, 2.0, 3.0]


def test_missing_columns_are_listed():
    with pytest.raises(DataError, match=r"missing column\(s\) \['color', 'price'\]"):
        derive(tiny_raw(3).drop_columns(["color", "price"]), tiny_spec())


def test_numeric_features_are_standardised_with_train_statistics():
    spec = tiny_spec()
    derived, vocab = _fit(spec, tiny_raw(500))
    x = derived["price"].to_numpy()
    enc = encode(derived, spec, vocab)["price"].to_numpy()
    np.testing.assert_allclose(enc, (x - x.mean()) / x.std(), rtol=1e-5)
    assert vocab.numeric["price"].count == 500


def test_vocabulary_json_round_trip_and_spec_mismatch():
    spec = tiny_spec()
    derived, vocab = _fit(spec, tiny_raw(100))
    again = Vocabulary.from_json(vocab.to_json())
    assert encode(derived, spec, again).equals(encode(derived, spec, vocab))
    other = tiny_spec(features=[{"name": "color", "kind": "categorical"}])
    with pytest.raises(DataError, match="fitted for another version of the feature spec"):
        encode(derive(tiny_raw(3), other), other, vocab)


def test_hash_split_follows_the_rule():
    spec = tiny_spec(split={"hash": {"a": 1000003, "b": 1}, "buckets": 10, "test": [0], "valid": [1]})
    table = pa.table({"a": pa.array([1, 2, 3, 10], pa.int64()), "b": pa.array([7, 4, 9, 0], pa.int64())})
    expected = [{0: "test", 1: "valid"}.get((a * 1000003 + b) % 10, "train") for a, b in [(1, 7), (2, 4), (3, 9), (10, 0)]]
    assert split_of(table, spec).to_pylist() == expected
    with pytest.raises(DataError, match="must be integer"):
        split_of(table.set_column(0, "a", pa.array(["x"] * 4)), spec)
    assert SPLIT_COLUMN not in table.column_names


def test_grades_become_label_columns_that_pass_through_encode():
    spec = tiny_spec(labels=[{"name": "click", "source": "stars", "threshold": 4, "grades": [2, 5]}])
    stars = np.array([1, 2, 3, 4, 5, 5, 4, 2] * 8)
    raw = tiny_raw(64).append_column("stars", pa.array(stars, pa.int64()))
    derived, vocab = _fit(spec, raw)
    encoded = encode(derived, spec, vocab)
    for table in (derived, encoded):
        assert table["click"].to_pylist() == (stars >= 4).astype(np.float32).tolist()
        assert table["click@2"].to_pylist() == (stars >= 2).astype(np.float32).tolist()
        assert table["click@5"].to_pylist() == (stars >= 5).astype(np.float32).tolist()


def test_large_vocabulary_lookup_matches_the_small_one():
    """Above 4x the block's size the vocabulary is probed with the block's distinct values instead."""
    rng = np.random.default_rng(3)
    vocab = TableVocab("t", values=[f"v{i}" for i in rng.permutation(5000)])
    block = pa.array([f"v{i}" for i in rng.integers(0, 6000, size=300)] + [None, ""], pa.string())
    big = vocab.ids(block)  # 5000 > 4 * 302 values: the probe path
    small = vocab.ids(pa.concat_arrays([block] * 5))[:len(block)]  # 1510 values: one hash of the vocabulary
    position = {v: i for i, v in enumerate(vocab.values.to_pylist())}
    expected = [position[v] + 1 if v in position else 0 for v in block.to_pylist()]
    assert big.tolist() == expected == small.tolist()
    assert (big == 0).sum() > 10 and big[-2] == 0  # unknown values and null map to OOV
