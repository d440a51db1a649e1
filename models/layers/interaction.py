"""Explicit feature-interaction layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from muxrec.models.batch import Batch
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.spec import ModelInputs


class FirstOrder(nn.Module):
    """The linear part of a CTR model: bias + sum over fields of a per-value scalar weight.

    A FeatureEmbedding of dimension 1 is exactly a table of per-value weights (and x * w for numeric
    fields), so LR, FM and the wide parts of Wide & Deep / DeepFM share this layer.
    """

    def __init__(self, inputs: ModelInputs):
        super().__init__()
        self.weights = FeatureEmbedding(inputs, dim=1, init_std=0.0)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch) -> Tensor:
        return self.weights(batch).sum(dim=1) + self.bias  # (B, F, 1) -> (B, 1)


class FactorizationMachine(nn.Module):
    """Second-order FM term: sum over field pairs of <v_i, v_j>, in O(F * D).

    "Factorization Machines", Rendle, ICDM 2010: 0.5 * ((sum_i v_i)^2 - sum_i v_i^2), summed over D.
    """

    def forward(self, fields: Tensor) -> Tensor:
        square_of_sum = fields.sum(dim=1).pow(2)  # (B, D)
        sum_of_square = fields.pow(2).sum(dim=1)  # (B, D)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1, keepdim=True)  # (B, 1)
