"""ARM-Net specifics: α-entmax, exponential neurons, exposed interaction weights, stability, config errors."""

from __future__ import annotations

import pytest
import torch

import muxrec.models.armnet  # noqa: F401  (registers "armnet")
from muxrec.errors import ConfigError
from muxrec.models import make_config
from muxrec.models.armnet import ExponentialNeurons, entmax

from tests.helpers import build, tiny_rows


@pytest.fixture(scope="module")
def tiny():
    inputs, rows = tiny_rows(400)
    return inputs, rows.take(torch.arange(64))


def _model(inputs, **overrides):
    torch.manual_seed(0)
    cfg = {"embedding_dim": 4, "num_heads": 3, "neurons_per_head": 5, "attention_dim": 4, "hidden_units": [8],
           "dnn_hidden_units": [8], **overrides}
    return build("armnet", cfg, inputs)


def test_entmax_matches_hand_computations():
    # sparsemax (α = 2): threshold τ = (1 + 0.5 - 1) / 2 = 0.25, and -1 falls below it
    assert torch.allclose(entmax(torch.tensor([1.0, 0.5, -1.0]), alpha=2.0), torch.tensor([0.75, 0.25, 0.0]))
    # α = 1.5: p_i = (z_i / 2 - τ)^2; for z = (1, 0), 2τ² - τ - 3/4 = 0 gives τ = (1 - √7) / 4
    tau = (1 - 7 ** 0.5) / 4
    expected = torch.tensor([(0.5 - tau) ** 2, tau ** 2])
    assert torch.allclose(entmax(torch.tensor([1.0, 0.0]), alpha=1.5), expected, atol=1e-6)
    # a clear winner takes everything: (1.5 - τ)^2 = 1 at τ = 0.5, and the loser is exactly 0
    assert torch.equal(entmax(torch.tensor([3.0, 0.0]), alpha=1.5), torch.tensor([1.0, 0.0]))
    # equal scores: uniform, like softmax
    assert torch.allclose(entmax(torch.zeros(5), alpha=1.5), torch.full((5,), 0.2))


@pytest.mark.parametrize("alpha", [1.3, 1.5, 2.0])
def test_entmax_closed_form_gradient(alpha):
    z = torch.randn(6, 7, dtype=torch.double, requires_grad=True) * 2
    assert torch.autograd.gradcheck(lambda t: entmax(t, alpha), (z.detach().requires_grad_(),))


def test_larger_alpha_is_sparser():
    torch.manual_seed(0)
    z = torch.randn(2000, 10) * 2
    zeros = [(entmax(z, a) == 0).float().mean().item() for a in (1.2, 1.5, 2.0)]
    assert zeros[0] < zeros[1] < zeros[2]
    assert zeros[2] > 0.5


def test_exponential_neurons_are_products_of_powers():
    """y = exp(sum_f w_f ln|e_f|) = prod_f |e_f|^w_f, elementwise over D (sign dropped)."""
    neurons = ExponentialNeurons(num_neurons=2, eps=1e-6, max_exponent=20.0).eval()  # fresh BN: y / sqrt(1 + eps)
    fields = torch.tensor([[[2.0, 0.5], [3.0, -4.0]]])  # (B=1, F=2, D=2)
    weights = torch.tensor([[[[1.0, 2.0], [0.5, 0.0]]]])  # (B=1, H=1, K=2, F=2)
    expected = torch.tensor([[[2.0 * 9.0, 0.5 * 16.0], [2.0 ** 0.5, 0.5 ** 0.5]]])  # (1, 2, 2)
    out = neurons(fields, weights) * (1 + neurons.norm.eps) ** 0.5
    assert torch.allclose(out, expected, rtol=1e-5)


def test_zero_embeddings_and_negative_exponents_stay_finite():
    """ln 0 is clamped to ln eps and the exponent to max_exponent: finite outputs and gradients."""
    neurons = ExponentialNeurons(num_neurons=2, eps=1e-6, max_exponent=20.0)
    fields = torch.zeros(4, 3, 2, requires_grad=True)
    weights = torch.full((4, 1, 2, 3), -5.0, requires_grad=True)  # exponent 15 * 13.8 without the clamp
    out = neurons(fields, weights)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(fields.grad).all() and torch.isfinite(weights.grad).all()


def test_interaction_weights_are_sparse_gates_times_values(tiny):
    inputs, batch = tiny
    model = _model(inputs, alpha=1.5).eval()
    with torch.no_grad():  # trained-scale embeddings and sharper queries (the init gives near-uniform gates)
        for w in model.embedding.table_weights().values():
            w.normal_()
        model.embedding.numeric.normal_()
        model.attention.queries.mul_(4.0)
        gates = model.attention_gates(batch)
        weights = model.interaction_weights(batch)
    assert gates.shape == weights.shape == (64, 3, 5, inputs.num_fields)  # (B, H, K, F)
    assert torch.allclose(gates.sum(dim=-1), torch.ones(64, 3, 5), atol=1e-5)
    assert (gates >= 0).all()
    assert (gates == 0).float().mean() > 0.3  # many exact zeros
    assert ((gates == 0).sum(dim=-1) > 0).float().mean() > 0.9  # in nearly every row
    assert torch.equal(weights, gates * model.attention.values)  # the neuron's value vector scales its gates
    assert torch.equal(weights == 0, gates == 0)  # values are nonzero, so the support is the gates'
    # the gates depend on the instance
    assert not torch.allclose(gates[0], gates[1])


def test_plain_armnet_has_no_dnn(tiny):
    inputs, batch = tiny
    model = _model(inputs, dnn_hidden_units=[]).eval()
    assert model.dnn is None
    with torch.no_grad():  # the logit comes through the exponential neurons alone
        before = model(batch)
        model.neurons.norm.bias.add_(1.0)
        after = model(batch)
    assert before.shape == (64, len(inputs.tasks)) and not torch.allclose(before, after)


def test_bad_configs_name_the_field():
    with pytest.raises(ConfigError, match=r"alpha must be in \(1, 2\]"):
        make_config("armnet", {"alpha": 1.0})
    with pytest.raises(ConfigError, match="neurons_per_head must be >= 1, got 0"):
        make_config("armnet", {"neurons_per_head": 0})
    with pytest.raises(ConfigError, match=r"dnn_hidden_units must be a list of positive integers, got \[8, 0\]"):
        make_config("armnet", {"dnn_hidden_units": [8, 0]})
    with pytest.raises(ConfigError, match="log_eps must be in"):
        make_config("armnet", {"log_eps": 0.0})
