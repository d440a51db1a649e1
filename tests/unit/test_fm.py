"""FM and Wide & Deep specifics: the FM pairwise term against an explicit pair loop, and the wide + deep sum."""

from __future__ import annotations

import pytest
import torch

import muxrec.models.fm  # noqa: F401  (registers "fm")
import muxrec.models.wide_deep  # noqa: F401  (registers "wide_deep")
from muxrec.errors import ConfigError
from muxrec.models import make_config

from tests.helpers import build, tiny_rows


@pytest.fixture(scope="module")
def tiny():
    inputs, rows = tiny_rows(400)
    return inputs, rows.take(torch.arange(16))


def _jiggle(model: torch.nn.Module) -> None:
    """Move every weight off its (near-zero) initialisation so each term is visible."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def test_fm_is_first_order_plus_every_field_pair(tiny):
    inputs, batch = tiny
    torch.manual_seed(0)
    model = build("fm", {"embedding_dim": 3}, inputs)
    _jiggle(model)
    with torch.no_grad():
        fields = model.embedding(batch)  # (B, F, D)
        num_fields = fields.shape[1]
        pairs = sum((fields[:, i] * fields[:, j]).sum(dim=1, keepdim=True)
                    for i in range(num_fields) for j in range(i + 1, num_fields))
        first = model.linear.weights(batch).sum(dim=1) + model.linear.bias  # (B, 1)
        assert pairs.abs().mean() > 1e-3  # the check is not vacuous
        torch.testing.assert_close(model(batch), first + pairs, rtol=1e-5, atol=1e-5)


def test_fm_without_factors_is_logistic_regression(tiny):
    inputs, batch = tiny
    model = build("fm", {"embedding_dim": 2}, inputs)
    _jiggle(model)
    with torch.no_grad():
        for weight in model.embedding.table_weights().values():
            weight.zero_()
        model.embedding.numeric.zero_()
        torch.testing.assert_close(model(batch), model.linear(batch))


def test_fm_config_names_the_field():
    with pytest.raises(ConfigError, match="fm config: embedding_dim must be >= 1, got 0"):
        make_config("fm", {"embedding_dim": 0})


def test_wide_deep_sums_a_wide_and_a_deep_logit(tiny):
    inputs, batch = tiny
    torch.manual_seed(0)
    model = build("wide_deep", {"embedding_dim": 4, "hidden_units": (8,), "dropout": 0.0}, inputs).eval()
    _jiggle(model)
    assert model.deep.net[0].in_features == inputs.num_fields * 4  # the deep part reads every field, flattened
    with torch.no_grad():
        wide, deep = model.wide(batch), model.deep(model.embedding(batch).flatten(1))
        assert wide.std() > 0 and deep.std() > 0
        assert wide.shape == (len(batch), 1) and deep.shape == (len(batch), len(inputs.tasks))  # a head per task
        torch.testing.assert_close(model(batch), wide + deep)
        # Silencing the deep output layer leaves exactly the wide (linear) model, for every task.
        model.deep.net[-1].weight.zero_()
        model.deep.net[-1].bias.zero_()
        torch.testing.assert_close(model(batch), wide.expand(-1, len(inputs.tasks)))


def test_wide_deep_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="hidden_units must be a non-empty list"):
        make_config("wide_deep", {"hidden_units": []})
    with pytest.raises(ConfigError, match="dropout must be in"):
        make_config("wide_deep", {"dropout": 1.0})
    with pytest.raises(ConfigError, match=r"wide_deep config.activation: must be one of"):
        make_config("wide_deep", {"activation": "swish"})
