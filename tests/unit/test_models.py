"""Every registered model: shapes, backward, seeded output, save/load round trip, config errors.

New models get these checks for free by registering; a model file only adds its own specifics.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from muxrec.artifacts import ArtifactRegistry
from muxrec.errors import ConfigError
from muxrec.models import build_model, known_models, make_config
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.serialization import load_model, model_files

from tests.helpers import mixed_dim_spec, qr_spec, spec_data, synthetic_spec

ALL_MODELS = known_models()


@pytest.fixture(scope="module")
def tiny():
    return spec_data(synthetic_spec(rows=800))


def _tiny_config(name):
    """The default config shrunk where it has knobs for size."""
    cfg = make_config(name, {})
    small = {"embedding_dim": 4 if cfg.embedding_dim > 1 else 1, "hidden_units": (16, 8)}
    fields = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in small.items() if k in fields})


def _build(name, inputs, seed=0):
    torch.manual_seed(seed)
    return build_model(name, _tiny_config(name), inputs)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_shape_and_backward(name, tiny):
    _, _, inputs, rows = tiny
    model = _build(name, inputs)
    batch = rows.take(torch.arange(32))
    logits = model(batch)
    assert logits.shape[0] == 32 and 1 <= logits.shape[1] <= len(inputs.tasks)
    assert torch.isfinite(logits).all()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels[:, :logits.shape[1]])
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert isinstance(model.embedding, FeatureEmbedding)


# Models whose output is not a tower's head: a first-order sum, an FM term, FinalMLP's bilinear fusion.
SINGLE_TASK = {"lr", "fm", "final_mlp"}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_a_tower_head_predicts_every_task(name, tiny):
    _, _, inputs, rows = tiny
    assert len(inputs.tasks) == 2  # the synthetic spec: click and conversion
    logits = _build(name, inputs)(rows.take(torch.arange(8)))
    assert logits.shape == (8, 1 if name in SINGLE_TASK else len(inputs.tasks))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_loss_decreases_on_a_tiny_batch(name, tiny):
    _, _, inputs, rows = tiny
    model = _build(name, inputs)
    batch = rows.take(torch.arange(64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        logits = model(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels[:, :logits.shape[1]])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses[::10]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_seeded_output_is_reproducible(name, tiny):
    _, _, inputs, rows = tiny
    batch = rows.take(torch.arange(16))
    a, b, c = (_build(name, inputs, seed).eval() for seed in (1, 1, 2))
    with torch.no_grad():
        assert torch.equal(a(batch), b(batch))
        if name != "lr":  # LR starts from (near) zero weights: outputs can coincide
            assert not torch.equal(a(batch), c(batch))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_round_trip_through_the_registry(name, tiny, tmp_path):
    spec, vocab, inputs, rows = tiny
    model = _build(name, inputs).eval()
    with torch.no_grad():
        for p in model.parameters():  # move off the init so a silent re-init would show
            p.add_(torch.randn_like(p) * 0.01)
    cfg = _tiny_config(name)
    version = ArtifactRegistry(tmp_path).publish(name, model_files(model, name, cfg, spec, vocab))
    loaded = load_model(version)
    batch = rows.take(torch.arange(50))
    with torch.no_grad():
        assert torch.equal(model(batch), loaded.model(batch))
    assert loaded.config == cfg and loaded.inputs == inputs


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown model 'deepfn'; known models: .*deepfm"):
        make_config("deepfn")


def test_bad_configs_name_the_field():
    with pytest.raises(ConfigError, match=r"deepfm config: unknown key\(s\) \['hiden_units'\]"):
        make_config("deepfm", {"hiden_units": [8]})
    with pytest.raises(ConfigError, match=r"deepfm config.hidden_units\[1\]: expected an integer"):
        make_config("deepfm", {"hidden_units": [8, "x"]})
    with pytest.raises(ConfigError, match="dropout must be in"):
        make_config("deepfm", {"dropout": 1.5})
    with pytest.raises(ConfigError, match="embedding_dim must be 1"):
        make_config("lr", {"embedding_dim": 8})


@pytest.fixture(scope="module")
def mixed():
    """The tiny data under a spec whose user_id, item and title tables have their own dims (2, 6, 3)."""
    return spec_data(mixed_dim_spec(rows=800))


def test_a_table_with_its_own_dim_is_projected_to_the_model_width(mixed):
    _, _, inputs, rows = mixed
    torch.manual_seed(0)
    emb = FeatureEmbedding(inputs, dim=4)
    weights = emb.table_weights()
    assert {name: w.shape[1] for name, w in weights.items() if name in ("user_id", "item", "title", "site")} == \
        {"user_id": 2, "item": 6, "title": 3, "site": 4}
    assert sorted(emb.projections) == ["item", "title", "user_id"]  # one learned map per such table
    batch = rows.take(torch.arange(8))
    fields = emb(batch)
    assert fields.shape == (8, inputs.num_fields, 4)
    user = batch.sparse["user_id"].values()  # one id per row
    projected = weights["user_id"][user] @ emb.projections["user_id"].weight.T  # (B, 2) -> (B, 4)
    torch.testing.assert_close(fields[:, inputs.fields.index("user_id")], projected)
    # The history reads the item table row by row and goes through the item table's map, as item_id does.
    vectors, mask = emb.sequence(batch, "history")  # (B, L, 4), (B, L)
    ids, _ = batch.sequences["history"]
    torch.testing.assert_close(vectors[mask], weights["item"][ids[mask]] @ emb.projections["item"].weight.T)
    # First-order weights stay one scalar per value whatever the spec says.
    assert all(w.shape[1] == 1 for w in FeatureEmbedding(inputs, 1, table_dims=False).table_weights().values())


def _step_and_round_trip(name, data, tmp_path):
    """One training step, then publish and reload: the reloaded model scores as the trained one. Returns
    the trained model (its gradients kept)."""
    spec, vocab, inputs, rows = data
    model = _build(name, inputs)
    batch = rows.take(torch.arange(32))
    logits = model(batch)
    assert logits.shape[0] == 32 and torch.isfinite(logits).all()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels[:, :logits.shape[1]])
    loss.backward()
    model.eval()
    version = ArtifactRegistry(tmp_path).publish(name, model_files(model, name, _tiny_config(name), spec, vocab))
    loaded = load_model(version)  # rebuilt from the published spec: same tables, same maps
    with torch.no_grad():
        assert torch.equal(model(batch), loaded.model(batch))
    assert loaded.inputs == inputs
    return model


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_trains_and_round_trips_with_mixed_table_dims(name, mixed, tmp_path):
    emb = _step_and_round_trip(name, mixed, tmp_path).embedding
    assert emb.table_weights()["user_id"].shape[1] == 2
    assert emb.projections["user_id"].weight.grad.abs().sum() > 0  # the map learns


@pytest.fixture(scope="module")
def qr():
    """The tiny data with quotient-remainder tables for user_id, item (+ history) and tags, mixed dims for
    site and a Matryoshka table for region (qr_spec)."""
    return spec_data(qr_spec(rows=800))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_trains_and_round_trips_with_compressed_tables(name, qr, tmp_path):
    model = _step_and_round_trip(name, qr, tmp_path)
    compressed = model.embedding.compressed
    assert sorted(compressed) == ["item", "region", "site", "tags", "user_id"]
    assert "user_id" not in model.embedding.table_weights()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in compressed["user_id"].parameters())


def test_shared_table_is_one_weight(tiny):
    """item_id (pooled) and history (per position) read the same rows of the shared item table."""
    _, _, inputs, rows = tiny
    emb = FeatureEmbedding(inputs, dim=4)
    batch = rows.take(torch.arange(8))
    vectors, mask = emb.sequence(batch, "history")  # (B, L, D), (B, L)
    ids, _ = batch.sequences["history"]
    weight = emb.table_weights()["item"]
    assert torch.equal(vectors[mask], weight[ids[mask]])
    assert "item" in emb.bags.embedding_bags  # the pooled item_id reads the same module
    fields = emb(batch)
    assert fields.shape == (8, inputs.num_fields, 4)
    # The history's field is the mean of its valid positions (an empty history gives zeros).
    pooled = fields[:, inputs.fields.index("history")]
    expected = torch.stack([vectors[b][mask[b]].mean(0) if mask[b].any() else torch.zeros(4) for b in range(8)])
    assert torch.allclose(pooled, expected, atol=1e-6)
