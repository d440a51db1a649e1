"""OutRank-style ranking (pipelines.selection) in-process, and the FeatureRanking every method returns."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from muxrec.data.synthetic import SyntheticConfig, generate
from muxrec.pipelines.selection import (COUNTS_SCHEMA, joint_counts, mutual_information, noise_mi, outrank_table,
                                        rank_counts, sorted_counts)
from muxrec.selection import FeatureRanking, FeatureScore
from tests.helpers import fitted, inputs_for, synthetic_raw, synthetic_spec


def _tiny() -> pa.Table:
    return pa.table({
        "color": pa.array([1, 1, 2, 2], pa.int64()),
        "tags": pa.array([[5, 6], [], [6], [6, 6]], pa.list_(pa.int64())),
        "price": pa.array([-1.0, 0.5, 2.0, None], pa.float32()),
        "click": pa.array([1.0, 0.0, 0.0, 0.0], pa.float32()),
    })


def _counts(table: pa.Table) -> dict[tuple[str, int, int], int]:
    return {(r["feature"], r["value"], r["label"]): r["count"] for r in table.to_pylist()}


def test_joint_counts_count_ids_list_values_and_numeric_bins() -> None:
    counts = joint_counts(_tiny(), "click", ("color", "tags"), ("price",), {"price": [0.0, 1.0]})
    assert counts.schema == COUNTS_SCHEMA
    assert _counts(counts) == {
        ("color", 1, 1): 1, ("color", 1, 0): 1, ("color", 2, 0): 2,
        # every value of a list row with the row's label; an empty list is the value -1
        ("tags", 5, 1): 1, ("tags", 6, 1): 1, ("tags", -1, 0): 1, ("tags", 6, 0): 3,
        # bins: < 0 -> 0, [0, 1) -> 1, >= 1 -> 2, missing -> -1
        ("price", 0, 1): 1, ("price", 1, 0): 1, ("price", 2, 0): 1, ("price", -1, 0): 1,
    }


def test_rows_without_a_label_are_not_counted() -> None:
    table = _tiny().set_column(3, "click", pa.array([1.0, None, 0.0, 0.0], pa.float32()))
    counts = _counts(joint_counts(table, "click", ("color",), (), {}))
    assert counts == {("color", 1, 1): 1, ("color", 2, 0): 2}


def test_mutual_information_equals_a_hand_computation() -> None:
    counts = joint_counts(_tiny(), "click", ("color",), (), {})
    ranking = rank_counts(counts, "click", repeats=5)
    # p(color=1) = p(color=2) = 1/2, p(click) = 1/4; cells (1,1)=1, (1,0)=1, (2,0)=2 of 4 rows
    hand = 0.25 * math.log(0.25 / (0.5 * 0.25)) + 0.25 * math.log(0.25 / (0.5 * 0.75)) + 0.5 * math.log(0.5 / (0.5 * 0.75))
    assert ranking.features[0].detail["mi"] == pytest.approx(hand, rel=1e-12)
    assert ranking.features[0].detail["noise_analytic"] == pytest.approx((2 - 1) / (2 * 4))


def test_mutual_information_bounds() -> None:
    independent = np.array([[30, 10], [60, 20]])
    assert float(mutual_information(independent)) == pytest.approx(0.0, abs=1e-12)
    identical = np.array([[70, 0], [0, 30]])  # the feature is the label: MI = H(label)
    assert float(mutual_information(identical)) == pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.3)))


def test_sampled_noise_matches_the_analytic_bias_where_cells_are_large() -> None:
    per_value = np.full(20, 1000)  # k = 20 values, N = 20000, 5000 positives
    noise = noise_mi(per_value, 5000, 400, np.random.default_rng(0))
    assert noise.mean() == pytest.approx((20 - 1) / (2 * 20000), rel=0.1)
    # more values, same rows: more MI by chance
    assert noise_mi(np.full(200, 100), 5000, 400, np.random.default_rng(0)).mean() > 5 * noise.mean()


def test_noise_is_seeded_per_feature() -> None:
    counts = joint_counts(_tiny(), "click", ("color", "tags"), (), {})
    a = rank_counts(counts, "click", seed=3)
    b = rank_counts(counts.filter(pc.equal(counts["feature"], "tags")), "click", seed=3)
    assert a.score_of("tags") == b.score_of("tags")
    assert rank_counts(counts, "click", seed=4).score_of("tags").detail["noise"] != a.score_of("tags").detail["noise"]


@pytest.fixture(scope="module")
def planted() -> FeatureRanking:
    spec = synthetic_spec(rows=20000, seed=7)
    vocab, encoded = fitted(spec, synthetic_raw(spec))
    return outrank_table(encoded["train"], inputs_for(spec, vocab), seed=0)


def test_planted_noise_fields_rank_last_at_noise_level(planted: FeatureRanking) -> None:
    truth = generate(SyntheticConfig(rows=20000, seed=7))[1]
    assert set(truth.noise) == {"noise_a", "noise_b", "noise_num"}
    assert set(planted.names[-3:]) == set(truth.noise)
    for name in truth.noise:
        assert planted.score_of(name).score <= 1e-4
        assert planted.score_of(name).detail["z"] < 2.0  # within two noise deviations of a random feature
    # the fields with a planted main effect stand far above their noise
    for name in ("site", "ad_type", "score", "price", "region", "tags"):
        assert planted.score_of(name).detail["z"] > 5.0


def test_normalisation_keeps_high_cardinality_noise_below_informative_fields(planted: FeatureRanking) -> None:
    noise_b = planted.score_of("noise_b")  # 100 values of pure noise
    assert noise_b.detail["values"] == 100
    raw_mi = {f.name: f.detail["mi"] for f in planted.features}
    # by raw MI, noise_b beats informative fields of fewer values ...
    beaten = {n for n in ("region", "tags", "slot", "daypart", "device") if raw_mi["noise_b"] > raw_mi[n]}
    assert beaten == {"region", "tags", "slot", "daypart", "device"}
    # ... after subtracting the noise of a same-frequency random feature it is below every one of them
    for name in beaten:
        assert planted.score_of(name).score > noise_b.score


def test_ranking_json_round_trip(planted: FeatureRanking) -> None:
    text = planted.to_json()
    back = FeatureRanking.from_json(text)
    assert back == planted
    assert back.method == "outrank" and back.task == "click" and back.meta["repeats"] == planted.meta["repeats"]
    assert back.top(3) == planted.names[:3]


def test_ranking_rejects_what_is_not_a_ranking() -> None:
    with pytest.raises(ValueError, match="sorted"):
        FeatureRanking("outrank", "click", (FeatureScore("a", 0.1), FeatureScore("b", 0.2)))
    with pytest.raises(ValueError, match="twice"):
        FeatureRanking("outrank", "click", (FeatureScore("a", 0.2), FeatureScore("a", 0.1)))
    with pytest.raises(ValueError, match="number"):
        FeatureScore("a", float("nan"))
    with pytest.raises(ValueError, match="not a feature ranking"):
        FeatureRanking.from_json('{"features": []}')


def test_unknown_task_is_refused() -> None:
    spec = synthetic_spec(rows=500)
    vocab, encoded = fitted(spec, synthetic_raw(spec))
    with pytest.raises(ValueError, match="unknown task 'buy'"):
        outrank_table(encoded["train"], inputs_for(spec, vocab), task="buy")


def test_sorted_counts_is_canonical() -> None:
    counts = joint_counts(_tiny(), "click", ("color", "tags"), (), {})
    shuffled = counts.take(pa.array(np.random.default_rng(0).permutation(counts.num_rows)))
    assert sorted_counts(shuffled).equals(sorted_counts(counts))
