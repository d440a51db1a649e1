"""OutRank on Ray Data over prepared Parquet gives the counts and the ranking of the in-process count."""

from __future__ import annotations

import pytest

from muxrec.pipelines.prepare import prepare
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
