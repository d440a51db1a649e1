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
