"""Multi-layer perceptron blocks."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class Dice(nn.Module):
    """Data-adaptive activation from "Deep Interest Network for Click-Through Rate Prediction" (KDD 2018).

    f(s) = p(s) * s + (1 - p(s)) * alpha * s with p(s) = sigmoid(BN(s)): a PReLU whose rectification
    point follows the batch statistics of each unit. Input (N, C).
    """

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        p = torch.sigmoid(self.norm(x))  # (N, C)
        return p * x + (1 - p) * self.alpha * x  # (N, C)


_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "prelu": nn.PReLU,
                "dice": Dice}


class MLP(nn.Module):
    """Linear -> [BatchNorm] -> activation -> [Dropout], per hidden layer; optional output layer.

    Args:
        in_dim: input width.
        hidden: widths of the hidden layers (may be empty).
        out_dim: width of a final linear layer without activation, or None for none.
        dropout: dropout after each hidden activation.
        batch_norm: BatchNorm1d before each activation.
        activation: one of relu, gelu, silu, tanh, prelu, dice.

    Example::

        >>> MLP(64, (128, 64), out_dim=1)(torch.randn(8, 64)).shape
        torch.Size([8, 1])
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int | None = None, dropout: float = 0.0,
                 batch_norm: bool = False, activation: str = "relu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {sorted(_ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(Dice(h) if activation == "dice" else _ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        self.out_dim = width
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, in_dim) -> (B, out_dim)
