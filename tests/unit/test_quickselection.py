"""QuickSelection: input neurons, the sparse autoencoder and SET, config errors, and rankings of planted data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from muxrec.pipelines.quickselection import (QuickSelectionConfig, SparseAutoencoder, aggregate, erdos_renyi, neurons,
                                             quickselection_table)
from muxrec.selection import FeatureRanking
from muxrec.spec import parse_spec

from tests.helpers import fitted, inputs_for
from tests.selection_data import planted

FAST = QuickSelectionConfig(hidden=64)


def test_config_errors_name_the_field() -> None:
    for bad, match in (({"hidden": 0}, "hidden must be"), ({"zeta": 1.0}, "zeta must be"),
                       ({"epsilon": 0.0}, "epsilon must be"), ({"noise": -0.1}, "noise must be"),
                       ({"aggregate": "median"}, "aggregate must be one of"), ({"lr": 0.0}, "lr must be")):
        with pytest.raises(ValueError, match=match):
            QuickSelectionConfig(**bad)


def test_neurons_one_hot_top_values_other_and_standardised_numbers() -> None:
    table, inputs = planted(rows=2000)
    x, owner, names = neurons(table, inputs, max_values=5)
    assert x.shape == (table.num_rows, len(owner))
    assert names["noise_num"] == ["value"] and len(names["signal"]) == 6 and names["signal"][-1] == "other"
    signal = x[:, [i for i, o in enumerate(owner) if o == "signal"]]  # (N, 6)
    assert (signal.sum(axis=1) == 1).all()  # one hot per row, "other" included
    num = x[:, owner.index("noise_num")]
    assert abs(num.mean()) < 1e-3 and num.std() == pytest.approx(1.0, abs=1e-3)


def test_list_features_are_multi_hot() -> None:
    spec = parse_spec({"name": "lists", "source": {"loader": "parquet", "path": "/nonexistent"},
                       "labels": [{"name": "click", "source": "y"}],
                       "split": {"hash": {"row": 1}, "buckets": 10, "test": [0], "valid": [1]},
                       "features": [{"name": "tags", "kind": "multi_categorical", "max_len": 3}]})
    rows = 200
    raw = pa.table({"row": pa.array(np.arange(rows), pa.int64()),
                    "tags": pa.array([["a", "b"] if i % 2 else [] for i in range(rows)], pa.list_(pa.string())),
                    "y": pa.array(np.zeros(rows, np.int8))})
    vocab, encoded = fitted(spec, raw)
    table = encoded["train"]
    x, _, names = neurons(table, inputs_for(spec, vocab), max_values=8)
    lengths = np.array([len(v) for v in table.column("tags").to_pylist()])
    assert (x.sum(axis=1) == lengths).all() and len(names["tags"]) == 2


def test_erdos_renyi_density_and_set_keeps_the_connection_count() -> None:
    g = torch.Generator().manual_seed(0)
    mask = erdos_renyi(300, 100, 13.0, g)
    assert mask.mean().item() == pytest.approx(13 * 400 / 30000, rel=0.1)
    ae = SparseAutoencoder(30, 16, 5.0, g)
    before = (int(ae.m1.sum()), int(ae.m2.sum()))
    x = torch.randn(8, 30)
    assert ae(x).shape == (8, 30)
    with torch.no_grad():
        ae.w1.add_(torch.randn_like(ae.w1) * ae.m1)
    ae.evolve(0.2, g)
    assert (int(ae.m1.sum()), int(ae.m2.sum())) == before
    assert ((ae.w1 != 0) <= (ae.m1 == 1)).all()  # no weight outside the mask
    assert ae.strength().shape == (30,)


def test_aggregates() -> None:
    strength = np.array([1.0, 3.0, 2.0])
    assert aggregate(strength, ["a", "a", "b"], "mean") == {"a": 2.0, "b": 2.0}
    assert aggregate(strength, ["a", "a", "b"], "sum") == {"a": 4.0, "b": 2.0}
    assert aggregate(strength, ["a", "a", "b"], "max") == {"a": 3.0, "b": 2.0}


def test_planted_structure_ranks_first_and_noise_below() -> None:
    """Unsupervised: `signal` and its noisy copy `echo` explain each other; the noise fields explain nothing."""
    table, inputs = planted(rows=6000, echo=True)
    r = quickselection_table(table, inputs, seed=0, cfg=FAST)
    assert r.method == "quickselection" and r.task is None
    assert set(r.top(2)) == {"signal", "echo"}
    assert r.names[0] == "signal"  # the clean one of the two
    assert set(r.names[2:]) == {"noise_a", "noise_b", "noise_num"}
    assert FeatureRanking.from_json(r.to_json()) == r


def test_mean_aggregate_is_free_of_a_width_bias() -> None:
    """Pure-noise id features of 2 .. 64 values: "sum" ranks them by neuron count, "mean" does not."""
    rows, widths = 6000, (2, 4, 8, 16, 32, 64)
    rng = np.random.default_rng(0)
    spec = parse_spec({"name": "widths", "source": {"loader": "parquet", "path": "/nonexistent"},
                       "labels": [{"name": "click", "source": "y"}],
                       "split": {"hash": {"row": 1}, "buckets": 10, "test": [0], "valid": [1]},
                       "features": [{"name": f"n{k}", "kind": "categorical"} for k in widths]})
    raw = pa.table({"row": pa.array(np.arange(rows), pa.int64()),
                    **{f"n{k}": pa.array([f"v{v}" for v in rng.integers(0, k, rows)]) for k in widths},
                    "y": pa.array(np.zeros(rows, np.int8))})
    vocab, encoded = fitted(spec, raw)
    inputs = inputs_for(spec, vocab)

    def rank_correlation(how: str) -> float:
        r = quickselection_table(encoded["train"], inputs, seed=0, cfg=QuickSelectionConfig(hidden=64,
                                                                                            aggregate=how))
        by_width = [r.names.index(f"n{k}") for k in widths]  # rank positions, 0 = best
        return float(np.corrcoef(np.arange(len(widths)), by_width)[0, 1])

    assert rank_correlation("sum") < -0.9  # wider ranks better, almost perfectly
    assert abs(rank_correlation("mean")) < 0.9
