"""OptFS: the gated model (gates, continuation, kept set), its config errors, and the search ranking planted data.

Shapes, backward, seeded output and the save/load round trip run for every registered model in
test_models.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from muxrec.models import build_model
from muxrec.models.optfs import OptFS, OptFSConfig, field_pairs
from muxrec.pipelines.optfs import SEARCH_CONFIG, optfs_table
from muxrec.selection import FeatureRanking

from tests.helpers import tiny_rows
from tests.selection_data import planted

SMALL = OptFSConfig(embedding_dim=4, hidden_units=(8,), dropout=0.0)


@pytest.fixture(scope="module")
def tiny():
    return tiny_rows(400)


def test_config_errors_name_the_field() -> None:
    for bad, match in (({"gate_init": 0.0}, "gate_init must be"), ({"gate_init": float("nan")}, "gate_init must be"),
                       ({"gate_l1": -1e-3}, "gate_l1 must be"), ({"final_temperature": 0.5}, "final_temperature must be"),
                       ({"embedding_dim": 0}, "embedding_dim must be"), ({"dropout": 1.0}, "dropout must be")):
        with pytest.raises(ValueError, match=match):
            OptFSConfig(**bad)


def test_gates_start_open_and_the_forward_has_the_task_shape(tiny) -> None:
    inputs, rows = tiny
    torch.manual_seed(0)
    model = build_model("optfs", SMALL, inputs)
    f, p = len(inputs.fields), len(inputs.fields) * (len(inputs.fields) - 1) // 2
    assert model.pairs == field_pairs(inputs) and len(model.pairs) == p
    fields, pairs = model.gates()
    assert fields.shape == (f,) and pairs.shape == (p,)
    torch.testing.assert_close(fields, torch.ones(f))  # sigmoid(m0) / sigmoid(m0) at beta = 1
    batch = rows.take(torch.arange(16))
    logits = model(batch)
    assert logits.shape == (16, len(inputs.tasks))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels[:, :2]) + model.regularization()
    loss.backward()
    assert model.field_logits.grad.shape == (f,) and model.field_logits.grad.abs().sum() > 0
    assert model.pair_logits.grad.abs().sum() > 0


def test_a_closed_field_leaves_the_model(tiny) -> None:
    inputs, rows = tiny
    torch.manual_seed(0)
    model = build_model("optfs", SMALL, inputs).eval()
    batch = rows.take(torch.arange(16))
    site = inputs.fields.index("site")
    with torch.no_grad():
        model.field_logits[site] = -5.0
        assert model.anneal(1.0) == pytest.approx(SMALL.final_temperature)
        before = model(batch)
        ids = batch.sparse["site"].values()
        for name, weight in model.embedding.table_weights().items():  # move site's rows: nothing changes
            if name == inputs.table_of["site"]:
                weight[ids] += 1.0
        torch.testing.assert_close(model(batch), before, atol=1e-4, rtol=0)
    assert "site" not in model.kept_fields() and all("site" not in p for p in model.kept_pairs())


def test_anneal_raises_beta_geometrically(tiny) -> None:
    inputs, _ = tiny
    model = build_model("optfs", dataclasses.replace(SMALL, final_temperature=100.0), inputs)
    assert [round(model.anneal(t), 6) for t in (0.0, 0.5, 1.0)] == [1.0, 10.0, 100.0]
    with pytest.raises(ValueError, match="progress"):
        model.anneal(1.5)


@pytest.fixture(scope="module")
def planted_ranking() -> FeatureRanking:
    table, inputs = planted(rows=8000)
    return optfs_table(table, inputs, seed=0, epochs=6, gate_lr=3e-2, held_out=0.5)


def test_joint_search_ranks_the_planted_field_first_and_noise_below_it() -> None:
    table, inputs = planted(rows=8000)
    r = optfs_table(table, inputs, seed=0, epochs=6, gate_lr=3e-2)  # the default: gates and weights on all rows
    assert r.names[0] == "signal" and r.score_of("signal").detail["kept"] and r.meta["held_out"] == 0.0
    assert all(r.score_of(n).score < r.score_of("signal").score - 1.0 for n in ("noise_a", "noise_b", "noise_num"))


def test_held_out_search_ranks_and_keeps_the_planted_field_alone(planted_ranking: FeatureRanking) -> None:
    r = planted_ranking
    assert r.method == "optfs" and r.task == "click"
    assert r.names[0] == "signal"
    assert r.meta["kept"] == ["signal"]  # every noise field closed
    for name in ("noise_a", "noise_b", "noise_num"):
        assert r.score_of(name).score < 0 and not r.score_of(name).detail["kept"]
    assert r.score_of("signal").detail["gate"] > 0.9
    assert r.meta["interactions"] == []  # no pair has both fields kept
    assert FeatureRanking.from_json(r.to_json()) == r


def test_search_arguments_are_checked() -> None:
    table, inputs = planted(rows=400)
    with pytest.raises(ValueError, match="unknown task 'buy'"):
        optfs_table(table, inputs, task="buy")
    with pytest.raises(ValueError, match="held_out must be"):
        optfs_table(table, inputs, held_out=1.0)
    with pytest.raises(ValueError, match="gate_lr must be"):
        optfs_table(table, inputs, gate_lr=0.0)
    with pytest.raises(ValueError, match="epochs must be"):
        optfs_table(table, inputs, epochs=0)


def test_held_out_search_on_synthetic_data_finds_the_planted_pair_and_drops_noise() -> None:
    from muxrec.data.synthetic import SyntheticConfig, generate
    from tests.helpers import fitted, inputs_for, synthetic_spec

    spec = synthetic_spec(rows=30000, seed=1)
    raw, truth = generate(SyntheticConfig(**spec.source.options))
    vocab, encoded = fitted(spec, raw)
    r = optfs_table(encoded["train"], inputs_for(spec, vocab), seed=0, held_out=0.5)
    assert set(r.top(2)) == {"region", "ad_type"}  # the planted pair, the strongest effect
    assert set(r.top(8)) <= set(truth.informative)
    assert r.names[-1] == "noise_num"
    assert not any(r.score_of(n).detail["kept"] for n in truth.noise)
    assert r.meta["interactions"][0][:2] == ["ad_type", "region"]  # the planted pair, (region, ad_type)
    assert OptFSConfig(**{**r.meta["config"], "hidden_units": tuple(r.meta["config"]["hidden_units"])}) == SEARCH_CONFIG
