"""FGCNN: convolutional feature generation in front of an IPNN classifier.

"Feature Generation by Convolutional Neural Network for Click-Through Rate Prediction", Liu, Tang, Chen,
Yu, Guo, Zhang, WWW 2019. https://arxiv.org/abs/1904.04447
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
class FGCNNConfig:
    """FGCNN hyper-parameters; defaults follow FuxiCTR's FGCNN settings.

    Args:
        embedding_dim: D, shared by the raw and the generated feature embeddings.
        channels: output channels of each convolution layer (one entry per generation layer).
        kernel_heights: height of each layer's (h x 1) kernel, sliding over the field axis.
        pooling_sizes: height of each layer's (p x 1) max pooling over the field axis (rounded up, so a
            field count never drops to zero).
        recombined_channels: new features per pooled field that each recombination layer generates.
        hidden_units: the deep classifier's hidden layers.
        dropout: dropout after each hidden layer of the classifier.
        batch_norm: BatchNorm in the classifier.
        activation: the classifier's activation (the generator uses tanh, as in the paper).
    """

    embedding_dim: int = 16
    channels: tuple[int, ...] = (14, 16, 18, 20)
    kernel_heights: tuple[int, ...] = (7, 7, 7, 7)
    pooling_sizes: tuple[int, ...] = (2, 2, 2, 2)
    recombined_channels: tuple[int, ...] = (3, 3, 3, 3)
    hidden_units: tuple[int, ...] = (400, 400, 400)
    dropout: float = 0.2
    batch_norm: bool = False
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        checks.at_least_one(self, "embedding_dim")
        checks.widths(self, "channels", "kernel_heights", "pooling_sizes", "recombined_channels", "hidden_units")
        checks.dropout(self, "dropout")
        layers = {"channels": self.channels, "kernel_heights": self.kernel_heights,
                  "pooling_sizes": self.pooling_sizes, "recombined_channels": self.recombined_channels}
        if len({len(v) for v in layers.values()}) != 1:
            lengths = ", ".join(f"{k}={len(v)}" for k, v in layers.items())
            raise ValueError(f"channels, kernel_heights, pooling_sizes and recombined_channels need one entry per "
                             f"generation layer, got {lengths}")


def pooled_fields(num_fields: int, pooling_sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Fields left after each pooling layer: ceil(F / p), layer after layer."""
    sizes, fields = [], num_fields
    for p in pooling_sizes:
        fields = -(-fields // p)
        sizes.append(fields)
    return tuple(sizes)


class FeatureGeneration(nn.Module):
    """Conv -> tanh -> max-pool over fields, each followed by a recombination layer making new features.

    Layer i sees the previous pooled maps (B, C_{i-1}, F_{i-1}, D) (the embedding matrix as one channel
    for i = 1), convolves a (h_i x 1) kernel along the field axis (so neighbouring fields interact, each
    embedding dimension apart), max-pools (p_i x 1) to F_i fields, and a fully connected tanh layer maps
    the flattened maps to F_i * r_i new D-dimensional features.

    Args:
        num_fields: F.
        dim: D.
        channels, kernel_heights, pooling_sizes, recombined_channels: per layer, see FGCNNConfig.

    Example::

        >>> gen = FeatureGeneration(8, 16, (4, 4), (3, 3), (2, 2), (2, 2))
        >>> gen(torch.randn(32, 8, 16)).shape      # 4 * 2 + 2 * 2 new features
        torch.Size([32, 12, 16])
    """

    def __init__(self, num_fields: int, dim: int, channels: tuple[int, ...], kernel_heights: tuple[int, ...],
                 pooling_sizes: tuple[int, ...], recombined_channels: tuple[int, ...]):
        super().__init__()
        self.dim = dim
        fields = pooled_fields(num_fields, pooling_sizes)
        in_channels = (1, *channels[:-1])
        self.convs = nn.ModuleList()
        self.recombinations = nn.ModuleList()
        for c_in, c_out, h, p, f, r in zip(in_channels, channels, kernel_heights, pooling_sizes, fields,
                                           recombined_channels):
            # "Same" padding along fields (an even kernel pads one more row below), none along D.
            self.convs.append(nn.Sequential(
                nn.ZeroPad2d((0, 0, (h - 1) // 2, h // 2)),
                nn.Conv2d(c_in, c_out, kernel_size=(h, 1)),
                nn.Tanh(),
                nn.MaxPool2d(kernel_size=(p, 1), ceil_mode=True),
            ))
            self.recombinations.append(nn.Sequential(nn.Linear(c_out * f * dim, r * f * dim), nn.Tanh()))
        self.num_new = sum(f * r for f, r in zip(fields, recombined_channels))

    def forward(self, fields: Tensor) -> Tensor:
        maps = fields.unsqueeze(1)  # (B, 1, F, D)
        new = []
        for conv, recombine in zip(self.convs, self.recombinations):
            maps = conv(maps)  # (B, C_i, F_i, D)
            generated = recombine(maps.flatten(1))  # (B, r_i * F_i * D)
            new.append(generated.view(maps.shape[0], -1, self.dim))  # (B, r_i * F_i, D)
        return torch.cat(new, dim=1)  # (B, F_new, D)


class InnerProducts(nn.Module):
    """<v_i, v_j> for every field pair i < j: IPNN's product layer.

    "Product-based Neural Networks for User Response Prediction", Qu et al., ICDM 2016.
    """

    def __init__(self, num_fields: int):
        super().__init__()
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)  # (2, P)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @property
    def num_pairs(self) -> int:
        return self.rows.numel()

    def forward(self, fields: Tensor) -> Tensor:
        gram = fields @ fields.transpose(1, 2)  # (B, F, F)
        return gram[:, self.rows, self.cols]  # (B, P)


@register("fgcnn", FGCNNConfig)
class FGCNN(nn.Module):
    """CNN-generated features joined to the raw ones, classified by an IPNN.

    Feature generation: conv + pooling layers over the (F x D) embedding matrix, each followed by a
    recombination layer that outputs new feature embeddings. Deep classifier (IPNN): the pairwise inner
    products of all raw and new embeddings, concatenated with the flattened embeddings, into an MLP.
    Both parts read the one shared, injected embedding.

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: FGCNNConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__()
        self.embedding = embedding
        self.generation = FeatureGeneration(inputs.num_fields, cfg.embedding_dim, cfg.channels, cfg.kernel_heights,
                                            cfg.pooling_sizes, cfg.recombined_channels)
        num_all = inputs.num_fields + self.generation.num_new
        self.products = InnerProducts(num_all)
        self.dnn = Tower(self.products.num_pairs + num_all * cfg.embedding_dim, TowerConfig.of(cfg),
                         len(inputs.tasks))

    def forward(self, batch: Batch) -> Tensor:
        raw = self.embedding(batch)  # (B, F, D)
        fields = torch.cat([raw, self.generation(raw)], dim=1)  # (B, F + F_new, D)
        features = torch.cat([self.products(fields), fields.flatten(1)], dim=1)  # (B, P + (F + F_new) * D)
        return self.dnn(features)  # (B, T)
