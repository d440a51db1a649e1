"""OutRank on Ray Data over prepared Parquet gives the counts and the ranking of the in-process count; a
derived spec is a view of prepared rows that trains, and permutation importance on Ray tasks."""

from __future__ import annotations

import shutil

import pytest

from muxrec.artifacts import ArtifactRegistry
from muxrec.config import TrainConfig
from muxrec.errors import ConfigError, DataError
from muxrec.models.deepfm import DeepFMConfig
from muxrec.models.serialization import load_model
from muxrec.pipelines.feature_selection import select
from muxrec.pipelines.importance import permutation_importance
from muxrec.pipelines.prepare import PreparedData, prepare, prepare_cached
from muxrec.pipelines.train import TrainJob, train
from muxrec.selection import subset_spec
from muxrec.pipelines.selection import (counted_features, joint_counts, outrank, outrank_table, ray_boundaries,
                                        ray_counts, sorted_counts)
from tests.helpers import synthetic_spec


def test_ray_counts_and_ranking_equal_the_in_process_ones(ray_cluster, tmp_path) -> None:
    prepared = prepare(synthetic_spec(rows=4000, seed=11), tmp_path / "prepared")
    inputs = prepared.inputs
    ids, numeric = counted_features(inputs)
    assert set(ids) == set(inputs.pooled) | set(inputs.sequences) and numeric == inputs.numeric

    boundaries = ray_boundaries(prepared, numeric)
    assert all(len(boundaries[n]) > 16 for n in numeric)  # ~31 cuts of 32 quantile bins
    train = prepared.read("train")
    by_ray = ray_counts(prepared, "click", boundaries)
    assert by_ray.equals(sorted_counts(joint_counts(train, "click", ids, numeric, boundaries)))
    rows = prepared.stats["splits"]["train"]["rows"]
    assert sum(r["count"] for r in by_ray.to_pylist() if r["feature"] == "site") == rows

    ranked = outrank(prepared, seed=5, repeats=10)
    local = outrank_table(train, inputs, seed=5, repeats=10, boundaries=boundaries)
    assert ranked.names == local.names
    assert [f.score for f in ranked.features] == pytest.approx([f.score for f in local.features], abs=1e-12)
    assert ranked.task == "click" and ranked.meta["rows"] == rows


def test_a_derived_spec_reads_the_prepared_rows_trains_and_its_permutation_runs_on_ray(ray_cluster, tmp_path) -> None:
    out = tmp_path / "prepared"
    full = prepare(synthetic_spec(rows=16000, seed=12), out)
    derived = subset_spec(full.spec, ["item_id", "site", "ad_type", "tags", "score", "price"], "synthetic-top6")

    view = prepare_cached(derived, out)
    assert view.stats["view_of"] == full.root.name and view.rows_root == full.root
    assert sorted(p.name for p in view.root.iterdir()) == ["spec.yaml", "stats.json", "vocabulary.json"]
    assert set(view.vocab.tables) == {"item", "site", "ad_type", "tags"} and set(view.vocab.numeric) == {"price", "score"}
    assert view.vocab.tables["item"].values.equals(full.vocab.tables["item"].values)  # the ids the rows hold
    assert view.read("valid").equals(full.read("valid"))
    again = prepare_cached(derived, out)  # current: reused as it is
    assert again.stats == view.stats

    registry = ArtifactRegistry(tmp_path / "registry")
    cfg = DeepFMConfig(embedding_dim=8, hidden_units=(32,))
    in_process = TrainConfig(epochs=3, batch_size=256, lr=3e-3, seed=3, num_workers=0)
    result = train(TrainJob(str(view.root), "deepfm", cfg, in_process),
                   registry, "top6", tmp_path / "ray")
    loaded = load_model(result.version)
    assert loaded.spec == derived and loaded.inputs.fields == view.inputs.fields
    assert result.metrics["test"]["auc"] > 0.6  # learns the planted signal (chance 0.5)

    # The selection stage on the trained model: per-feature Ray tasks give the in-process drops.
    ranking = select("permutation", view, model=result.version, seed=4)
    local = permutation_importance(loaded.model, view.read("valid"), view.inputs, seed=4)
    assert ranking.method == "permutation" and ranking.meta["model"] == result.version.ref
    assert ranking.names == tuple(f["name"] for f in local["features"])
    assert [f.score for f in ranking.features] == pytest.approx([f["importance"] for f in local["features"]], abs=1e-9)
    assert ranking.meta["seconds"] > 0
    with pytest.raises(ConfigError, match="trained on another spec"):
        select("permutation", full, model=result.version)

    # Its parent gone, the view says so instead of failing on a missing folder; prepare rebuilds in full.
    shutil.rmtree(full.root)
    with pytest.raises(DataError, match="reads the prepared rows of 'synthetic', which are gone"):
        PreparedData.load(view.root)
    rebuilt = prepare_cached(derived, out)
    assert "view_of" not in rebuilt.stats and (rebuilt.root / "train").is_dir()
