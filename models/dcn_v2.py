"""DCN-v2: a cross network of learned bit-wise feature crosses, stacked on or beside a DNN.

"DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale Learning to Rank Systems",
Wang, Shivanna, Cheng, Jain, Lin, Hong, Chi, WWW 2021. https://arxiv.org/abs/2008.13535
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from muxrec.models import checks
from muxrec.models.batch import Batch
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.layers.interaction import CrossNetwork
from muxrec.models.layers.tower import Activation, Tower, TowerConfig
from muxrec.models.registry import register
from muxrec.spec import ModelInputs

_STRUCTURES = ("parallel", "stacked")


@dataclass(frozen=True)
class DCNv2Config:
    """DCN-v2 hyper-parameters.

    Args:
        embedding_dim: D; the cross network works on x0 = the F field embeddings concatenated, F * D wide
            (default 16).
        structure: "parallel" (cross network and DNN both read x0, their outputs are concatenated) or
            "stacked" (the DNN reads the cross network's output) (default "parallel").
        num_cross_layers: cross layers, i.e. the highest explicit crossing order minus one (default 3).
        low_rank: r of the low-rank cross W = U V^T; 0 for full (F*D) x (F*D) matrices (default 0).
        hidden_units: DNN hidden widths (default (400, 400, 400)); may be empty only when stacked, which
            leaves the cross network alone ("CrossNet" in the paper).
        dropout: dropout after each DNN hidden activation (default 0.2).
        batch_norm: BatchNorm1d before each DNN hidden activation (default off).
        activation: the DNN hidden activation (default relu).
    """

    embedding_dim: int = 16
    structure: Literal["parallel", "stacked"] = "parallel"
    num_cross_layers: int = 3
    low_rank: int = 0
    hidden_units: tuple[int, ...] = (400, 400, 400)
    dropout: float = 0.2
    batch_norm: bool = False
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        checks.at_least_one(self, "embedding_dim", "num_cross_layers")
        checks.widths(self, "hidden_units")
        checks.dropout(self, "dropout")
        if self.structure not in _STRUCTURES:
            raise ValueError(f"structure must be one of {list(_STRUCTURES)}, got {self.structure!r}")
        if self.low_rank < 0:
            raise ValueError(f"low_rank must be >= 0 (0 = full matrix), got {self.low_rank}")
        if self.structure == "parallel" and not self.hidden_units:
            raise ValueError("hidden_units must not be empty with structure 'parallel' (the DNN is one of "
                             "the two branches); use structure 'stacked' for a cross network alone")


@register("dcn_v2", DCNv2Config)
class DCNv2(nn.Module):
    """Cross network x_{l+1} = x0 * (W_l x_l + b_l) + x_l over the flattened fields, combined with a DNN.

    parallel: logits = W [cross(x0); dnn(x0)] + b.    stacked: logits = tower(cross(x0)). One logit per task.

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: DCNv2Config, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__()
        self.embedding = embedding
        self.parallel = cfg.structure == "parallel"
        width = inputs.num_fields * cfg.embedding_dim
        self.cross = CrossNetwork(width, cfg.num_cross_layers, cfg.low_rank)
        num_tasks = len(inputs.tasks)
        self.dnn = Tower(width, TowerConfig.of(cfg), None if self.parallel else num_tasks)
        self.head = nn.Linear(width + self.dnn.out_dim, num_tasks) if self.parallel else nn.Identity()

    def forward(self, batch: Batch) -> Tensor:
        x0 = self.embedding(batch).flatten(1)  # (B, F*D)
        if self.parallel:
            both = torch.cat([self.cross(x0), self.dnn(x0)], dim=1)  # (B, F*D + hidden[-1])
            return self.head(both)  # (B, T)
        return self.dnn(self.cross(x0))  # (B, F*D) -> (B, T)
