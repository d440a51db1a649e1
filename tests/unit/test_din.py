"""DIN specifics: attention looks only at real history positions, and the spec must provide one."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from muxrec.models.batch import Batch
from muxrec.models.layers.mlp import Dice

from muxrec.errors import ConfigError
from tests.helpers import build, tiny_rows

CFG = {"embedding_dim": 4, "attention_units": (8,), "hidden_units": (8,)}


@pytest.fixture(scope="module")
def tiny():
    return tiny_rows()


def test_padding_positions_get_no_weight_and_change_nothing(tiny):
    inputs, rows = tiny
    torch.manual_seed(0)
    model = build("din", CFG, inputs).eval()
    batch = rows.take(torch.arange(16))
    ids, lengths = batch.sequences["history"]
    assert (lengths < ids.shape[1]).any()  # some rows are padded
    weights = model.attention_weights(batch)
    pad = torch.arange(ids.shape[1]) >= lengths[:, None]
    assert torch.all(weights[pad] == 0) and (weights[~pad] != 0).any()
    # Writing other ids into the padding must not change any score.
    scrambled = torch.where(pad, torch.randint_like(ids, 1, 5), ids)
    other = Batch(batch.sparse, batch.dense, {"history": (scrambled, lengths)}, batch.labels)
    with torch.no_grad():
        assert torch.equal(model(batch), model(other))  # padding weights are exactly 0
        # ...while a real history item does (at initialisation the change is small, but never zero).
        changed = ids.clone()
        row = int(torch.nonzero(lengths > 0)[0])
        changed[row, 0] = (ids[row, 0] % 5) + 1
        assert not torch.equal(model(batch)[row], model(Batch(batch.sparse, batch.dense,
                                                                  {"history": (changed, lengths)}))[row])


def test_din_needs_a_history_sharing_the_target_table(tiny):
    inputs, _ = tiny
    no_history = dataclasses.replace(inputs, sequences=(), fields=tuple(f for f in inputs.fields if f != "history"))
    with pytest.raises(ConfigError, match="needs the sequence feature 'history'"):
        build("din", CFG, no_history)
    with pytest.raises(ConfigError, match="must share an embedding table"):
        build("din", {**CFG, "target": "site"}, inputs)
    with pytest.raises(ConfigError, match="'nope' is not a categorical feature"):
        build("din", {**CFG, "target": "nope"}, inputs)


def test_dice_matches_its_formula():
    dice = Dice(1).train()
    x = torch.linspace(-3, 3, 101)[:, None]  # (N, 1)
    with torch.no_grad():
        dice.alpha.fill_(0.25)
        y = dice(x)
    p = torch.sigmoid((x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-8))  # batch statistics
    assert torch.allclose(y, p * x + (1 - p) * 0.25 * x, atol=1e-5)
    # Between the identity (p -> 1, large inputs) and a PReLU slope alpha (p -> 0, small inputs).
    assert (y[x > 0] <= x[x > 0]).all() and (y[x < 0] >= x[x < 0]).all()


def _attention_on_every_position(attention, query, keys, mask):
    """TargetAttention as the paper writes it: the MLP on [q, k, q - k, q * k] at all B * L positions."""
    b, length, d = keys.shape
    q = query[:, None, :].expand(b, length, d)  # (B, L, D)
    pairs = torch.cat([q, keys, q - keys, q * keys], dim=-1).reshape(b * length, 4 * d)  # (B*L, 4D)
    weights = attention.score(pairs).view(b, length).masked_fill(~mask, 0.0)  # (B, L)
    return (weights[..., None] * keys).sum(dim=1), weights  # (B, D), (B, L)


@pytest.mark.parametrize("train", [True, False])
def test_attention_scores_padding_once_per_row_yet_computes_the_paper_function(train):
    # Padded positions hold id 0, so they share one vector; the fast path scores one stand-in per padded
    # row, counted L - length times in Dice's batch statistics. Outputs, gradients and BatchNorm running
    # statistics must equal the plain computation over every position (float64: only rounding differs).
    from muxrec.models.din import TargetAttention

    torch.manual_seed(3)
    b, length, d = 12, 7, 4
    lengths = torch.tensor([7, 0, 3, 1, 7, 5, 2, 6, 4, 7, 0, 3])
    mask = torch.arange(length) < lengths[:, None]  # (B, L)
    pad_vector = torch.randn(d, dtype=torch.float64)  # id 0's embedding
    real = torch.randn(b, length, d, dtype=torch.float64)
    query = torch.randn(b, d, dtype=torch.float64)
    fast = TargetAttention(d, (8, 6), "dice").double()
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # Dice's alpha away from 0
    plain = TargetAttention(d, (8, 6), "dice").double()
    plain.load_state_dict(fast.state_dict())
    fast.train(train), plain.train(train)
    results = []
    for module, run in ((fast, fast), (plain, lambda q, k, m: _attention_on_every_position(plain, q, k, m))):
        # Gradients are compared at the leaves: the real positions' vectors and id 0's one vector, which
        # the plain path reaches from every padded position and the fast path from the stand-ins.
        q, r, pad = (t.clone().requires_grad_() for t in (query, real, pad_vector))
        interest, weights = run(q, torch.where(mask[..., None], r, pad), mask)  # keys (B, L, D)
        (interest.square().sum() + weights.sin().sum()).backward()
        results.append((interest, weights, q.grad, torch.cat([r.grad[mask], pad.grad[None]]),
                        [p.grad for p in module.parameters()],
                        [s.clone() for s in module.buffers()]))
    for a, b_ in zip(results[0][:4], results[1][:4]):
        assert torch.allclose(a, b_, rtol=1e-10, atol=1e-12)
    for a, b_ in zip(results[0][4] + results[0][5], results[1][4] + results[1][5]):
        assert torch.allclose(a.double(), b_.double(), rtol=1e-10, atol=1e-12)
    assert torch.all(results[0][1][~mask] == 0)
    # The running statistics moved in training (so the comparison above checked them), not in eval.
    assert (results[0][5][0] != 0).any() == train
