"""AutoInt and AutoInt+.

"AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural Networks", Song, Shi, Xiao,
Duan, Xu, Zhang, Tang, CIKM 2019. https://arxiv.org/abs/1810.11921
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from muxrec.models import checks
from muxrec.models.batch import Batch
from muxrec.models.layers.attention import InteractingLayer
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.layers.tower import Tower, TowerConfig
from muxrec.models.registry import register
from muxrec.spec import ModelInputs


@dataclass(frozen=True)
class AutoIntConfig:
    """AutoInt hyper-parameters; the defaults are the paper's (3 layers, 2 heads, d' = 32).

    Args:
        embedding_dim: D, the width of every field embedding.
        attention_layers: how many interacting layers are stacked.
        num_heads: H, attention heads per layer.
        attention_dim: d', the width of one head; a layer outputs H * d' per field.
        scale: divide attention scores by sqrt(d') (the paper uses the plain inner product).
        dnn_hidden_units: a DNN over the flat embeddings, in parallel (AutoInt+); () for none.
        dnn_dropout: dropout after each hidden layer of that DNN.
    """

    embedding_dim: int = 16
    attention_layers: int = 3
    num_heads: int = 2
    attention_dim: int = 32
    scale: bool = False
    dnn_hidden_units: tuple[int, ...] = ()
    dnn_dropout: float = 0.0

    def __post_init__(self) -> None:
        checks.at_least_one(self, "embedding_dim", "attention_layers", "num_heads", "attention_dim")
        checks.widths(self, "dnn_hidden_units")
        checks.dropout(self, "dnn_dropout")


@register("autoint", AutoIntConfig)
class AutoInt(nn.Module):
    """Stacked multi-head self-attention over the fields, a linear output layer over the result.

    Each interacting layer lets every field attend to all fields, so stacking L layers models
    interactions of order up to 2^L. The output layer reads the flattened (B, F * H * d') result.
    With `dnn_hidden_units` a DNN over the flat embeddings adds its logit (AutoInt+).

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: AutoIntConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__()
        self.embedding = embedding
        width = cfg.num_heads * cfg.attention_dim
        self.interacting = nn.Sequential(*[
            InteractingLayer(cfg.embedding_dim if i == 0 else width, cfg.attention_dim, cfg.num_heads, cfg.scale)
            for i in range(cfg.attention_layers)
        ])
        self.output = nn.Linear(inputs.num_fields * width, len(inputs.tasks))
        self.dnn = (Tower(inputs.num_fields * cfg.embedding_dim, TowerConfig.of(cfg, "dnn_hidden_units", "dnn_dropout"),
                          len(inputs.tasks)) if cfg.dnn_hidden_units else None)

    def forward(self, batch: Batch) -> Tensor:
        fields = self.embedding(batch)  # (B, F, D)
        logits = self.output(self.interacting(fields).flatten(1))  # (B, F, H * d') -> (B, T)
        if self.dnn is not None:
            logits = logits + self.dnn(fields.flatten(1))  # (B, T)
        return logits
