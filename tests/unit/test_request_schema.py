"""The HTTP request schema against preprocessing: a field omitted (or null) in a request reads as
the same field null in the source data, and a required one is refused in both places."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from fastapi.exceptions import RequestValidationError

from muxrec.encoding import Vocabulary, count_values, derive, encode, moments, quantile_sketch
from muxrec.errors import DataError
from muxrec.services.calls import ScoreCall
from muxrec.services.schema import ModelColumns, RequestSchema, column_changes
from muxrec.services.settings import ServeSettings
from muxrec.spec import FeatureSpec, parse_spec

SPEC = {
    "name": "shop clicks",
    "source": {"loader": "parquet", "path": "/nonexistent"},
    "labels": [{"name": "click", "source": "clicked"}],
    "split": {"row_number": True, "buckets": 4, "test": [0], "valid": [1]},
    "features": [
        {"name": "shop", "kind": "categorical", "source": "shop name"},
        {"name": "title", "kind": "text", "source": "product title", "max_len": 6, "hash_buckets": 64},
        {"name": "tags", "kind": "multi_categorical", "max_len": 3},
        {"name": "price_band", "kind": "categorical", "source": "unit price", "bucketize": {"quantiles": 4}},
        {"name": "stock", "kind": "numeric", "fill": 0},
        {"name": "country", "kind": "categorical", "required": True},
        {"name": "copy", "kind": "categorical"},  # a column named like a BaseModel attribute
    ],
}


def _source(n: int = 200) -> pa.Table:
    rng = np.random.default_rng(3)
    missing = rng.random(n) < 0.3
    return pa.table({
        "shop name": pa.array([None if m else f"shop {i % 9}" for i, m in enumerate(missing)]),
        "product title": pa.array([None if m else f"Red shoe {i % 5}" for i, m in enumerate(missing)]),
        "tags": pa.array([None if m else ["a", "b"][: i % 3] for i, m in enumerate(missing)], pa.list_(pa.string())),
        "unit price": pa.array([None if m else float(i % 50) for i, m in enumerate(missing)]),
        "stock": pa.array([None if m else float(i % 7) for i, m in enumerate(missing)]),
        "country": pa.array([["de", "fr"][i % 2] for i in range(n)]),
        "copy": pa.array([None if m else "c" for m in missing]),
        "clicked": pa.array(rng.integers(0, 2, n)),
    })


def test_an_omitted_field_encodes_as_the_same_field_null_in_the_source():
    spec = parse_spec(SPEC)
    source = _source()
    derived = derive(source, spec)
    vocab = Vocabulary.fit(spec, count_values(derived, spec), moments(derived, spec), quantile_sketch(derived, spec))
    offline = encode(derived, spec, vocab)
    schema = RequestSchema(spec, ServeSettings())
    assert {c.name: c.required for c in schema.columns} == {
        "shop name": False, "product title": False, "tags": False, "unit price": False, "stock": False,
        "country": True, "copy": False}
    # Request rows as a client sends them: null source fields omitted (first half) or sent as null.
    rows = source.drop_columns(["clicked"]).to_pylist()
    body = [{k: v for k, v in r.items() if v is not None} if i % 2 else r for i, r in enumerate(rows)]
    request = schema.Request.model_validate({"candidates": body})
    table, _ = schema.to_table(request)
    received = ScoreCall.of("v0001", table).rows()  # what the Ranker reads: the table sent as an Arrow IPC stream
    assert received.equals(table) and received.schema == table.schema
    online = encode(derive(received, spec, labels=False, split=False), spec, vocab)
    nulls = [i for i, r in enumerate(rows) if r["shop name"] is None]
    assert len(nulls) > 20
    for f in spec.features:
        assert online[f.name].to_pylist() == offline[f.name].to_pylist(), f.name
    assert {offline["shop"][i].as_py() for i in nulls} == {0} and {offline["price_band"][i].as_py() for i in nulls} == {0}
    assert {len(offline["title"][i].as_py()) for i in nulls} == {0}


def test_a_required_field_is_refused_in_requests_and_in_source_data():
    spec = parse_spec(SPEC)
    schema = RequestSchema(spec, ServeSettings())
    request = schema.Request.model_validate({"candidates": [{"shop name": "shop 1"}]})
    with pytest.raises(RequestValidationError) as err:
        schema.to_table(request)
    assert [e["loc"] for e in err.value.errors()] == [("body", "candidates", 0, "country")]
    source = _source(10)
    countries = source["country"].to_pylist()
    countries[4] = None
    with pytest.raises(DataError, match=r"feature 'country' \(column 'country'\): 1 missing value\(s\), first at row 4"):
        derive(source.set_column(5, "country", pa.array(countries)), spec)


def test_request_fields_are_the_source_column_names():
    schema = RequestSchema(parse_spec(SPEC), ServeSettings())
    props = schema.Request.model_json_schema()["$defs"]["ShopClicksRow"]["properties"]
    assert set(props) == {"shop name", "product title", "tags", "unit price", "stock", "country", "copy"}
    with pytest.raises(Exception, match="shop_name"):
        schema.Request.model_validate({"candidates": [{"shop_name": "x", "country": "de"}]})


# ---- a live model that reads a subset of the request model's fields -------------------------------

def _subset(keep: list[str], **changes) -> FeatureSpec:
    from muxrec.selection import subset_spec

    spec = subset_spec(parse_spec(SPEC), keep, "shop clicks lean")
    return parse_spec({**spec.model_dump(mode="json", exclude_defaults=True), **changes}) if changes else spec


def test_a_subset_of_the_request_columns_has_no_changes_and_others_are_named():
    served = parse_spec(SPEC).request_columns()
    assert column_changes(served, _subset(["shop", "stock"]).request_columns()) == []
    assert column_changes(served, served) == []
    # `unit price` read as a number by price_band; a numeric feature of the same column is no change...
    features = [{"name": "unit_price", "kind": "numeric", "source": "unit price"}, {"name": "colour", "kind": "categorical"},
                {"name": "tags", "kind": "categorical"}]  # ...a new column and a list read as one value are
    changes = column_changes(served, parse_spec({**SPEC, "features": features}).request_columns())
    assert changes == ["'colour' (string) is not a field of the request model",
                       "'tags' is read as string, the request model has it as string_list"]


def test_the_live_columns_decide_what_is_required_and_sent_the_request_model_stays():
    spec = parse_spec(SPEC)
    schema = RequestSchema(spec, ServeSettings())
    live = ModelColumns.of(_subset(["shop", "stock"]))
    assert [c.name for c in live.columns] == ["shop name", "stock"]
    # `country`, required by the deploy-time spec, is not read by the live model: it may be omitted,
    # and a given one is accepted and not sent.
    rows = [{"shop name": "shop 1", "stock": 2}, {"shop name": "shop 2", "country": "de", "tags": ["a"]}]
    table, ids = schema.to_table(schema.Request.model_validate({"candidates": rows}), live.columns)
    assert table.column_names == ["shop name", "stock"] and table.to_pylist() == [
        {"shop name": "shop 1", "stock": 2.0}, {"shop name": "shop 2", "stock": None}]
    assert ids == ["0", "1"]
    with pytest.raises(RequestValidationError):  # the deploy-time spec's own columns still require it
        schema.to_table(schema.Request.model_validate({"candidates": rows}))
    # A field the live model requires is refused, naming the candidate and field.
    strict = ModelColumns.of(_subset(["shop", "country"]))
    with pytest.raises(RequestValidationError) as err:
        schema.to_table(schema.Request.model_validate({"candidates": rows}), strict.columns)
    assert [e["loc"] for e in err.value.errors()] == [("body", "candidates", 0, "country")]


def test_candidate_ids_come_from_the_item_key_the_live_model_does_not_read():
    spec = parse_spec({**SPEC, "keys": {"item": "shop name"}})
    schema = RequestSchema(spec, ServeSettings())
    live = ModelColumns.of(_subset(["stock"]))
    body = {"candidates": [{"shop name": "s1"}, {"stock": 1}, {"shop name": 7}], "context": {"country": "de"}}
    table, ids = schema.to_table(schema.Request.model_validate(body), live.columns)
    assert table.column_names == ["stock"] and ids == ["s1", "1", "7"]
    _, ids = schema.to_table(schema.Request.model_validate({"candidates": [{}, {}], "context": {"shop name": "s"}}),
                             live.columns)
    assert ids == ["s", "s"]
