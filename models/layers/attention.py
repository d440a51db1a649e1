"""Self-attention over field tokens: AutoInt's interacting layer and Hiformer's heterogeneous layer.

Both treat the F field embeddings of a row as a set of tokens and let every token attend to all of
them. AutoInt shares one query / key / value map across fields; Hiformer gives each token its own
(heterogeneous) maps, so "age attends to genre" and "genre attends to age" are different functions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def attend(query: Tensor, key: Tensor, value: Tensor, scale: float) -> Tensor:
    """softmax(q k^T * scale) v for every head: (B, H, Q, K), (B, H, N, K), (B, H, N, V) -> (B, H, Q, V)."""
    return nn.functional.scaled_dot_product_attention(query, key, value, scale=scale)  # (B, H, Q, V)


class InteractingLayer(nn.Module):
    """AutoInt's interacting layer: multi-head self-attention over fields, a projected residual, ReLU.

    "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural Networks", Song et al.,
    CIKM 2019. For head h, field m attends to every field k with weight softmax_k(<W_Q e_m, W_K e_k>)
    and gathers their W_V e_k; the heads are concatenated and W_Res e_m is added before the ReLU.
    The paper scores with the plain inner product; `scale` divides it by sqrt(head_dim) as in the
    Transformer.

    Args:
        in_dim: width of each input token (D for the first layer, H * head_dim after).
        head_dim: d', the width of one head's queries, keys and values.
        num_heads: H.
        scale: divide attention scores by sqrt(head_dim).

    Example::

        >>> InteractingLayer(16, head_dim=32, num_heads=2)(torch.randn(8, 5, 16)).shape
        torch.Size([8, 5, 64])
    """

    def __init__(self, in_dim: int, head_dim: int, num_heads: int, scale: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = 1.0 / math.sqrt(head_dim) if scale else 1.0
        self.qkv = nn.Linear(in_dim, 3 * num_heads * head_dim, bias=False)
        self.residual = nn.Linear(in_dim, num_heads * head_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, f, _ = x.shape
        qkv = self.qkv(x).view(b, f, 3, self.num_heads, self.head_dim)  # (B, F, 3, H, d')
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, H, F, d')
        heads = attend(q, k, v, self.scale).transpose(1, 2).flatten(2)  # (B, F, H * d')
        return torch.relu(heads + self.residual(x))  # (B, F, H * d')


class TokenLinear(nn.Module):
    """A separate affine map per token: token n of (B, N, in_dim) is multiplied by its own weight[n].

    `forward(x, tokens)` maps only the tokens in the slice `tokens` (x holds just those), which is
    how a pruned layer computes one token's output without touching the others' weights.

    Args:
        num_tokens: N.
        in_dim: input width of every token.
        out_dim: output width of every token.
    """

    def __init__(self, num_tokens: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_tokens, in_dim, out_dim))  # (N, in, out)
        self.bias = nn.Parameter(torch.empty(num_tokens, out_dim))  # (N, out)
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default range, token by token
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, tokens: slice = slice(None)) -> Tensor:
        return torch.einsum("bni,nio->bno", x, self.weight[tokens]) + self.bias[tokens]  # (B, n, out)


class CompositeProjection(nn.Module):
    """Every token's keys (or values) from the concatenation of all N tokens: one (N*D, N*out) map.

    Hiformer's composite projection: token j's key depends on all tokens, so the attention score of
    i on j can already carry higher-order interactions. With `rank` r > 0 the matrix is factored as
    (N*D, r) times (r, N*out), the paper's low-rank approximation that makes serving cheaper.

    Args:
        num_tokens: N.
        dim: D, the width of each input token.
        out_dim: width of each token's output (H * head_dim).
        rank: r; 0 for the full matrix.
    """

    def __init__(self, num_tokens: int, dim: int, out_dim: int, rank: int = 0):
        super().__init__()
        self.num_tokens = num_tokens
        if rank == 0:
            self.proj: nn.Module = nn.Linear(num_tokens * dim, num_tokens * out_dim)
        else:
            self.proj = nn.Sequential(nn.Linear(num_tokens * dim, rank, bias=False),
                                      nn.Linear(rank, num_tokens * out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.flatten(1)).view(x.shape[0], self.num_tokens, -1)  # (B, N, D) -> (B, N, out)


class HeterogeneousAttentionLayer(nn.Module):
    """One Hiformer layer: heterogeneous multi-head attention, then a per-token feed-forward network.

    "Hiformer: Heterogeneous Feature Interactions Learning with Transformers for Recommender
    Systems", Gui et al., 2023 (arXiv 2311.05884). Token i's query, output projection and
    feed-forward weights are its own (TokenLinear); keys and values come from the composite
    projection of all tokens. Each sub-block reads a LayerNorm of its input and adds a residual
    (pre-LN, as in GPT-2): with post-LN the per-token biases swamp the small initial embeddings
    (std 1e-4) and training starts much more slowly.

    `forward(x, last_only=True)` computes only the last token's output (B, 1, D): the paper's
    pruning of the final layer, where only the task token is read. It is exact: that token's output
    depends on its own query and on the keys / values of all tokens, which are computed either way.

    Args:
        num_tokens: N, the field tokens plus the task token.
        dim: D, the width of each token.
        num_heads: H.
        head_dim: width of one head's queries, keys and values.
        ffn_dim: hidden width of the per-token feed-forward network.
        rank: low rank of the composite key / value projections; 0 for full.

    Example::

        >>> layer = HeterogeneousAttentionLayer(9, dim=16, num_heads=2, head_dim=16, ffn_dim=64)
        >>> layer(torch.randn(8, 9, 16)).shape, layer(torch.randn(8, 9, 16), last_only=True).shape
        (torch.Size([8, 9, 16]), torch.Size([8, 1, 16]))
    """

    def __init__(self, num_tokens: int, dim: int, num_heads: int, head_dim: int, ffn_dim: int, rank: int = 0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        width = num_heads * head_dim
        self.query = TokenLinear(num_tokens, dim, width)
        self.key = CompositeProjection(num_tokens, dim, width, rank)
        self.value = CompositeProjection(num_tokens, dim, width, rank)
        self.out = TokenLinear(num_tokens, width, dim)
        self.ffn_in = TokenLinear(num_tokens, dim, ffn_dim)
        self.ffn_out = TokenLinear(num_tokens, ffn_dim, dim)
        self.attn_norm = nn.LayerNorm(dim)
        self.ffn_norm = nn.LayerNorm(dim)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, n, K)

    def forward(self, x: Tensor, last_only: bool = False) -> Tensor:
        normed = self.attn_norm(x)  # (B, N, D)
        keys = self._heads(self.key(normed))  # (B, H, N, K)
        values = self._heads(self.value(normed))  # (B, H, N, K)
        rows = slice(x.shape[1] - 1, None) if last_only else slice(None)
        x, normed = x[:, rows], normed[:, rows]  # (B, n, D), n = 1 or N
        queries = self._heads(self.query(normed, rows))  # (B, H, n, K)
        heads = attend(queries, keys, values, self.head_dim ** -0.5)  # (B, H, n, K)
        x = x + self.out(heads.transpose(1, 2).flatten(2), rows)  # (B, n, D)
        hidden = torch.relu(self.ffn_in(self.ffn_norm(x), rows))  # (B, n, ffn_dim)
        return x + self.ffn_out(hidden, rows)  # (B, n, D)
