"""FinalMLP specifics: bilinear fusion by hand, the heads as a block-diagonal bilinear, the feature gates."""

from __future__ import annotations

import pytest
import torch

import muxrec.models.final_mlp  # noqa: F401  (registers "final_mlp")
from muxrec.errors import ConfigError
from muxrec.models import make_config
from muxrec.models.final_mlp import FeatureGate
from muxrec.models.layers.interaction import BilinearFusion

from tests.helpers import build, tiny_rows

SMALL = {"embedding_dim": 4, "stream1_hidden_units": (8, 8), "stream2_hidden_units": (6,),
         "gate_hidden_units": (8,), "dropout": 0.0}


@pytest.fixture(scope="module")
def tiny():
    inputs, rows = tiny_rows(400)
    return inputs, rows.take(torch.arange(32))


def test_bilinear_fusion_by_hand():
    fusion = BilinearFusion(4, 2, num_heads=2)
    with torch.no_grad():
        fusion.linear_a.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
        fusion.linear_a.bias.fill_(0.5)
        fusion.linear_c.weight.copy_(torch.tensor([[1.0, -1.0]]))
        fusion.bilinear.copy_(torch.tensor([[[1.0], [2.0]], [[0.0], [-1.0]]]))  # (H=2, 2, 1)
    a, c = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[5.0, 6.0]])
    # linear: (1 + 4 + 0.5) + (5 - 6); head 0: (1*1 + 2*2) * 5 = 25; head 1: (3*0 + 4*-1) * 6 = -24
    assert torch.equal(fusion(a, c), torch.tensor([[5.5 - 1.0 + 25.0 - 24.0]]))


def test_heads_are_a_block_diagonal_bilinear():
    """H heads = one head whose matrix keeps only the blocks pairing head h of a with head h of c."""
    torch.manual_seed(0)
    multi, single = BilinearFusion(6, 4, num_heads=2), BilinearFusion(6, 4, num_heads=1)
    with torch.no_grad():
        single.load_state_dict({**multi.state_dict(), "bilinear": torch.block_diag(*multi.bilinear)[None]})
    a, c = torch.randn(5, 6), torch.randn(5, 4)
    torch.testing.assert_close(multi(a, c), single(a, c))
    with pytest.raises(ValueError, match="num_heads must be >= 1 and divide both stream widths"):
        BilinearFusion(6, 4, num_heads=3)


def test_global_gate_is_the_same_for_every_row_and_starts_in_0_2():
    torch.manual_seed(0)
    gate = FeatureGate([], num_fields=3, dim=2, hidden_units=(5,))
    fields = torch.randn(4, 3, 2) + 3.0  # away from 0 so the ratio below is well defined
    g = gate(fields) / fields.flatten(1)  # (B, F*D)
    assert torch.allclose(g, g[:1].expand_as(g)) and ((g > 0) & (g < 2)).all()
    with torch.no_grad():
        gate.mlp.net[-1].weight.zero_()
        gate.mlp.net[-1].bias.zero_()
    torch.testing.assert_close(gate(fields), fields.flatten(1))  # 2 * sigmoid(0) = 1: the identity


def test_conditioned_gate_reads_only_its_context_fields():
    torch.manual_seed(0)
    gate = FeatureGate([0], num_fields=3, dim=2, hidden_units=(5,))
    fields = torch.randn(4, 3, 2) + 3.0
    g = gate(fields) / fields.flatten(1)
    assert not torch.allclose(g[0], g[1])  # rows with different context get different gates
    other = fields.clone()
    other[:, 1:] += 1.0  # the non-context fields
    torch.testing.assert_close(gate(other) / other.flatten(1), g)
    other[:, 0] += 1.0  # the context field
    assert not torch.allclose(gate(other) / other.flatten(1), g)


def test_streams_read_their_own_gated_input(tiny):
    inputs, batch = tiny
    torch.manual_seed(0)
    model = build("final_mlp", {**SMALL, "stream1_context": ["user_id"], "num_heads": 2}, inputs).eval()
    with torch.no_grad():
        fields = model.embedding(batch)  # (B, F, D)
        o1 = model.streams[0](model.gates[0](fields))
        o2 = model.streams[1](model.gates[1](fields))
        torch.testing.assert_close(model(batch), model.fusion(o1, o2))
        assert not torch.allclose(model.gates[0](fields), model.gates[1](fields))


def test_without_gating_both_streams_read_the_flat_fields(tiny):
    inputs, batch = tiny
    torch.manual_seed(0)
    model = build("final_mlp", {**SMALL, "feature_gating": False}, inputs).eval()
    assert model.gates is None
    with torch.no_grad():
        x = model.embedding(batch).flatten(1)  # (B, F*D)
        torch.testing.assert_close(model(batch), model.fusion(model.streams[0](x), model.streams[1](x)))


def test_config_errors_name_the_field(tiny):
    inputs, _ = tiny
    with pytest.raises(ConfigError, match=r"num_heads must be >= 1 and divide the last width of both streams \[8, 6\]"):
        make_config("final_mlp", {**SMALL, "num_heads": 4})
    with pytest.raises(ConfigError, match="stream2_hidden_units must be a non-empty list"):
        make_config("final_mlp", {"stream2_hidden_units": []})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['user'\]"):
        build("final_mlp", {**SMALL, "stream2_context": ["user"]}, inputs)
