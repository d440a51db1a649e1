"""Wide & Deep.

"Wide & Deep Learning for Recommender Systems", Cheng et al., DLRS 2016 (RecSys workshop).
https://arxiv.org/abs/1606.07792
"""

from __future__ import annotations

from dataclasses import dataclass
from torch import Tensor, nn

from muxrec.models import checks
from muxrec.models.batch import Batch
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.layers.interaction import FirstOrder
from muxrec.models.layers.tower import Activation, Tower, TowerConfig
from muxrec.models.registry import register
from muxrec.spec import ModelInputs


@dataclass(frozen=True)
class WideDeepConfig:
    """Wide & Deep hyper-parameters.

    Args:
        embedding_dim: D, the size of each field embedding fed to the deep part (default 16).
        hidden_units: widths of the deep part's hidden layers (default (400, 400, 400)).
        dropout: dropout after each hidden activation (default 0.2).
        batch_norm: BatchNorm1d before each hidden activation (default off).
        activation: the hidden activation (default relu).
    """

    embedding_dim: int = 16
    hidden_units: tuple[int, ...] = (400, 400, 400)
    dropout: float = 0.2
    batch_norm: bool = False
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        checks.at_least_one(self, "embedding_dim")
        checks.widths(self, "hidden_units", allow_empty=False)
        checks.dropout(self, "dropout")


@register("wide_deep", WideDeepConfig)
class WideDeep(nn.Module):
    """Wide (first-order weights per feature value) + deep (an MLP over the concatenated field embeddings).

    The two logits are summed and trained jointly, as in the paper. The wide part here holds the raw
    features only; the paper's hand-made cross-product transformations have no counterpart in the spec.

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: WideDeepConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__()
        self.embedding = embedding
        self.wide = FirstOrder(inputs)
        self.deep = Tower(inputs.num_fields * cfg.embedding_dim, TowerConfig.of(cfg), len(inputs.tasks))

    def forward(self, batch: Batch) -> Tensor:
        fields = self.embedding(batch)  # (B, F, D)
        return self.wide(batch) + self.deep(fields.flatten(1))  # (B, 1) + (B, F*D -> T)
