"""Factorization Machine.

"Factorization Machines", Steffen Rendle, ICDM 2010. https://doi.org/10.1109/ICDM.2010.127
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from muxrec.models import checks
from muxrec.models.batch import Batch
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.layers.interaction import FactorizationMachine, FirstOrder
from muxrec.models.registry import register
from muxrec.spec import ModelInputs


@dataclass(frozen=True)
class FMConfig:
    """FM hyper-parameters.

    Args:
        embedding_dim: D, the size of each field's latent factor vector v_i (default 16).
    """

    embedding_dim: int = 16

    def __post_init__(self) -> None:
        checks.at_least_one(self, "embedding_dim")


@register("fm", FMConfig)
class FM(nn.Module):
    """logit = bias + sum_i w_i + sum_{i<j} <v_i, v_j>: first-order weights plus pairwise factor products.

    The factors v_i are the shared field embedding; the pairwise sum is computed in O(F * D).

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding (the factors).
    """

    def __init__(self, cfg: FMConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__()
        self.embedding = embedding
        self.linear = FirstOrder(inputs)
        self.fm = FactorizationMachine()

    def forward(self, batch: Batch) -> Tensor:
        fields = self.embedding(batch)  # (B, F, D)
        return self.linear(batch) + self.fm(fields)  # (B, 1)
