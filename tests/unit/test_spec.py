"""The feature spec: parsing, validation errors, and the three views derived from it."""

from __future__ import annotations

import pytest

from muxrec.encoding import derive
from muxrec.errors import SpecError
from muxrec.spec import FeatureKind, ModelInputs, load_spec, parse_spec, spec_from_yaml

from tests.conftest import CONFIGS
from tests.helpers import fitted, synthetic_raw, synthetic_spec, tiny_spec


@pytest.mark.parametrize("name", ["ml-100k", "ml-100k-graded", "ml-100k-history", "ml-100k-graded-history",
                                  "ml-100k-unified", "synthetic", "synthetic-large", "ml-100k-mtl"])
def test_shipped_specs_load_and_round_trip(name):
    spec = load_spec(CONFIGS / f"{name}.yaml")
    again = spec_from_yaml(spec.to_yaml())
    assert again == spec
    assert again.fingerprint() == spec.fingerprint()


def test_ml100k_spec_is_the_benchmark_protocol():
    spec = load_spec(CONFIGS / "ml-100k.yaml")
    assert [f.name for f in spec.features] == ["user_id", "item_id", "age", "gender", "occupation", "zip_code",
                                                "release_year", "genres"]
    assert spec.labels[0].source == "rating" and spec.labels[0].threshold == 4
    assert spec.split.hash == {"user_id": 1000003, "item_id": 1}
    assert (spec.split.buckets, spec.split.test, spec.split.valid) == (10, [0], [1])


@pytest.mark.parametrize("graded, plain", [("ml-100k-graded", "ml-100k"),
                                            ("ml-100k-graded-history", "ml-100k-history")])
def test_graded_specs_keep_the_protocol_and_add_training_targets_only(graded, plain):
    g, p = load_spec(CONFIGS / f"{graded}.yaml"), load_spec(CONFIGS / f"{plain}.yaml")
    assert (g.features, g.split, g.tables, g.label_names) == (p.features, p.split, p.tables, p.label_names)
    assert (g.labels[0].source, g.labels[0].threshold) == (p.labels[0].source, p.labels[0].threshold)
    assert g.labels[0].grades == (2, 3, 5) and not p.labels[0].grades


def test_malformed_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfeatures:\n  - {name: a, kind: categorical\n")
    with pytest.raises(SpecError, match=r"malformed YAML at line \d+"):
        load_spec(bad)


def test_unknown_feature_kind_names_the_field():
    with pytest.raises(SpecError, match=r"features\.0\.kind: Input should be 'categorical'"):
        tiny_spec(features=[{"name": "a", "kind": "categorial"}])


@pytest.mark.parametrize("features, message", [
    ([{"name": "a", "kind": "multi_categorical"}], "needs `max_len`"),
    ([{"name": "a", "kind": "numeric", "min_count": 3}], "`min_count` does not apply to a numeric feature"),
    ([{"name": "a", "kind": "categorical"}, {"name": "a", "kind": "numeric"}], "declared twice"),
    ([{"name": "a", "kind": "categorical", "table": "nope"}], "names table 'nope', which is not declared"),
    ([{"name": "a", "kind": "text", "max_len": 3}], "needs `hash_buckets`"),
    ([{"name": "a", "kind": "sequence", "max_len": 3, "pooling": "mean"}], "not pooled"),
    ([{"name": "a", "kind": "categorical", "colour": 1}], r"features\.0\.colour: Extra inputs are not permitted"),
])
def test_invalid_features_are_refused_with_a_reason(features, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(features=features)


def test_shared_table_settings_live_on_the_table():
    with pytest.raises(SpecError, match="set \\['min_count'\\] on the table"):
        tiny_spec(tables={"t": {}}, features=[{"name": "a", "kind": "categorical", "table": "t", "min_count": 2}])
    spec = tiny_spec(tables={"t": {"min_count": 2}}, features=[
        {"name": "a", "kind": "categorical", "table": "t"},
        {"name": "b", "kind": "multi_categorical", "max_len": 2, "table": "t"},
    ])
    (table,) = spec.tables_list()
    assert (table.name, table.features, table.min_count) == ("t", ("a", "b"), 2)


def test_split_buckets_are_checked():
    with pytest.raises(SpecError, match="outside 0..3"):
        tiny_spec(split={"hash": {"row": 1}, "buckets": 4, "test": [4], "valid": [1]})
    with pytest.raises(SpecError, match="both test and valid"):
        tiny_spec(split={"hash": {"row": 1}, "buckets": 4, "test": [1], "valid": [1]})


def test_spec_must_be_a_mapping():
    with pytest.raises(SpecError, match="must be a mapping"):
        parse_spec(["not", "a", "mapping"])


def test_three_views_agree():
    """Preprocessing output, model inputs and request schema are derived from one spec and match."""
    spec = synthetic_spec(rows=600)
    raw = synthetic_raw(spec)
    vocab, encoded = fitted(spec, raw)
    inputs = ModelInputs.from_spec(spec, vocab.num_embeddings())

    # Preprocessing writes one column per feature, typed by kind.
    train = encoded["train"]
    for f in spec.features:
        assert f.name in train.column_names
    # Model inputs: every feature is a field (sequences mean-pooled), every id feature reads a table.
    assert inputs.fields == tuple(f.name for f in spec.features)
    assert set(inputs.sequences) == {f.name for f in spec.of_kind(FeatureKind.SEQUENCE)}
    tables = {t.name: t for t in inputs.tables}
    for f in spec.features:
        if f.table_name:
            t = tables[f.table_name]
            assert f.name in t.feature_names + t.sequence_names
            assert t.num_embeddings == vocab.tables[f.table_name].num_embeddings
    # The item table is shared by item_id (pooled) and history (per position).
    assert tables["item"].feature_names == ("item_id",) and tables["item"].sequence_names == ("history",)
    # The request schema names exactly the raw columns derive() reads; one raw row derives cleanly.
    request = {c.name: c for c in spec.request_columns()}
    assert set(request) == {f.column for f in spec.features}
    row = raw.slice(0, 1).select(list(request))
    derived = derive(row, spec, labels=False, split=False)
    assert set(derived.column_names) >= {f.name for f in spec.features}
    assert request["price"].type == "number" and request["tags"].type == "string_list"
    assert request["title"].type == "string"


def _graded(**label):
    return tiny_spec(labels=[{"name": "click", "source": "stars", **label}])


def test_grades_add_label_columns_after_the_tasks():
    spec = _graded(threshold=4, grades=[2, 3, 5])
    assert spec.labels[0].grade_columns == ("click@2", "click@3", "click@5")
    assert spec.label_names == ["click"]
    assert spec.label_columns == ["click", "click@2", "click@3", "click@5"]
    inputs = ModelInputs.from_spec(spec, {"color": 5, "tags": 6, "title": 17})
    assert inputs.tasks == ("click",)  # the model still predicts the label alone
    assert inputs.label_columns == ("click", "click@2", "click@3", "click@5")


@pytest.mark.parametrize("label, message", [
    ({"grades": [2, 3]}, "`grades` needs a `threshold`"),
    ({"threshold": 4, "grades": [2, 2]}, "must be distinct"),
    ({"threshold": 4, "grades": [4, 5]}, "differ from the threshold 4"),
    ({"threshold": 4, "grades": [float("nan")]}, "finite"),
    ({"threshold": 4, "grades": list(range(10, 27))}, r"labels\.0\.grades"),
])
def test_bad_grades_are_refused_naming_the_label(label, message):
    with pytest.raises(SpecError, match=message):
        _graded(**label)


def test_specs_without_grades_keep_the_fingerprint_they_had_before_grades_existed():
    # Published models and prepared data record this hash (computed before `grades` was added);
    # a changed hash would make every one of them refuse to load.
    assert load_spec(CONFIGS / "ml-100k.yaml").fingerprint() == \
        "b76f131ae360e266db597673ff9f06637a7ffcf800a1bb4c69a7b585e7f6cd18"
    graded = load_spec(CONFIGS / "ml-100k-graded.yaml")
    assert graded.fingerprint() != load_spec(CONFIGS / "ml-100k.yaml").fingerprint()


@pytest.mark.parametrize("label, message", [
    ({"threshold": 4, "positive": [">50K"]}, r"label 'click': give one rule, not \['threshold', 'positive'\]"),
    ({"positive": [">50K"], "when": "== 'x'"}, r"label 'click': give one rule, not \['positive', 'when'\]"),
    ({"positive": []}, r"labels\.0\.positive"),
    ({"when": "about 3"}, r"label 'click': `when` must read `<op> <value>`"),
    ({"when": "> 'abc'"}, r"label 'click': `>` compares numbers; got the string 'abc'"),
    ({"when": "== foo"}, r"label 'click': `when` value 'foo' is neither a number nor a quoted string"),
    ({"when": "== __import__('os')"}, r"neither a number nor a quoted string"),
    ({"when": ">= inf"}, r"neither a number nor a quoted string"),
    ({"positive": [">50K"], "grades": [2]}, "`grades` needs a `threshold`"),
])
def test_a_label_takes_at_most_one_rule_and_errors_name_it(label, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(labels=[{"name": "click", "source": "income", **label}])


def test_label_rules_parse():
    positive = tiny_spec(labels=[{"name": "rich", "source": "income", "positive": [">50K", 1, 2.0, 2.5]}]).labels[0]
    assert positive.positive_texts == (">50K", "1", "2", "2.5")  # as derive() writes categories
    when = tiny_spec(labels=[{"name": "long", "source": "hours", "when": " <= 40.5 "}]).labels[0]
    assert when.comparison == ("<=", 40.5)
    assert tiny_spec(labels=[{"name": "yes", "source": "a", "when": "!= 'no'"}]).labels[0].comparison == ("!=", "no")


@pytest.mark.parametrize("split, message", [
    ({"buckets": 4, "test": [0], "valid": [1]}, "give one split rule"),
    ({"hash": ["a"], "row_number": True, "buckets": 4, "test": [0], "valid": [1]}, "give one split rule"),
    ({"hash": [], "buckets": 4, "test": [0], "valid": [1]}, "at least one column"),
    ({"hash": {"a": 3}, "seed": 5, "buckets": 4, "test": [0], "valid": [1]}, "`seed` applies to"),
    ({"row_number": True, "seed": -1, "buckets": 4, "test": [0], "valid": [1]}, r"split\.seed"),
])
def test_split_rules_are_checked(split, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(split=split)


@pytest.mark.parametrize("feature, message", [
    ({"kind": "numeric", "bucketize": {"quantiles": 4}}, "`bucketize` applies to categorical features"),
    ({"kind": "categorical", "bucketize": {}}, "one of `quantiles` or `boundaries`"),
    ({"kind": "categorical", "bucketize": {"quantiles": 4, "boundaries": [1]}}, "one of `quantiles` or `boundaries`"),
    ({"kind": "categorical", "bucketize": {"boundaries": [3, 2]}}, "strictly increasing"),
    ({"kind": "categorical", "bucketize": {"boundaries": [1, float("inf")]}}, "finite"),
    ({"kind": "categorical", "bucketize": {"quantiles": 1}}, r"bucketize\.quantiles"),
    ({"kind": "categorical", "bucketize": {"quantiles": 4}, "hash_buckets": 8}, "`hash_buckets` does not apply"),
    ({"kind": "categorical", "bucketize": {"quantiles": 4}, "fill": "x"}, "must be a number"),
    ({"kind": "categorical", "required": True, "fill": "x"}, "drop `required` or `fill`"),
    ({"kind": "numeric", "required": False}, "without `fill` is required"),
])
def test_bucketize_and_required_are_checked(feature, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(features=[{"name": "a", **feature}])


def test_request_columns_follow_the_missing_value_rule():
    spec = tiny_spec(features=[
        {"name": "color", "kind": "categorical"},
        {"name": "shop", "kind": "categorical", "source": "shop name", "required": True},
        {"name": "title", "kind": "text", "source": "product title", "max_len": 4, "hash_buckets": 16},
        {"name": "tags", "kind": "multi_categorical", "max_len": 3},
        {"name": "price", "kind": "numeric"},
        {"name": "weight", "kind": "numeric", "fill": 0},
        {"name": "price_bucket", "kind": "categorical", "source": "price", "bucketize": {"quantiles": 4}},
        {"name": "age", "kind": "categorical", "bucketize": {"boundaries": [18, 65]}},
    ])
    columns = {c.name: (c.type, c.required) for c in spec.request_columns()}
    assert columns == {
        "color": ("string", False), "shop name": ("string", True), "product title": ("string", False),
        "tags": ("string_list", False), "price": ("number", True),  # the numeric feature needs it
        "weight": ("number", False), "age": ("number", False)}


def test_specs_using_the_new_forms_change_the_fingerprint_and_round_trip():
    base = tiny_spec()
    variants = [
        tiny_spec(labels=[{"name": "click", "source": "y", "positive": [1]}]),
        tiny_spec(labels=[{"name": "click", "source": "y", "when": "> 0"}]),
        tiny_spec(split={"hash": ["row"], "buckets": 4, "test": [0], "valid": [1]}),
        tiny_spec(split={"hash": ["row"], "seed": 3, "buckets": 4, "test": [0], "valid": [1]}),
        tiny_spec(split={"row_number": True, "buckets": 4, "test": [0], "valid": [1]}),
        tiny_spec(features=[{"name": "color", "kind": "categorical", "required": True}]),
        tiny_spec(features=[{"name": "color", "kind": "categorical", "required": False}]),
        tiny_spec(features=[{"name": "price", "kind": "categorical", "bucketize": {"quantiles": 5}}]),
    ]
    prints = {s.fingerprint() for s in variants}
    assert len(prints) == len(variants) and base.fingerprint() not in prints
    for spec in variants:
        assert spec_from_yaml(spec.to_yaml()) == spec


def _with_labels(labels, blend=None):
    data = {"name": "t", "source": {"loader": "csv", "path": "x.csv"}, "labels": labels,
            "split": {"row_number": True, "buckets": 10, "test": [0], "valid": [1]},
            "features": [{"name": "color", "kind": "categorical"}]}
    if blend is not None:
        data["blend"] = blend
    return parse_spec(data)


@pytest.mark.parametrize("labels, blend, message", [
    ([{"name": "buy", "source": "z", "parent": "click"}, {"name": "click", "source": "y"}], None,
     "label 'buy': parent 'click' must be a label declared before it (declared before: none)"),
    ([{"name": "click", "source": "y", "parent": "click"}], None, "parent 'click' must be a label declared before"),
    ([{"name": "click", "source": "y"}, {"name": "click", "source": "z"}], None, "label 'click' is declared twice"),
    ([{"name": "click", "source": "y", "weight": 0}], None, "weight"),
    ([{"name": "click", "source": "y"}], {"buy": 1.0}, "blend: unknown task(s) ['buy']; tasks: ['click']"),
    ([{"name": "click", "source": "y"}], {"click": -1}, "blend.click: weight must be a finite number >= 0"),
    ([{"name": "click", "source": "y"}], {"click": 0}, "blend: at least one weight must be > 0"),
])
def test_tasks_parents_weights_and_blend_are_checked(labels, blend, message):
    with pytest.raises(SpecError) as err:
        _with_labels(labels, blend)
    assert message in str(err.value)


def test_funnel_and_blend_reach_the_model_inputs():
    spec = load_spec(CONFIGS / "ml-100k-mtl.yaml")
    assert spec.label_names == ["like", "love"]
    assert spec.task_blend == {"like": 0.5, "love": 0.5}
    inputs = ModelInputs.from_spec(spec, {t.name: 10 for t in spec.tables_list()})
    assert inputs.parents == {"love": "like"} and inputs.parent_index("love") == 0
    assert inputs.parent_index("like") is None
    assert inputs.weights == {"like": 1.0, "love": 1.0}
    # Default blend: the first label alone.
    plain = _with_labels([{"name": "click", "source": "y"}, {"name": "buy", "source": "z", "parent": "click"}])
    assert plain.task_blend == {"click": 1.0}
    # A spec without the new fields keeps its fingerprint: the defaults are left out of it.
    one = _with_labels([{"name": "click", "source": "y"}])
    explicit = _with_labels([{"name": "click", "source": "y", "weight": 1.0, "type": "binary"}], blend={})
    assert one.fingerprint() == explicit.fingerprint()
    assert _with_labels([{"name": "click", "source": "y"}], {"click": 1.0}).fingerprint() != one.fingerprint()
