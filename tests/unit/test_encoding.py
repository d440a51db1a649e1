"""derive / vocabulary / encode: OOV, hashing, multi-valued features, text, numeric checks."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from muxrec.encoding import (OOV_ID, SKETCH_POINTS, SPLIT_COLUMN, TableVocab, Vocabulary, count_values, derive, encode,
                             merge_sketches, moments, quantile_sketch, split_of, with_row_numbers)
from muxrec.errors import DataError
from muxrec.spec import FeatureSpec, ModelInputs

from tests.helpers import tiny_raw, tiny_spec


def _fit(spec, raw):
    derived = derive(raw, spec)
    return derived, Vocabulary.fit(spec, count_values(derived, spec), moments(derived, spec),
                                   quantile_sketch(derived, spec))


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
    with pytest.raises(DataError, match=r"feature 'price' \(column 'price'\): 1 NaN/inf value\(s\), first at row 3 \("):
        derive(raw.set_column(3, "price", pa.array(prices)), tiny_spec())


def test_missing_numeric_needs_a_fill_value():
    raw = tiny_raw(4)
    raw = raw.set_column(3, "price", pa.array([1.0, None, 2.0, 3.0]))
    with pytest.raises(DataError, match=r"\(column 'price'\): 1 missing value\(s\), first at row 1 \(None\); declare `fill`"):
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


def test_vocabulary_json_is_written_a_slice_of_values_at_a_time(monkeypatch, tmp_path):
    """Slices of 2 values (and the edges: an empty table, awkward strings) make the same vocabulary."""
    import json

    import muxrec.encoding

    monkeypatch.setattr(muxrec.encoding, "VALUES_PER_WRITE", 2)
    values = ["a", 'q"uote', "é", "line\nbreak", "\\", "z"]
    vocab = Vocabulary("fp", {"v": TableVocab("v", values=values), "empty": TableVocab("empty", values=[]),
                              "h": TableVocab("h", hash_buckets=8, multiplex=True),
                              "b": TableVocab("b", boundaries=[0.5, 2.0])}, {})
    vocab.save(tmp_path / "vocabulary.json")
    data = json.loads((tmp_path / "vocabulary.json").read_text())
    assert data["tables"]["v"]["values"] == values and data["tables"]["empty"]["values"] == []
    assert data["tables"]["h"] == {"hash_buckets": 8, "multiplex": True, "values": None}
    again = Vocabulary.load(tmp_path / "vocabulary.json")
    assert again.num_embeddings() == {"v": 7, "empty": 1, "h": 9, "b": 4}
    assert again.tables["v"].values.to_pylist() == values and again.to_json() == vocab.to_json()


def test_prepared_data_reads_its_vocabulary_when_first_used_and_checks_it_against_the_spec(tmp_path):
    """Loading a prepared folder leaves the vocabulary on disk; the first use reads it, and refuses one
    fitted for another spec in one line."""
    from muxrec.pipelines.prepare import PreparedData

    spec = tiny_spec()
    _, vocab = _fit(spec, tiny_raw(50))
    (tmp_path / "spec.yaml").write_text(spec.to_yaml())
    (tmp_path / "stats.json").write_text("{}")
    vocab.save(tmp_path / "vocabulary.json")
    prepared = PreparedData.load(tmp_path)
    assert "vocab" not in vars(prepared)  # not read yet
    assert prepared.inputs == ModelInputs.from_spec(spec, vocab.num_embeddings())
    other = tiny_spec(features=[{"name": "color", "kind": "categorical"}])
    (tmp_path / "spec.yaml").write_text(other.to_yaml())
    with pytest.raises(DataError, match="the vocabulary does not match spec.yaml; re-run prepare"):
        PreparedData.load(tmp_path).vocab


def test_hash_split_follows_the_rule():
    spec = tiny_spec(split={"hash": {"a": 1000003, "b": 1}, "buckets": 10, "test": [0], "valid": [1]})
    table = pa.table({"a": pa.array([1, 2, 3, 10], pa.int64()), "b": pa.array([7, 4, 9, 0], pa.int64())})
    expected = [{0: "test", 1: "valid"}.get((a * 1000003 + b) % 10, "train") for a, b in [(1, 7), (2, 4), (3, 9), (10, 0)]]
    assert split_of(table, spec).to_pylist() == expected
    with pytest.raises(DataError, match=r"must be integer .*hash any column with `hash: \[a\]`"):
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


def _label_of(label: dict, values: list) -> list:
    spec = tiny_spec(labels=[{"name": "y", "source": "income", **label}])
    return derive(tiny_raw(len(values)).append_column("income", pa.array(values)), spec)["y"].to_pylist()


def test_labels_by_positive_values_and_by_comparison():
    income = ["<=50K", ">50K", ">50K.", "<=50K", ">50K"]
    assert _label_of({"positive": [">50K", ">50K."]}, income) == [0, 1, 1, 0, 1]
    assert _label_of({"when": "== '>50K'"}, income) == [0, 1, 0, 0, 1]
    assert _label_of({"when": "!= '<=50K'"}, income) == [0, 1, 1, 0, 1]
    hours = [10, 40, 41, 60, 40]
    assert _label_of({"when": "> 40"}, hours) == [0, 0, 1, 1, 0]
    assert _label_of({"when": "<= 40"}, hours) == [1, 1, 0, 0, 1]
    assert _label_of({"positive": [40, 60]}, hours) == [0, 1, 0, 1, 1]  # integer values read as text
    assert _label_of({"positive": [40]}, [40.0, 41.0, 40.0, 1.0, 2.0]) == [1, 0, 1, 0, 0]


@pytest.mark.parametrize("label, values, message", [
    ({"positive": [">50K"]}, [">50K", None, "<=50K"], r"label 'y' \(column 'income'\): 1 missing value\(s\), first at row 1"),
    ({"when": "> 3"}, ["4", "x", "2"], r"label 'y' \(column 'income'\): expected numbers, got text, first at row 1 \('x'\)"),
    ({}, [0, 1, 2], r"label 'y' \(column 'income'\): values other than 0/1, first at row 2 \(2.0\)"),
])
def test_bad_label_values_name_label_column_and_row(label, values, message):
    with pytest.raises(DataError, match=message):
        _label_of(label, values)


def _split(split: dict, table: pa.Table) -> list:
    return split_of(table, tiny_spec(split={"buckets": 10, "test": [0], "valid": [1], **split})).to_pylist()


def test_hash_split_of_any_columns_is_seeded_and_fixed_by_the_bytes():
    n = 4000
    table = pa.table({"city": pa.array([f"city {i % 700}" for i in range(n)]),
                      "code": pa.array([i % 13 for i in range(n)], pa.int64())})
    by_city = _split({"hash": ["city"]}, table)
    # A function of the value: equal values, equal splits; a block cut anywhere gives the same.
    assert _split({"hash": ["city"]}, table.slice(1234, 100)) == by_city[1234:1334]
    assert len({(c, s) for c, s in zip(table["city"].to_pylist(), by_city)}) == 700
    counts = {s: by_city.count(s) / n for s in ("train", "valid", "test")}
    assert counts["test"] == pytest.approx(0.1, abs=0.03) and counts["valid"] == pytest.approx(0.1, abs=0.03)
    assert _split({"hash": ["city"], "seed": 1}, table) != by_city
    assert _split({"hash": ["city", "code"]}, table) != by_city
    # Integers and their float form hash alike (both read "3"); the documented definition, by hand:
    salt = (0).to_bytes(8, "little")
    h = int.from_bytes(hashlib.blake2b(b"3", digest_size=8, salt=salt).digest(), "little")
    from muxrec.encoding import _splitmix64
    expected = {0: "test", 1: "valid"}.get(int(_splitmix64(np.array([h], np.uint64))[0] % 10), "train")
    assert _split({"hash": ["code"]}, pa.table({"code": pa.array([3])})) == \
        _split({"hash": ["code"]}, pa.table({"code": pa.array([3.0])})) == [expected]


def test_hash_split_is_the_same_in_another_process():
    table = pa.table({"name": pa.array([f"n{i}" for i in range(300)])})
    here = _split({"hash": ["name"], "seed": 9}, table)
    code = ("import pyarrow as pa; from muxrec.encoding import split_of; from tests.helpers import tiny_spec;"
            "t = pa.table({'name': pa.array([f'n{i}' for i in range(300)])});"
            "print(','.join(split_of(t, tiny_spec(split={'hash': ['name'], 'seed': 9, 'buckets': 10,"
            " 'test': [0], 'valid': [1]})).to_pylist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, cwd=Path(__file__).parents[2])
    assert out.stdout.strip().split(",") == here


def test_row_number_split_uses_the_source_position():
    table = tiny_raw(1000).drop_columns(["row"])
    whole = _split({"row_number": True}, table)
    assert {s: whole.count(s) for s in ("valid", "test")} == {"valid": pytest.approx(100, abs=30),
                                                             "test": pytest.approx(100, abs=30)}
    # A block carries its rows' source positions, so it splits as it would inside the whole table.
    block = with_row_numbers(table).slice(600, 50)
    assert _split({"row_number": True}, block) == whole[600:650]
    assert _split({"row_number": True, "seed": 2}, table) != whole


def _bucket_spec(bucketize: dict, **extra) -> FeatureSpec:
    return tiny_spec(features=[{"name": "price_bucket", "kind": "categorical", "source": "price",
                                "bucketize": bucketize, **extra}])


def test_explicit_boundaries_cut_numbers_into_ids_and_missing_is_id_0():
    spec = _bucket_spec({"boundaries": [10, 20]})
    raw = tiny_raw(6).set_column(3, "price", pa.array([5.0, 10.0, 19.9, 20.0, None, 300.0]))
    derived, vocab = _fit(spec, raw)
    assert vocab.tables["price_bucket"].num_embeddings == 4
    assert encode(derived, spec, vocab)["price_bucket"].to_pylist() == [1, 2, 2, 3, OOV_ID, 3]
    with pytest.raises(DataError, match=r"feature 'price_bucket' \(column 'price'\): expected numbers, got text, "
                                        r"first at row 2 \('cheap'\)"):
        derive(raw.set_column(3, "price", pa.array(["1", "2", "cheap", "4", None, "5"])), spec)
    with pytest.raises(DataError, match=r"\(column 'price'\): 1 missing value\(s\), first at row 4"):
        derive(raw, _bucket_spec({"boundaries": [10, 20]}, required=True))


def test_quantile_buckets_are_fitted_on_train_rows_from_a_mergeable_sketch():
    rng = np.random.default_rng(5)
    x = rng.lognormal(3, 1, size=50_000)
    spec = _bucket_spec({"quantiles": 10})
    derived = derive(tiny_raw(len(x)).set_column(3, "price", pa.array(x)), spec)
    train = derived.filter(pc.equal(derived[SPLIT_COLUMN], "train"))
    blocks = [train.slice(i, 7000) for i in range(0, train.num_rows, 7000)]
    sketch = merge_sketches(*[quantile_sketch(b, spec) for b in blocks])
    assert sketch.num_rows <= SKETCH_POINTS  # bounded, however many rows
    vocab = Vocabulary.fit(spec, count_values(train, spec), moments(train, spec), sketch)
    boundaries = vocab.tables["price_bucket"].boundaries
    # Each cut within 0.3% of the rows' ranks of the exact decile (the sketch keeps 1024 points).
    ranks = np.searchsorted(np.sort(train["price_bucket"].to_numpy()), boundaries) / train.num_rows
    np.testing.assert_allclose(ranks, np.arange(1, 10) / 10, atol=3e-3)
    assert np.all(np.diff(boundaries) > 0) and len(boundaries) == 9
    ids = encode(derived, spec, vocab)["price_bucket"].to_numpy()
    assert set(np.unique(ids)) == set(range(1, 11))
    assert np.bincount(ids[derived[SPLIT_COLUMN].to_numpy(zero_copy_only=False) == "train"])[1:] / train.num_rows == \
        pytest.approx([0.1] * 10, abs=5e-3)
    # The vocabulary file keeps the fitted boundaries.
    assert Vocabulary.from_json(vocab.to_json()).tables["price_bucket"].boundaries == boundaries


def test_quantile_buckets_merge_repeated_values():
    spec = _bucket_spec({"quantiles": 4})
    raw = tiny_raw(100).set_column(3, "price", pa.array([0.0] * 70 + [float(i) for i in range(1, 31)]))
    derived, vocab = _fit(spec, raw)
    assert vocab.tables["price_bucket"].boundaries == [0.0, 5.0]  # three of four cuts fall on 0


def test_missing_categorical_and_text_values_read_as_missing_unless_required():
    spec = tiny_spec(features=[{"name": "color", "kind": "categorical"},
                               {"name": "title", "kind": "text", "max_len": 4, "hash_buckets": 16}])
    raw = tiny_raw(4).set_column(1, "color", pa.array(["red", None, "", "blue"]))
    raw = raw.set_column(4, "title", pa.array(["Big Sale", None, "", "x"]))
    derived, vocab = _fit(spec, raw)
    assert derived["color"].to_pylist() == ["red", None, None, "blue"]  # an empty string is missing too
    assert derived["title"].to_pylist() == [["big", "sale"], [], [], ["x"]]
    assert encode(derived, spec, vocab)["color"].to_pylist()[1:3] == [OOV_ID, OOV_ID]
    required = tiny_spec(features=[{"name": "color", "kind": "categorical", "required": True}])
    with pytest.raises(DataError, match=r"feature 'color' \(column 'color'\): 2 missing value\(s\), first at row 1 "
                                        r"\(None\); the feature is required"):
        derive(raw, required)


def test_a_bad_value_inside_a_list_names_its_row():
    spec = tiny_spec(features=[{"name": "tags", "kind": "multi_categorical", "max_len": 4}])
    raw = tiny_raw(3).set_column(2, "tags", pa.array([[1.0, 2.0], [3.0], [4.0, float("nan")]]))
    with pytest.raises(DataError, match=r"feature 'tags' \(column 'tags'\): NaN/inf is not a category value, "
                                        r"first at row 2 \(nan\)"):
        derive(raw, spec)


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


def test_text_keeps_words_of_any_script():
    spec = tiny_spec()
    raw = tiny_raw(3).set_column(4, "title", pa.array(["Crème brûlée", "東京の寿司 best", "Les Misérables (1995)"]))
    tokens = derive(raw, spec)["title"].to_pylist()
    assert tokens == [["crème", "brûlée"], ["東京の寿司", "best"], ["les", "misérables", "1995"]]
