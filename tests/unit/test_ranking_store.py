"""The FeatureSelector's rankings per model version and method: read once, read again only when the
selection registry's version list changed, looked at no more often than `check_s`. Built without Ray."""

from __future__ import annotations

import json

import pytest

from muxrec.artifacts import ArtifactRegistry
from muxrec.errors import ArtifactError
from muxrec.selection import FeatureRanking, FeatureScore, publish_ranking, subset_spec
from muxrec.services.selector import RankingStore

from tests.helpers import synthetic_spec

IMPORTANCE = {"method": "permutation", "task": "click", "repeats": 2,
              "features": [{"name": "item_id", "importance": 0.2, "std": 0.01},
                           {"name": "user_id", "importance": 0.1, "std": 0.02}]}


def _ranking(method: str, *names: str) -> FeatureRanking:
    return FeatureRanking(method, "click", tuple(FeatureScore(n, float(len(names) - i), {"rows": 10})
                                                 for i, n in enumerate(names)), {"seed": 1})


@pytest.fixture
def store(tmp_path):
    registry = ArtifactRegistry(tmp_path / "registry")
    spec = synthetic_spec(rows=200, seed=3)
    registry.publish("m", {"spec.yaml": spec.to_yaml(), "weights.safetensors": b"w1",
                           "importance.json": json.dumps(IMPORTANCE)})
    registry.publish("m", {"spec.yaml": spec.to_yaml(), "weights.safetensors": b"w2"})
    now = [100.0]
    return RankingStore(registry, "m", check_s=2.0, clock=lambda: now[0]), registry, spec, now


def test_rankings_per_method_with_the_model_importance_first(store):
    rankings, registry, spec, _ = store
    publish_ranking(registry, _ranking("outrank", "site", "item_id"), spec)
    version, found = rankings.get("latest")
    assert version == "v0002" and list(found) == ["outrank"]  # v0002 stores no importance
    version, found = rankings.get("v0001")
    assert version == "v0001" and list(found) == ["permutation", "outrank"]
    assert found["permutation"]["artifact"] == "m/v0001" and found["permutation"]["meta"] == {"repeats": 2}
    assert found["permutation"]["features"][0] == {"name": "item_id", "score": 0.2, "detail": {"std": 0.01}}
    outrank = found["outrank"]
    assert outrank["artifact"] == "synthetic-selection/v0001" and outrank["created_at"]
    assert [f["name"] for f in outrank["features"]] == ["site", "item_id"] and outrank["meta"] == {"seed": 1}


def test_a_ranking_published_later_shows_up_after_check_s_and_only_for_its_spec_and_model(store):
    rankings, registry, spec, now = store
    assert list(rankings.get("v0001")[1]) == ["permutation"]
    publish_ranking(registry, _ranking("outrank", "site"), spec)
    publish_ranking(registry, _ranking("optfs", "site"), spec, model="m/v0002")  # another version's
    publish_ranking(registry, _ranking("quickselection", "site"), subset_spec(spec, ["site"], "synthetic"))
    now[0] += 1.0
    assert list(rankings.get("v0001")[1]) == ["permutation"]  # not looked at within check_s
    now[0] += 1.5
    assert list(rankings.get("v0001")[1]) == ["permutation", "outrank"]
    assert list(rankings.get("v0002")[1]) == ["optfs", "outrank"]
    publish_ranking(registry, _ranking("outrank", "item_id", "site"), spec)  # the newest wins
    now[0] += 2.0
    found = rankings.get("v0001")[1]
    assert found["outrank"]["artifact"] == "synthetic-selection/v0004"
    assert [f["name"] for f in found["outrank"]["features"]] == ["item_id", "site"]


def test_an_unchanged_listing_reads_nothing_again(store, monkeypatch):
    rankings, registry, spec, now = store
    publish_ranking(registry, _ranking("outrank", "site"), spec)
    first = rankings.get("v0001")[1]
    reads = []
    monkeypatch.setattr(rankings, "_read", lambda model: reads.append(model.ref) or {})
    now[0] += 10
    assert rankings.get("v0001")[1] is first and reads == []


def test_an_unknown_version_or_alias_is_an_artifact_error(store):
    rankings = store[0]
    for ref in ("v0009", "nightly"):
        with pytest.raises(ArtifactError, match="m has no"):
            rankings.get(ref)
