"""FinalMLP: two MLP streams, each behind its own feature gate, fused by multi-head bilinear aggregation.

"FinalMLP: An Enhanced Two-Stream MLP Model for CTR Prediction", Mao, Zhu, Su, Cai, Li, Dong, AAAI 2023.
https://arxiv.org/abs/2304.00902
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from muxrec.models import checks
from muxrec.models.batch import Batch
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.layers.interaction import BilinearFusion
from muxrec.models.layers.mlp import MLP
from muxrec.models.layers.tower import Activation, Tower, TowerConfig
from muxrec.models.registry import register
from muxrec.spec import ModelInputs


@dataclass(frozen=True)
class FinalMLPConfig:
    """FinalMLP hyper-parameters.

    Args:
        embedding_dim: D; each stream reads the F field embeddings concatenated, F * D wide (default 16).
        stream1_hidden_units: hidden widths of the first MLP stream (default (400, 400, 400)).
        stream2_hidden_units: hidden widths of the second MLP stream (default (400,)).
        dropout: dropout after each hidden activation of both streams (default 0.2).
        batch_norm: BatchNorm1d before each hidden activation of both streams (default off).
        activation: the streams' hidden activation (default relu).
        feature_gating: gate each stream's input (off: the plain two-stream "DualMLP") (default on).
        gate_hidden_units: hidden widths of each gate's MLP (default (400,)).
        stream1_context: fields whose embeddings condition the first gate; empty: a learned vector, i.e.
            one global gate (default ()).
        stream2_context: the same for the second gate (default ()).
        num_heads: H of the bilinear fusion; must divide both streams' last widths (default 1).
    """

    embedding_dim: int = 16
    stream1_hidden_units: tuple[int, ...] = (400, 400, 400)
    stream2_hidden_units: tuple[int, ...] = (400,)
    dropout: float = 0.2
    batch_norm: bool = False
    activation: Activation = "relu"
    feature_gating: bool = True
    gate_hidden_units: tuple[int, ...] = (400,)
    stream1_context: tuple[str, ...] = ()
    stream2_context: tuple[str, ...] = ()
    num_heads: int = 1

    def __post_init__(self) -> None:
        checks.at_least_one(self, "embedding_dim")
        checks.widths(self, "stream1_hidden_units", "stream2_hidden_units", allow_empty=False)
        checks.widths(self, "gate_hidden_units")
        checks.dropout(self, "dropout")
        last = (self.stream1_hidden_units[-1], self.stream2_hidden_units[-1])
        if self.num_heads < 1 or any(w % self.num_heads for w in last):
            raise ValueError(f"num_heads must be >= 1 and divide the last width of both streams {list(last)}, "
                             f"got {self.num_heads}")


class FeatureGate(nn.Module):
    """Stream-specific feature selection: the flattened fields times 2 * sigmoid(MLP(context)).

    The context is the concatenated embeddings of the chosen fields (a user- or item-specific gate),
    or a learned vector when none are chosen (one global gate). The gate starts near 1 and ranges
    over (0, 2), so it can mute or amplify each embedding element.

    Args:
        context: indices of the conditioning fields on the F axis (may be empty).
        num_fields: F.
        dim: D.
        hidden_units: hidden widths of the gate's MLP.
    """

    def __init__(self, context: Sequence[int], num_fields: int, dim: int, hidden_units: Sequence[int]):
        super().__init__()
        self.context = list(context)
        self.bias = None if self.context else nn.Parameter(torch.zeros(1, dim))  # (1, D)
        self.mlp = MLP(max(len(self.context), 1) * dim, hidden_units, out_dim=num_fields * dim)

    def forward(self, fields: Tensor) -> Tensor:
        if self.context:
            condition = fields[:, self.context].flatten(1)  # (B, C*D), C conditioning fields
        else:
            condition = self.bias.expand(fields.shape[0], -1)  # (B, D)
        gate = 2.0 * torch.sigmoid(self.mlp(condition))  # (B, F*D)
        return fields.flatten(1) * gate  # (B, F*D)


@register("final_mlp", FinalMLPConfig)
class FinalMLP(nn.Module):
    """Two MLP streams over (separately gated) flattened fields, fused by multi-head bilinear aggregation.

    logit = sum over heads h of  b + w1_h^T o1_h + w2_h^T o2_h + o1_h^T W_h o2_h,
    o1 = MLP1(gate1 * x), o2 = MLP2(gate2 * x), x the (B, F*D) flattened field embeddings.

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: FinalMLPConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__()
        unknown = sorted(set(cfg.stream1_context + cfg.stream2_context) - set(inputs.fields))
        if unknown:
            raise ValueError(f"stream1_context / stream2_context name unknown field(s) {unknown}; "
                             f"fields: {list(inputs.fields)}")
        self.embedding = embedding
        num_fields, dim = inputs.num_fields, cfg.embedding_dim
        self.gates = None
        if cfg.feature_gating:
            self.gates = nn.ModuleList([
                FeatureGate([inputs.fields.index(n) for n in context], num_fields, dim, cfg.gate_hidden_units)
                for context in (cfg.stream1_context, cfg.stream2_context)
            ])
        self.streams = nn.ModuleList([
            Tower(num_fields * dim, TowerConfig.of(cfg, units), num_tasks=None)  # no head: the fusion reads both
            for units in ("stream1_hidden_units", "stream2_hidden_units")
        ])
        self.fusion = BilinearFusion(self.streams[0].out_dim, self.streams[1].out_dim, cfg.num_heads)

    def forward(self, batch: Batch) -> Tensor:
        fields = self.embedding(batch)  # (B, F, D)
        if self.gates is not None:
            x1, x2 = (gate(fields) for gate in self.gates)  # (B, F*D) each
        else:
            x1 = x2 = fields.flatten(1)  # (B, F*D)
        o1 = self.streams[0](x1)  # (B, K1), K1 = stream1_hidden_units[-1]
        o2 = self.streams[1](x2)  # (B, K2), K2 = stream2_hidden_units[-1]
        return self.fusion(o1, o2)  # (B, 1)
