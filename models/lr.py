"""Logistic regression: the linear baseline every CTR model must beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from muxrec.models.batch import Batch
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.registry import register
from muxrec.spec import ModelInputs


@dataclass(frozen=True)
class LRConfig:
    """LR has one scalar weight per feature value: a 1-dimensional embedding."""

    embedding_dim: int = 1

    def __post_init__(self) -> None:
        if self.embedding_dim != 1:
            raise ValueError(f"LR weights are 1-dimensional embeddings; embedding_dim must be 1, got {self.embedding_dim}")


@register("lr", LRConfig)
class LR(nn.Module):
    """logit = bias + sum over fields of w[value] (x * w for numeric fields)."""

    def __init__(self, cfg: LRConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__()
        self.embedding = embedding
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch) -> Tensor:
        return self.embedding(batch).sum(dim=1) + self.bias  # (B, F, 1) -> (B, 1)
