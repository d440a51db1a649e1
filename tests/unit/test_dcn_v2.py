"""DCN-v2 specifics: the cross layer's math by hand, the low-rank cross, both structures, config errors."""

from __future__ import annotations

import pytest
import torch

import muxrec.models.dcn_v2  # noqa: F401  (registers "dcn_v2")
from muxrec.errors import ConfigError
from muxrec.models import make_config
from muxrec.models.dcn_v2 import DCNv2Config
from muxrec.models.layers.interaction import CrossNetwork

from tests.helpers import build, tiny_rows


@pytest.fixture(scope="module")
def tiny():
    inputs, rows = tiny_rows(400)
    return inputs, rows.take(torch.arange(32))


def test_cross_layers_by_hand():
    cross = CrossNetwork(2, num_layers=2)
    with torch.no_grad():
        for layer in cross.layers:
            layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
            layer.bias.copy_(torch.tensor([0.5, -1.0]))
    x0 = torch.tensor([[1.0, 2.0]])
    # x1 = x0 * (W x0 + b) + x0 = [1, 2] * [1.5, 3] + [1, 2] = [2.5, 8]
    # x2 = x0 * (W x1 + b) + x1 = [1, 2] * [3, 15] + [2.5, 8] = [5.5, 38]
    assert torch.equal(cross(x0), torch.tensor([[5.5, 38.0]]))


def test_low_rank_cross_equals_the_full_cross_with_w_equal_u_v():
    torch.manual_seed(0)
    low = CrossNetwork(6, num_layers=2, low_rank=2)
    full = CrossNetwork(6, num_layers=2)
    with torch.no_grad():
        for lo, fu in zip(low.layers, full.layers):
            down, up = lo  # x -> V^T x (rank 2) -> U (.) + b
            fu.weight.copy_(up.weight @ down.weight)  # (6, 6) of rank 2
            fu.bias.copy_(up.bias)
    x0 = torch.randn(5, 6)
    torch.testing.assert_close(low(x0), full(x0))
    assert sum(p.numel() for p in low.parameters()) == 2 * (6 * 2 + 2 * 6 + 6)
    assert sum(p.numel() for p in full.parameters()) == 2 * (6 * 6 + 6)


def test_cross_network_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        CrossNetwork(4, num_layers=0)
    with pytest.raises(ValueError, match="low_rank must be >= 0"):
        CrossNetwork(4, num_layers=1, low_rank=-1)


def test_stacked_feeds_the_cross_output_to_the_dnn(tiny):
    inputs, batch = tiny
    torch.manual_seed(0)
    model = build("dcn_v2", {"embedding_dim": 4, "structure": "stacked", "hidden_units": (8,),
                                   "dropout": 0.0, "low_rank": 3}, inputs).eval()
    width = inputs.num_fields * 4
    assert model.dnn.net[0].in_features == width and model.dnn.out_dim == len(inputs.tasks)  # one logit per task
    with torch.no_grad():
        x0 = model.embedding(batch).flatten(1)  # (B, F*D)
        torch.testing.assert_close(model(batch), model.dnn(model.cross(x0)))


def test_parallel_concatenates_cross_and_dnn(tiny):
    inputs, batch = tiny
    torch.manual_seed(0)
    model = build("dcn_v2", {"embedding_dim": 4, "hidden_units": (8, 6), "dropout": 0.0}, inputs).eval()
    width = inputs.num_fields * 4
    assert (model.head.in_features, model.head.out_features) == (width + 6, len(inputs.tasks))
    with torch.no_grad():
        x0 = model.embedding(batch).flatten(1)  # (B, F*D)
        w = model.head.weight  # (T, F*D + 6)
        expected = model.cross(x0) @ w[:, :width].T + model.dnn(x0) @ w[:, width:].T + model.head.bias  # (B, T)
        torch.testing.assert_close(model(batch), expected)


def test_stacked_cross_network_alone_is_allowed(tiny):
    inputs, batch = tiny
    model = build("dcn_v2", {"embedding_dim": 4, "structure": "stacked", "hidden_units": []}, inputs)
    logits = model(batch)
    assert logits.shape == (32, len(inputs.tasks))
    logits.sum().backward()
    assert model.cross.layers[0].weight.grad.abs().sum() > 0


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"dcn_v2 config.structure: must be one of \['parallel', 'stacked'\]"):
        make_config("dcn_v2", {"structure": "serial"})
    with pytest.raises(ValueError, match="structure must be one of"):
        DCNv2Config(structure="serial")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="hidden_units must not be empty with structure 'parallel'"):
        make_config("dcn_v2", {"hidden_units": []})
    with pytest.raises(ConfigError, match="low_rank must be >= 0"):
        make_config("dcn_v2", {"low_rank": -2})
    with pytest.raises(ConfigError, match="num_cross_layers must be >= 1"):
        make_config("dcn_v2", {"num_cross_layers": 0})
