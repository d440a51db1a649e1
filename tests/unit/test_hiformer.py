"""Hiformer specifics: heterogeneous attention math, exact last-layer pruning, low rank, configs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import muxrec.models.hiformer  # noqa: F401  (registers "hiformer")
from muxrec.config import model_file
from muxrec.errors import ConfigError
from muxrec.models import make_config
from muxrec.models.layers.attention import CompositeProjection, HeterogeneousAttentionLayer, TokenLinear

from tests.conftest import CONFIGS
from tests.helpers import build, tiny_rows

SMALL = {"embedding_dim": 4, "num_layers": 2, "num_heads": 2, "head_dim": 3, "ffn_dim": 6, "hidden_units": [8]}


@pytest.fixture(scope="module")
def tiny():
    return tiny_rows()


def _layer_norm(v: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    return (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + norm.eps) * norm.weight + norm.bias


def _by_hand(layer: HeterogeneousAttentionLayer, x: torch.Tensor) -> torch.Tensor:
    """One token and one head at a time: own query / output / FFN weights, keys and values from all."""
    n, h, k = x.shape[1], layer.num_heads, layer.head_dim
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        normed = torch.stack([_layer_norm(x[b, t], layer.attn_norm) for t in range(n)])
        flat = normed.flatten()
        keys = (layer.key.proj.weight @ flat + layer.key.proj.bias).view(n, h, k)
        values = (layer.value.proj.weight @ flat + layer.value.proj.bias).view(n, h, k)
        for i in range(n):
            query = (normed[i] @ layer.query.weight[i] + layer.query.bias[i]).view(h, k)
            heads = []
            for j in range(h):
                alpha = torch.softmax(torch.stack([query[j] @ keys[t, j] for t in range(n)]) / k ** 0.5, dim=0)
                heads.append(sum(alpha[t] * values[t, j] for t in range(n)))
            a = x[b, i] + torch.cat(heads) @ layer.out.weight[i] + layer.out.bias[i]
            hidden = torch.relu(_layer_norm(a, layer.ffn_norm) @ layer.ffn_in.weight[i] + layer.ffn_in.bias[i])
            out[b, i] = a + hidden @ layer.ffn_out.weight[i] + layer.ffn_out.bias[i]
    return out


def test_heterogeneous_layer_matches_the_equations():
    torch.manual_seed(0)
    layer = HeterogeneousAttentionLayer(num_tokens=3, dim=4, num_heads=2, head_dim=3, ffn_dim=5)
    with torch.no_grad():  # non-trivial LayerNorm affine, so a swapped norm would show
        for norm in (layer.attn_norm, layer.ffn_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 4)
    assert torch.allclose(layer(x), _by_hand(layer, x), atol=1e-5)
    assert torch.allclose(layer(x, last_only=True), _by_hand(layer, x)[:, -1:], atol=1e-5)


def test_token_linear_uses_each_tokens_own_weight():
    torch.manual_seed(0)
    lin = TokenLinear(num_tokens=3, in_dim=2, out_dim=4)
    x = torch.randn(5, 3, 2)
    expected = torch.stack([x[:, n] @ lin.weight[n] + lin.bias[n] for n in range(3)], dim=1)
    assert torch.allclose(lin(x), expected, atol=1e-6)
    assert torch.allclose(lin(x[:, 1:2], slice(1, 2)), expected[:, 1:2], atol=1e-6)
    # Swapping two tokens' contents does not just swap their outputs: the maps differ.
    swapped = lin(x[:, [1, 0, 2]])
    assert not torch.allclose(swapped[:, 0], expected[:, 1], atol=1e-3)


def test_composite_keys_depend_on_every_token():
    torch.manual_seed(0)
    proj = CompositeProjection(num_tokens=3, dim=2, out_dim=4)
    x = torch.randn(1, 3, 2, requires_grad=True)
    proj(x)[0, 0].sum().backward()  # token 0's key
    assert (x.grad.abs().sum(dim=-1) > 0).all()  # ... reads tokens 0, 1 and 2


def test_low_rank_composite_matrix_has_that_rank():
    torch.manual_seed(0)
    n, d, out, r = 5, 4, 6, 3
    full, low = CompositeProjection(n, d, out), CompositeProjection(n, d, out, rank=r)
    eye = torch.eye(n * d).view(n * d, n, d)  # rows of the effective (N*D, N*out) matrix, plus bias
    matrix = low(eye).flatten(1) - low(torch.zeros(1, n, d)).flatten(1)
    assert torch.linalg.matrix_rank(matrix) == r
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(low) == n * d * r + r * n * out + n * out < count(full) == n * d * n * out + n * out


def test_pruning_the_last_layer_is_exact(tiny):
    inputs, rows = tiny
    batch = rows.take(torch.arange(32))
    torch.manual_seed(0)
    full = build("hiformer", SMALL, inputs).eval()
    pruned = build("hiformer", {**SMALL, "prune_last_layer": True}, inputs).eval()
    pruned.load_state_dict(full.state_dict())  # same parameters: the fast config serves the same weights
    with torch.no_grad():
        assert torch.allclose(full(batch), pruned(batch), atol=1e-5)


def test_low_rank_changes_only_the_composite_projections(tiny):
    inputs, _ = tiny
    full = build("hiformer", SMALL, inputs)
    low = build("hiformer", {**SMALL, "low_rank": 8}, inputs)
    differ = set(full.state_dict()) ^ set(low.state_dict())
    assert differ and all(".key.proj." in k or ".value.proj." in k for k in differ)
    assert sum(p.numel() for p in low.parameters()) < sum(p.numel() for p in full.parameters())


def test_config_errors_name_the_field(tiny):
    inputs, _ = tiny
    with pytest.raises(ConfigError, match=r"low_rank must be >= 0"):
        make_config("hiformer", {"low_rank": -1})
    with pytest.raises(ConfigError, match="num_heads must be >= 1, got 0"):
        make_config("hiformer", {"num_heads": 0})
    width = (inputs.num_fields + 1) * 4
    with pytest.raises(ValueError, match=f"low_rank {width} is not below the composite input width {width}"):
        build("hiformer", {**SMALL, "low_rank": width}, inputs)


def test_shipped_configs_are_full_and_fast():
    full, fast = model_file(CONFIGS, "hiformer"), model_file(CONFIGS, "hiformer-fast")
    assert full.architecture == fast.architecture == "hiformer"
    full_cfg, fast_cfg = make_config("hiformer", full.model), make_config("hiformer", fast.model)
    assert full_cfg.low_rank == 0 and not full_cfg.prune_last_layer
    assert fast_cfg.low_rank > 0 and fast_cfg.prune_last_layer
    # Apart from the two serving switches the variants are the same model.
    assert dataclasses.replace(fast_cfg, low_rank=0, prune_last_layer=False) == full_cfg
