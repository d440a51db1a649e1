"""OptFS: a DeepFM whose fields and field pairs pass through learned gates, for feature selection.

"Optimizing Feature Set for Click-Through Rate Prediction", Lyu, Tang, Liu, Chen, He, Liu, WWW 2023.
https://arxiv.org/abs/2301.10909

Each field i has a gate logit m_i and each field pair (i, j) its own m_ij. A gate is

    g = sigmoid(beta * m) / sigmoid(gate_init)

(the paper's scaled form: every gate is 1 at the start, m = gate_init, beta = 1). The search trains the
gates with the network and raises the temperature beta from 1 to `final_temperature` epoch by epoch
(learning by continuation), so sigmoid(beta * m) ends near 0 or 1; `regularization()` adds
gate_l1 * sum of sigmoid(beta * m), the sparsity price each gate pays. What survives is the set with
m > 0 (`kept_fields`, `kept_pairs`), after which the paper retrains a model on it.

The paper gates every feature *value* (an embedding row) and derives a pair's gate as the product of
its two values' gates; muxrec ranks *fields*, so here a gate belongs to a field, and a pair has its
own gate on top of its two fields' gates (a pair counts only if both fields and the pair are kept).

The model: first-order weights, the MLP and the pairwise inner products all read the gated fields
g_i * e_i, so a field whose gate closes leaves the model entirely:

    logit = bias + sum_i g_i w_i + sum_{i<j} g_ij <g_i e_i, g_j e_j> + MLP([g_1 e_1, ..., g_F e_F])

Pairs run over every field, i < j in `inputs.fields` order (`field_pairs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import torch
from torch import Tensor, nn

from muxrec.models import checks
from muxrec.models.batch import Batch
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.layers.tower import Activation, Tower, TowerConfig
from muxrec.models.registry import register
from muxrec.spec import ModelInputs


@dataclass(frozen=True)
class OptFSConfig:
    """OptFS hyper-parameters: the DeepFM backbone's, then the gates'.

    Args:
        embedding_dim: D, of every field.
        hidden_units: widths of the MLP's hidden layers.
        dropout: dropout after each hidden activation.
        batch_norm: BatchNorm1d in the MLP.
        activation: the MLP's activation.
        gate_init: the gate logit every field and pair starts from (> 0: every gate starts open).
        gate_l1: the sparsity price, in loss units, of one fully open gate (the L1 norm of
            sigmoid(beta * m) over the field and pair gates, times gate_l1).
        final_temperature: beta at the end of the search; it grows geometrically from 1 (`anneal`).
    """

    embedding_dim: int = 16
    hidden_units: tuple[int, ...] = (400, 400, 400)
    dropout: float = 0.2
    batch_norm: bool = False
    activation: Activation = "relu"
    gate_init: float = 0.5
    gate_l1: float = 1e-3
    final_temperature: float = 200.0

    def __post_init__(self) -> None:
        checks.at_least_one(self, "embedding_dim")
        checks.widths(self, "hidden_units")
        checks.dropout(self, "dropout")
        if not (math.isfinite(self.gate_init) and self.gate_init > 0):
            raise ValueError(f"gate_init must be a finite number > 0 (gates start open), got {self.gate_init}")
        if not (math.isfinite(self.gate_l1) and self.gate_l1 >= 0):
            raise ValueError(f"gate_l1 must be a finite number >= 0, got {self.gate_l1}")
        if not (math.isfinite(self.final_temperature) and self.final_temperature >= 1):
            raise ValueError(f"final_temperature must be a finite number >= 1, got {self.final_temperature}")


def field_pairs(inputs: ModelInputs) -> list[tuple[str, str]]:
    """Every pair of fields, i < j in `inputs.fields` order: the order of the pair gates."""
    return list(combinations(inputs.fields, 2))


@register("optfs", OptFSConfig)
class OptFS(nn.Module):
    """DeepFM over gated fields, with a gate per field pair on the inner products.

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.

    Forward takes a Batch and returns (B, T) logits.

    Example::

        >>> model = OptFS(OptFSConfig(embedding_dim=4, hidden_units=(8,)), inputs, FeatureEmbedding(inputs, 4))
        >>> model(batch).shape                      # (B, T)
        >>> model.anneal(1.0); model.kept_fields()  # after the search: the fields with m > 0
    """

    def __init__(self, cfg: OptFSConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__()
        self.cfg = cfg
        self.fields = tuple(inputs.fields)
        self.pairs = field_pairs(inputs)
        self.embedding = embedding
        self.first_order = FeatureEmbedding(inputs, dim=1, init_std=0.0, table_dims=False)  # a scalar per value
        self.bias = nn.Parameter(torch.zeros(1))
        self.dnn = Tower(inputs.num_fields * cfg.embedding_dim, TowerConfig.of(cfg), len(inputs.tasks))
        self.field_logits = nn.Parameter(torch.full((len(self.fields),), cfg.gate_init))  # (F,)
        self.pair_logits = nn.Parameter(torch.full((len(self.pairs),), cfg.gate_init))  # (P,)
        index = {name: i for i, name in enumerate(self.fields)}
        self.register_buffer("left", torch.tensor([index[a] for a, _ in self.pairs], dtype=torch.long), persistent=False)
        self.register_buffer("right", torch.tensor([index[b] for _, b in self.pairs], dtype=torch.long), persistent=False)
        self.register_buffer("temperature", torch.ones(()))  # beta; saved, so a loaded model gates the same
        self.register_buffer("field_mean", torch.zeros(len(self.fields), cfg.embedding_dim))  # (F, D), running

    def forward(self, batch: Batch) -> Tensor:
        field_gates, pair_gates = self.gates()  # (F,), (P,)
        fields = self.centred(self.embedding(batch)) * field_gates[None, :, None]  # (B, F, D)
        first = (self.first_order(batch).squeeze(2) * field_gates).sum(dim=1, keepdim=True) + self.bias  # (B, 1)
        inner = torch.bmm(fields, fields.transpose(1, 2))  # (B, F, F)
        second = (inner[:, self.left, self.right] * pair_gates).sum(dim=1, keepdim=True)  # (B, P) -> (B, 1)
        return first + second + self.dnn(fields.flatten(1))  # (B, 1) + (B, 1) + (B, T)

    def centred(self, fields: Tensor) -> Tensor:
        """(B, F, D) fields less each field's mean vector: the batch's in training (kept as a running mean,
        momentum 0.1), the running one in eval. A field that embeds every row alike is a constant, which
        would otherwise earn its gate by scaling the other fields (in its pairs and in the MLP)."""
        if self.training:
            mean = fields.mean(dim=0)  # (F, D)
            with torch.no_grad():
                self.field_mean.lerp_(mean.detach(), 0.1)
            return fields - mean[None]  # (B, F, D)
        return fields - self.field_mean[None]  # (B, F, D)

    def gates(self) -> tuple[Tensor, Tensor]:
        """The field gates (F,) and pair gates (P,) at the current temperature."""
        scale = 1.0 / torch.sigmoid(torch.tensor(self.cfg.gate_init))
        return (torch.sigmoid(self.temperature * self.field_logits) * scale,  # (F,)
                torch.sigmoid(self.temperature * self.pair_logits) * scale)  # (P,)

    def regularization(self) -> Tensor:
        """gate_l1 * the L1 norm of every gate's sigmoid(beta * m); the trainer adds it to the loss."""
        open_fields = torch.sigmoid(self.temperature * self.field_logits).sum()
        open_pairs = torch.sigmoid(self.temperature * self.pair_logits).sum()
        return self.cfg.gate_l1 * (open_fields + open_pairs)

    def anneal(self, progress: float) -> float:
        """Set beta for this point of the search, progress in [0, 1]: 1 * final_temperature ** progress. Returns beta."""
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {progress}")
        beta = self.cfg.final_temperature ** progress
        self.temperature.fill_(beta)
        return beta

    def kept_fields(self) -> tuple[str, ...]:
        """The fields whose gate logit is > 0, in field order."""
        return tuple(name for name, m in zip(self.fields, self.field_logits.tolist()) if m > 0)

    def kept_pairs(self) -> tuple[tuple[str, str], ...]:
        """The pairs whose own gate logit and both fields' are > 0, in pair order."""
        kept = set(self.kept_fields())
        return tuple(p for p, m in zip(self.pairs, self.pair_logits.tolist()) if m > 0 and p[0] in kept and p[1] in kept)
