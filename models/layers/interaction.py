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
        self.weights = FeatureEmbedding(inputs, dim=1, init_std=0.0, table_dims=False)  # a scalar per value
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


class CrossNetwork(nn.Module):
    """DCN-v2 cross layers on a flat input: x_{l+1} = x0 * (W_l x_l + b_l) + x_l.

    "DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale Learning to Rank
    Systems", Wang et al., WWW 2021. Each layer adds one order of explicit, bit-wise feature crosses
    while the residual keeps the lower orders. With `low_rank` r > 0, W_l is factored as U_l V_l^T
    (K x r times r x K), the paper's cost-saving low-rank cross: O(K r) parameters instead of O(K^2).

    Args:
        in_dim: K, the width of x0 (F * D for flattened field embeddings).
        num_layers: how many cross layers.
        low_rank: r; 0 for full K x K matrices.

    Example::

        >>> CrossNetwork(128, num_layers=3, low_rank=32)(torch.randn(8, 128)).shape
        torch.Size([8, 128])
    """

    def __init__(self, in_dim: int, num_layers: int, low_rank: int = 0):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if low_rank < 0:
            raise ValueError(f"low_rank must be >= 0 (0 = full matrix), got {low_rank}")
        if low_rank == 0:
            layers = [nn.Linear(in_dim, in_dim) for _ in range(num_layers)]
        else:  # x -> U (V^T x) + b: V^T is the first, bias-free map to rank r
            layers = [nn.Sequential(nn.Linear(in_dim, low_rank, bias=False), nn.Linear(low_rank, in_dim))
                      for _ in range(num_layers)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x0: Tensor) -> Tensor:
        x = x0  # (B, K)
        for layer in self.layers:
            x = x0 * layer(x) + x  # (B, K)
        return x


class BilinearFusion(nn.Module):
    """Multi-head bilinear fusion of two stream outputs into one logit (FinalMLP's aggregation layer).

    "FinalMLP: An Enhanced Two-Stream MLP Model for CTR Prediction", Mao et al., AAAI 2023. Both
    inputs are cut into H heads; head h scores b + w1_h^T a_h + w2_h^T c_h + a_h^T W_h c_h and the
    heads are summed. The first-order terms summed over heads are one linear map of the whole input,
    so they are kept as `linear_a` and `linear_c`; the bilinear terms are one (H, K1/H, K2/H) weight.

    Args:
        dim_a: K1, the width of the first stream's output.
        dim_c: K2, the width of the second stream's output.
        num_heads: H; must divide both widths.
    """

    def __init__(self, dim_a: int, dim_c: int, num_heads: int = 1):
        super().__init__()
        if num_heads < 1 or dim_a % num_heads or dim_c % num_heads:
            raise ValueError(f"num_heads must be >= 1 and divide both stream widths ({dim_a}, {dim_c}), "
                             f"got {num_heads}")
        self.num_heads = num_heads
        self.linear_a = nn.Linear(dim_a, 1)
        self.linear_c = nn.Linear(dim_c, 1, bias=False)
        head_a, head_c = dim_a // num_heads, dim_c // num_heads
        self.bilinear = nn.Parameter(torch.empty(num_heads, head_a, head_c))  # (H, K1/H, K2/H)
        bound = (6.0 / (head_a + head_c)) ** 0.5  # Xavier-uniform for each head's matrix
        nn.init.uniform_(self.bilinear, -bound, bound)

    def forward(self, a: Tensor, c: Tensor) -> Tensor:
        heads_a = a.view(a.shape[0], self.num_heads, -1)  # (B, H, K1/H)
        heads_c = c.view(c.shape[0], self.num_heads, -1)  # (B, H, K2/H)
        pairs = torch.einsum("bhi,hij,bhj->b", heads_a, self.bilinear, heads_c)  # (B,)
        return self.linear_a(a) + self.linear_c(c) + pairs[:, None]  # (B, 1)
