"""ARM-Net: exponential neurons whose per-instance exponents come from sparse gated attention.

"ARM-Net: Adaptive Relation Modeling Network for Structured Data", Cai, Zheng, Chen, Jagadish, Ooi,
Zhang, SIGMOD 2021. https://doi.org/10.1145/3448016.3457321

The α-entmax used for the sparse gates is from "Sparse Sequence-to-Sequence Models", Peters, Niculae,
Martins, ACL 2019 (α = 2 is sparsemax: "From Softmax to Sparsemax", Martins & Astudillo, ICML 2016).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from muxrec.models import checks
from muxrec.models.batch import Batch
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.layers.tower import Activation, Tower, TowerConfig
from muxrec.models.registry import register
from muxrec.spec import ModelInputs


@dataclass(frozen=True)
class ARMNetConfig:
    """ARM-Net hyper-parameters.

    Args:
        embedding_dim: D.
        num_heads: H, attention heads; each has its own bilinear key map.
        neurons_per_head: K, exponential neurons per head (each with a query and a value vector).
        attention_dim: width of the bilinear attention space the queries live in.
        alpha: α of the α-entmax gates, in (1, 2]: 1.5 is entmax-1.5, 2 is sparsemax; larger is sparser.
        hidden_units: the MLP over the H * K * D neuron outputs.
        dnn_hidden_units: ARM-Net+: a DNN over the flattened embeddings whose logit is added;
            empty for plain ARM-Net.
        dropout: dropout after each hidden layer of both MLPs.
        batch_norm: BatchNorm in both MLPs' hidden layers.
        activation: the MLPs' activation.
        log_eps: |e| is clamped to at least this before the log, so a zero embedding entry gives a
            finite log (ln 1e-6 = -13.8) and a bounded gradient 1 / |e|.
        max_exponent: the neuron's exponent sum_f w_f ln|e_f| is clamped to at most this before exp,
            so a negative weight on a tiny embedding cannot overflow float32 (exp(88.7) = inf) or the
            BatchNorm variance that follows (it squares the outputs).
    """

    embedding_dim: int = 16
    num_heads: int = 2
    neurons_per_head: int = 32
    attention_dim: int = 16
    alpha: float = 1.5
    hidden_units: tuple[int, ...] = (400, 400, 400)
    dnn_hidden_units: tuple[int, ...] = (400, 400, 400)
    dropout: float = 0.2
    batch_norm: bool = False
    activation: Activation = "relu"
    log_eps: float = 1e-6
    max_exponent: float = 20.0

    def __post_init__(self) -> None:
        checks.at_least_one(self, "embedding_dim", "num_heads", "neurons_per_head", "attention_dim")
        checks.widths(self, "hidden_units", "dnn_hidden_units")
        checks.dropout(self, "dropout")
        if not 1.0 < self.alpha <= 2.0:
            raise ValueError(f"alpha must be in (1, 2] (1.5: entmax, 2: sparsemax), got {self.alpha}")
        if not 0.0 < self.log_eps < 1.0:
            raise ValueError(f"log_eps must be in (0, 1), got {self.log_eps}")
        if not 0.0 < self.max_exponent <= 40.0:
            raise ValueError(f"max_exponent must be in (0, 40] (exp(40)^2 is near the float32 limit), "
                             f"got {self.max_exponent}")


class _EntmaxBisect(torch.autograd.Function):
    """α-entmax over the last axis: forward by bisection on the threshold, backward in closed form.

    entmax_α(z)_i = [(α - 1) z_i - τ]_+ ^ (1 / (α - 1)), with τ chosen so the entries sum to 1. The sum
    falls monotonically in τ, and τ lies in [max - 1, max - n^(1 - α)] for x = (α - 1) z (at the lower
    end the largest entry alone is 1, at the upper end every entry is at most 1/n), so bisection
    converges; 50 halvings of an interval of width < 1 are past float32 precision. Entries below τ are
    exactly 0. The Jacobian is diag(g) - g g^T / sum(g) with g_i = p_i^(2 - α) on the support, 0 off it.
    """

    @staticmethod
    def forward(ctx, z: Tensor, alpha: float, n_iter: int) -> Tensor:  # type: ignore[override]
        x = z * (alpha - 1.0)  # (..., N)
        power = 1.0 / (alpha - 1.0)
        top = x.max(dim=-1, keepdim=True).values  # (..., 1)
        lo, hi = top - 1.0, top - z.shape[-1] ** (1.0 - alpha)  # (..., 1): sum >= 1 at lo, <= 1 at hi
        for _ in range(n_iter):
            mid = (lo + hi) / 2  # (..., 1)
            above = (x - mid).clamp(min=0).pow(power).sum(dim=-1, keepdim=True) >= 1  # (..., 1)
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        p = (x - lo).clamp(min=0).pow(power)  # (..., N)
        p = p / p.sum(dim=-1, keepdim=True)  # (..., N); removes the last bisection error
        ctx.alpha = alpha
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (p,) = ctx.saved_tensors
        g = torch.where(p > 0, p.clamp(min=1e-30).pow(2.0 - ctx.alpha), torch.zeros_like(p))  # (..., N)
        gdot = (g * grad).sum(dim=-1, keepdim=True) / g.sum(dim=-1, keepdim=True)  # (..., 1)
        return g * (grad - gdot), None, None  # (..., N)


def entmax(z: Tensor, alpha: float = 1.5, n_iter: int = 50) -> Tensor:
    """α-entmax over the last axis: a distribution like softmax, but with exact zeros (α > 1).

    Example::

        >>> entmax(torch.tensor([1.0, 0.5, -1.0]), alpha=2.0)     # sparsemax
        tensor([0.7500, 0.2500, 0.0000])
    """
    return _EntmaxBisect.apply(z, alpha, n_iter)


class SparseGatedAttention(nn.Module):
    """Per-instance interaction weights: α-entmax gates over fields, times learned value vectors.

    Head h maps each field embedding into an attention space, k_hf = W_h^T e_f; neuron (h, k) scores
    every field against its query, s_hkf = q_hk . k_hf / sqrt(d), and its gates are
    z_hk = entmax_α(s_hk) over fields: a distribution with exact zeros, so each neuron picks the few
    fields it crosses, per instance. The interaction weights are w_hkf = z_hkf * v_hkf, with v_hk a
    learned value vector of the neuron: they keep the gates' zeros, but are signed and do not sum to 1.

    Args:
        num_fields: F.
        dim: D.
        num_heads: H.
        neurons_per_head: K.
        attention_dim: d, the width of keys and queries.
        alpha: α of the entmax.
    """

    def __init__(self, num_fields: int, dim: int, num_heads: int, neurons_per_head: int, attention_dim: int,
                 alpha: float):
        super().__init__()
        self.alpha = alpha
        self.scale = attention_dim ** -0.5
        # Scaled so that unit-variance field embeddings give unit-variance keys and scores: gates start
        # spread (some zeros) instead of uniform. Values ~ N(0, 1): cross orders of about 1 once sparse.
        self.keys = nn.Parameter(torch.randn(num_heads, dim, attention_dim) * dim ** -0.5)  # (H, D, d)
        self.queries = nn.Parameter(torch.randn(num_heads, neurons_per_head, attention_dim))  # (H, K, d)
        self.values = nn.Parameter(torch.randn(num_heads, neurons_per_head, num_fields))  # (H, K, F)

    def gates(self, fields: Tensor) -> Tensor:
        keys = torch.einsum("bfd,hdj->bhfj", fields, self.keys)  # (B, H, F, d)
        scores = torch.einsum("bhfj,hkj->bhkf", keys, self.queries) * self.scale  # (B, H, K, F)
        return entmax(scores, self.alpha)  # (B, H, K, F)

    def forward(self, fields: Tensor) -> Tensor:
        return self.gates(fields) * self.values  # (B, H, K, F)


class ExponentialNeurons(nn.Module):
    """y_hk = exp(sum_f w_hkf ln|e_f|) = prod_f |e_f|^w_hkf, elementwise over D, then BatchNorm per neuron.

    Each neuron is a cross feature of the fields its weights select, of a learned (fractional, possibly
    negative) order. |e| is clamped to `eps` before the log and the exponent to `max_exponent` before the
    exp (see ARMNetConfig). The outputs are positive and heavy-tailed, so a BatchNorm with one channel
    per neuron puts them on a common scale before the MLP, as in the paper's implementation.
    """

    def __init__(self, num_neurons: int, eps: float, max_exponent: float):
        super().__init__()
        self.eps = eps
        self.max_exponent = max_exponent
        self.norm = nn.BatchNorm1d(num_neurons)

    def forward(self, fields: Tensor, weights: Tensor) -> Tensor:
        log_abs = fields.abs().clamp(min=self.eps).log()  # (B, F, D)
        exponent = torch.einsum("bhkf,bfd->bhkd", weights, log_abs)  # (B, H, K, D)
        neurons = exponent.clamp(max=self.max_exponent).exp()  # (B, H, K, D)
        return self.norm(neurons.flatten(1, 2))  # (B, H * K, D)


@register("armnet", ARMNetConfig)
class ARMNet(nn.Module):
    """Adaptive relation modeling: sparse, per-instance cross features by exponential neurons -> MLP.

    ARM-Net+ (non-empty `dnn_hidden_units`) adds the logit of a DNN over the flattened embeddings.
    `interaction_weights(batch)` and `attention_gates(batch)` expose, per instance, which fields each
    neuron crosses and with what exponents.

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: ARMNetConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__()
        self.embedding = embedding
        num_neurons = cfg.num_heads * cfg.neurons_per_head
        self.attention = SparseGatedAttention(inputs.num_fields, cfg.embedding_dim, cfg.num_heads,
                                              cfg.neurons_per_head, cfg.attention_dim, cfg.alpha)
        self.neurons = ExponentialNeurons(num_neurons, cfg.log_eps, cfg.max_exponent)
        self.mlp = Tower(num_neurons * cfg.embedding_dim, TowerConfig.of(cfg), len(inputs.tasks))
        self.dnn = None
        if cfg.dnn_hidden_units:
            self.dnn = Tower(inputs.num_fields * cfg.embedding_dim, TowerConfig.of(cfg, "dnn_hidden_units"),
                             len(inputs.tasks))

    def forward(self, batch: Batch) -> Tensor:
        fields = self.embedding(batch)  # (B, F, D)
        crosses = self.neurons(fields, self.attention(fields))  # (B, H * K, D)
        logits = self.mlp(crosses.flatten(1))  # (B, T)
        if self.dnn is not None:
            logits = logits + self.dnn(fields.flatten(1))  # (B, T)
        return logits

    def attention_gates(self, batch: Batch) -> Tensor:
        """(B, H, K, F) α-entmax gates: each row is a distribution over fields (sums to 1) with exact zeros."""
        return self.attention.gates(self.embedding(batch))  # (B, H, K, F)

    def interaction_weights(self, batch: Batch) -> Tensor:
        """(B, H, K, F) exponents w_hkf of each neuron, per instance: the gates times the neuron's value vector.

        The paper's normalisation is on the gates (`attention_gates`: rows sum to 1); the weights keep
        their support (exact zeros where a field is not crossed) but are signed and unnormalised.
        """
        return self.attention(self.embedding(batch))  # (B, H, K, F)
