"""DeepFM.

"DeepFM: A Factorization-Machine based Neural Network for CTR Prediction", Guo, Tang, Ye, Li, He,
IJCAI 2017. https://arxiv.org/abs/1703.04247
"""

from __future__ import annotations

from dataclasses import dataclass
from torch import Tensor, nn

from muxrec.models import checks
from muxrec.models.batch import Batch
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.layers.interaction import FactorizationMachine, FirstOrder
from muxrec.models.layers.tower import Activation, Tower, TowerConfig
from muxrec.models.registry import register
from muxrec.spec import ModelInputs


@dataclass(frozen=True)
class DeepFMConfig:
    embedding_dim: int = 16
    hidden_units: tuple[int, ...] = (400, 400, 400)
    dropout: float = 0.2
    batch_norm: bool = False
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        checks.at_least_one(self, "embedding_dim")
        checks.widths(self, "hidden_units")
        checks.dropout(self, "dropout")


@register("deepfm", DeepFMConfig)
class DeepFM(nn.Module):
    """First-order weights + FM pairwise term + a DNN, all reading one shared embedding.

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: DeepFMConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__()
        self.embedding = embedding
        self.linear = FirstOrder(inputs)
        self.fm = FactorizationMachine()
        self.dnn = Tower(inputs.num_fields * cfg.embedding_dim, TowerConfig.of(cfg), len(inputs.tasks))

    def forward(self, batch: Batch) -> Tensor:
        fields = self.embedding(batch)  # (B, F, D)
        return self.linear(batch) + self.fm(fields) + self.dnn(fields.flatten(1))  # (B, 1) + (B, 1) + (B, T)
