"""Hiformer.

"Hiformer: Heterogeneous Feature Interactions Learning with Transformers for Recommender Systems",
Gui, Wang, Yin, Jin, Kula, Xu, Hong, Chi, 2023. https://arxiv.org/abs/2311.05884
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from muxrec.models import checks
from muxrec.models.batch import Batch
from muxrec.models.layers.attention import HeterogeneousAttentionLayer
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.layers.tower import Tower, TowerConfig
from muxrec.models.registry import register
from muxrec.spec import ModelInputs


@dataclass(frozen=True)
class HiformerConfig:
    """Hiformer hyper-parameters.

    Args:
        embedding_dim: D, the width of every token (field embeddings and the task token).
        num_layers: how many heterogeneous attention layers are stacked.
        num_heads: H, attention heads per layer.
        head_dim: width of one head's queries, keys and values.
        ffn_dim: hidden width of each token's feed-forward network.
        low_rank: rank r of the composite key / value projections, (N*D, r) times (r, N*H*head_dim)
            with N = F + 1 tokens; 0 keeps the full matrices. Must be below N*D to save anything.
        prune_last_layer: compute only the task token's output in the last layer (one query instead
            of F + 1). Exact, since only that token is read: a serving-cost switch, same weights.
        hidden_units: the MLP on the task token's final output.
        dropout: dropout after each hidden layer of that MLP.
    """

    embedding_dim: int = 16
    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 16
    ffn_dim: int = 64
    low_rank: int = 0
    prune_last_layer: bool = False
    hidden_units: tuple[int, ...] = (400, 400, 400)
    dropout: float = 0.2

    def __post_init__(self) -> None:
        checks.at_least_one(self, "embedding_dim", "num_layers", "num_heads", "head_dim", "ffn_dim")
        checks.widths(self, "hidden_units")
        checks.dropout(self, "dropout")
        if self.low_rank < 0:
            raise ValueError(f"low_rank must be >= 0 (0 = full composite projection), got {self.low_rank}")


@register("hiformer", HiformerConfig)
class Hiformer(nn.Module):
    """A learned task token joins the F field tokens; heterogeneous attention layers mix them; an MLP
    reads the task token.

    Every token has its own query, output and feed-forward weights (heterogeneous attention), and
    keys / values are composite projections of all tokens together. `low_rank` and
    `prune_last_layer` are the paper's two serving-cost reductions.

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: HiformerConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__()
        num_tokens = inputs.num_fields + 1
        if cfg.low_rank >= num_tokens * cfg.embedding_dim:
            raise ValueError(f"low_rank {cfg.low_rank} is not below the composite input width "
                             f"{num_tokens * cfg.embedding_dim} (= (F + 1) * embedding_dim); use 0 for full rank")
        self.embedding = embedding
        self.prune_last_layer = cfg.prune_last_layer
        self.task_token = nn.Parameter(torch.randn(1, 1, cfg.embedding_dim) * 0.02)  # (1, 1, D)
        self.layers = nn.ModuleList([
            HeterogeneousAttentionLayer(num_tokens, cfg.embedding_dim, cfg.num_heads, cfg.head_dim, cfg.ffn_dim,
                                        cfg.low_rank)
            for _ in range(cfg.num_layers)
        ])
        self.mlp = Tower(cfg.embedding_dim, TowerConfig.of(cfg), len(inputs.tasks))

    def forward(self, batch: Batch) -> Tensor:
        fields = self.embedding(batch)  # (B, F, D)
        x = torch.cat([fields, self.task_token.expand(fields.shape[0], -1, -1)], dim=1)  # (B, F + 1, D)
        for i, layer in enumerate(self.layers):
            x = layer(x, last_only=self.prune_last_layer and i == len(self.layers) - 1)  # (B, F + 1 or 1, D)
        return self.mlp(x[:, -1])  # (B, D) -> (B, T)
