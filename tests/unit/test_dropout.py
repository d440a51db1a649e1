"""The MLP's dropout: the rate and scale of inverted dropout, replayable from the seed, off in eval."""

from __future__ import annotations

import pytest
import torch

from muxrec.models.layers.mlp import MLP, Dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drops_the_asked_share_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(512, 999)  # an odd width: the 16-bit draws do not divide the tensor evenly
    y = Dropout(p).train()(x)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.005)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # kept units are scaled by 1 / (1 - p)
    assert torch.unique(y).tolist() == [0.0, pytest.approx(1 / (1 - p), rel=1e-4)]


def test_same_seed_same_mask_and_gradient_flows_through_kept_units():
    x = torch.randn(64, 32, requires_grad=True)
    torch.manual_seed(7)
    a = Dropout(0.3).train()(x)
    torch.manual_seed(7)
    b = Dropout(0.3).train()(x)
    assert torch.equal(a, b)
    a.sum().backward()
    assert torch.equal(x.grad == 0, a == 0)


def test_identity_in_eval_mode_and_in_the_mlp():
    x = torch.randn(8, 16)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    mlp = MLP(16, (32,), out_dim=1, dropout=0.5).eval()
    assert any(isinstance(m, Dropout) for m in mlp.modules())
    assert torch.equal(mlp(x), mlp(x))
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)
