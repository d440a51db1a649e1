"""The selection stage around every method: rankings as registry artifacts, derived specs, CLI errors."""

from __future__ import annotations

import json

import pytest

from muxrec.artifacts import ArtifactRegistry
from muxrec.errors import ArtifactError, ConfigError
from muxrec.pipelines.feature_selection import chosen
from muxrec.pipelines.prepare import _selects_from
from muxrec.selection import (FeatureRanking, FeatureScore, permutation_ranking, publish_ranking, selection_name,
                              stored_rankings, subset_spec)
from tests.helpers import synthetic_spec
from tests.unit.test_cli import run_main


def _ranking(method: str, names: list[str], kept: list[str] | None = None) -> FeatureRanking:
    scores = tuple(FeatureScore(n, float(len(names) - i)) for i, n in enumerate(names))
    return FeatureRanking(method, None if method == "quickselection" else "click", scores,
                          {"kept": kept} if kept else {})


def _model(registry: ArtifactRegistry, spec, name: str = "m", importance: dict | None = None):
    files = {"spec.yaml": spec.to_yaml(), "weights.safetensors": b"w"}
    if importance is not None:
        files["importance.json"] = json.dumps(importance)
    return registry.publish(name, files)


def test_subset_spec_keeps_order_drops_unused_tables_and_checks_names() -> None:
    spec = synthetic_spec(rows=500)
    small = subset_spec(spec, ["price", "site", "item_id"], "small")
    assert [f.name for f in small.features] == ["item_id", "site", "price"]  # spec order, not the ranking's
    assert small.name == "small" and small.source == spec.source and small.labels == spec.labels
    assert list(small.tables) == ["item"]  # history is gone, item_id still reads the shared table
    assert list(subset_spec(spec, ["site"], "s").tables) == []
    assert {c.name for c in small.request_columns()} < {c.name for c in spec.request_columns()}
    with pytest.raises(ValueError, match=r"features \['nope'\] are not in spec"):
        subset_spec(spec, ["site", "nope"], "x")
    with pytest.raises(ValueError, match="at least one feature"):
        subset_spec(spec, [], "x")


def test_a_view_needs_every_feature_defined_alike_over_the_same_rows() -> None:
    spec = synthetic_spec(rows=500)
    small = subset_spec(spec, ["site", "price"], "small")
    assert _selects_from(small, spec)
    assert not _selects_from(spec, small)  # more features than the prepared data has
    assert not _selects_from(small, small)  # itself: that is plain reuse, not a view
    other_rows = synthetic_spec(rows=600)
    assert not _selects_from(small, other_rows)
    data = small.model_dump(mode="json", exclude_defaults=True)
    data["features"][0]["embedding_dim"] = 7  # same name, another definition
    from muxrec.spec import parse_spec
    assert not _selects_from(parse_spec(data), spec)


def test_rankings_round_trip_through_the_registry_per_model_version_and_method(tmp_path) -> None:
    registry = ArtifactRegistry(tmp_path)
    spec = synthetic_spec(rows=500)
    names = [f.name for f in spec.features]
    importance = {"method": "permutation", "task": "click", "metric": "auc_drop", "baseline_auc": 0.7, "repeats": 3,
                  "features": [{"name": n, "importance": 0.1 / (i + 1), "std": 0.01} for i, n in enumerate(names)]}
    v1, v2 = _model(registry, spec, importance=importance), _model(registry, spec)
    other = _model(registry, synthetic_spec(rows=600), name="other")

    outrank = _ranking("outrank", names)
    stored = publish_ranking(registry, outrank, spec)
    assert stored.name == selection_name(spec.name) and stored.metadata["method"] == "outrank"
    newer = publish_ranking(registry, _ranking("outrank", names[::-1]), spec)
    publish_ranking(registry, _ranking("optfs", names, kept=names[:3]), spec, model=v2.ref)  # only v2's

    for_v1 = stored_rankings(registry, v1)
    assert set(for_v1) == {"permutation", "outrank"}
    assert for_v1["outrank"][0] == newer.ref and for_v1["outrank"][1].names == tuple(names[::-1])  # newest wins
    assert for_v1["permutation"] == (v1.ref, permutation_ranking(importance))
    assert for_v1["permutation"][1].names == tuple(names) and for_v1["permutation"][1].meta["baseline_auc"] == 0.7
    assert set(stored_rankings(registry, v2)) == {"outrank", "optfs"}
    assert stored_rankings(registry, v2)["optfs"][1].meta["kept"] == names[:3]
    assert stored_rankings(registry, other) == {}  # another spec: none of these describe it

    (stored.path / "ranking.json").write_text(outrank.to_json().replace("site", "evil"))
    with pytest.raises(ArtifactError, match="fails its manifest check"):
        stored_rankings(registry, v1)


def test_the_chosen_features_are_the_top_k_or_the_methods_own_set() -> None:
    names = ["a", "b", "c", "d"]
    assert chosen(_ranking("outrank", names), 2) == ("a", "b")
    assert chosen(_ranking("optfs", names, kept=["a", "c"]), None) == ("a", "c")
    with pytest.raises(ConfigError, match="keeps no set of its own: give --top-k"):
        chosen(_ranking("outrank", names), None)
    with pytest.raises(ConfigError, match=r"--top-k must be in \[1, 4\]"):
        chosen(_ranking("outrank", names), 5)


@pytest.mark.parametrize("args, message", [
    (["--method", "permutation"], "--method permutation measures a published model: give --model"),
    (["--method", "outrank", "--write-spec", "x.yaml"], "--write-spec needs --top-k"),
    (["--method", "nope"], "invalid choice: 'nope'"),
    (["--method", "outrank", "--top-k", "0"], "expected a number >= 1, got 0"),
    (["--method", "permutation", "--model", "missing@v0001"], "no model named 'missing'"),
])
def test_select_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, args, message) -> None:
    from tests.conftest import CONFIGS

    code, err = run_main(capsys, "select", "--spec", str(CONFIGS / "ml-100k.yaml"), *args,
                         "--registry", str(tmp_path / "reg"), "--runs", str(tmp_path / "runs"))
    assert code == 2, err
    assert message in err and "Traceback" not in err
