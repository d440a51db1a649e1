"""AutoInt specifics: the interacting layer's math, AutoInt+ as a parallel DNN, config errors, YAML files."""

from __future__ import annotations

import math

import pytest
import torch

import muxrec.models.autoint  # noqa: F401  (registers "autoint")
from muxrec.config import model_file
from muxrec.errors import ConfigError
from muxrec.models import make_config
from muxrec.models.layers.attention import InteractingLayer

from tests.conftest import CONFIGS
from tests.helpers import build, tiny_rows


@pytest.fixture(scope="module")
def tiny():
    return tiny_rows()


def _by_hand(layer: InteractingLayer, x: torch.Tensor, scale: float) -> torch.Tensor:
    """The paper's equations, one field and one head at a time."""
    h, d = layer.num_heads, layer.head_dim
    w_q, w_k, w_v = layer.qkv.weight.split(h * d)  # each (H*d', D)
    out = torch.empty(x.shape[0], x.shape[1], h * d)
    for b in range(x.shape[0]):
        for m in range(x.shape[1]):
            heads = []
            for i in range(h):
                rows = slice(i * d, (i + 1) * d)
                q = w_q[rows] @ x[b, m]
                scores = torch.stack([(q @ (w_k[rows] @ x[b, k])) * scale for k in range(x.shape[1])])
                alpha = torch.softmax(scores, dim=0)
                heads.append(sum(alpha[k] * (w_v[rows] @ x[b, k]) for k in range(x.shape[1])))
            out[b, m] = torch.relu(torch.cat(heads) + layer.residual.weight @ x[b, m])
    return out


@pytest.mark.parametrize("scale", [False, True])
def test_interacting_layer_matches_the_equations(scale):
    torch.manual_seed(0)
    layer = InteractingLayer(in_dim=3, head_dim=2, num_heads=2, scale=scale)
    x = torch.randn(2, 4, 3)
    expected = _by_hand(layer, x, 1 / math.sqrt(2) if scale else 1.0)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert layer(x).shape == (2, 4, 4)


def test_autoint_plus_adds_a_parallel_dnn_logit(tiny):
    inputs, rows = tiny
    batch = rows.take(torch.arange(16))
    torch.manual_seed(0)
    plus = build("autoint", {"embedding_dim": 4, "dnn_hidden_units": [8]}, inputs).eval()
    plain = build("autoint", {"embedding_dim": 4}, inputs).eval()
    assert plain.dnn is None and plus.dnn is not None
    plain.load_state_dict({k: v for k, v in plus.state_dict().items() if not k.startswith("dnn.")})
    with torch.no_grad():
        dnn_logit = plus.dnn(plus.embedding(batch).flatten(1))  # (B, T)
        assert torch.allclose(plus(batch), plain(batch) + dnn_logit, atol=1e-6)
        assert dnn_logit.abs().sum() > 0


def test_more_layers_widen_nothing_but_the_first_input(tiny):
    inputs, _ = tiny
    model = build("autoint", {"embedding_dim": 4, "attention_layers": 3, "num_heads": 2,
                                    "attention_dim": 5}, inputs)
    assert [layer.qkv.in_features for layer in model.interacting] == [4, 10, 10]
    assert model.output.in_features == inputs.num_fields * 10


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="num_heads must be >= 1, got 0"):
        make_config("autoint", {"num_heads": 0})
    with pytest.raises(ConfigError, match="dnn_hidden_units must be a list of positive integers"):
        make_config("autoint", {"dnn_hidden_units": [8, 0]})
    with pytest.raises(ConfigError, match=r"dnn_dropout must be in \[0, 1\)"):
        make_config("autoint", {"dnn_dropout": 1.0})


def test_shipped_configs_are_autoint_and_autoint_plus():
    plain, plus = model_file(CONFIGS, "autoint"), model_file(CONFIGS, "autoint-plus")
    assert plain.architecture == plus.architecture == "autoint"
    assert make_config("autoint", plain.model).dnn_hidden_units == ()
    assert make_config("autoint", plus.model).dnn_hidden_units != ()
