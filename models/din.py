"""DIN: target attention over a user's behaviour history.

"Deep Interest Network for Click-Through Rate Prediction", Zhou, Zhu, Song, Fan, Zhu, Ma, Yan, Jin,
Li, Gai, KDD 2018. https://arxiv.org/abs/1706.06978
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from muxrec.errors import ConfigError
from muxrec.models import checks
from muxrec.models.batch import Batch
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.layers.mlp import MLP, Dice
from muxrec.models.layers.tower import Tower, TowerConfig
from muxrec.models.registry import register
from muxrec.spec import ModelInputs

Activation = Literal["dice", "prelu", "relu"]


@dataclass(frozen=True)
class DINConfig:
    """Args:
        target: the candidate feature whose embedding queries the history (reads the same table).
        sequence: the behaviour-history sequence feature.
        attention_units: hidden widths of the local activation unit.
    """

    embedding_dim: int = 16
    target: str = "item_id"
    sequence: str = "history"
    attention_units: tuple[int, ...] = (80, 40)
    hidden_units: tuple[int, ...] = (200, 80)
    activation: Activation = "dice"
    attention_activation: Activation = "dice"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        checks.at_least_one(self, "embedding_dim")
        checks.widths(self, "attention_units", allow_empty=False)
        checks.widths(self, "hidden_units")
        checks.dropout(self, "dropout")


class TargetAttention(nn.Module):
    """DIN's local activation unit: a weight per history position from [q, k, q - k, q * k].

    The weights are not softmax-normalised (the paper keeps their sum as the intensity of interest);
    padded positions get weight 0.

    Two rewrites keep the function and the parameters and cut the work (only float rounding differs):

    - the first layer does not run on the (B, L, 4D) concatenation: with its weight split as
      [W_q, W_k, W_d, W_p] (each (A, D)), [q, k, q - k, q * k] W^T = q (W_q + W_d)^T + [k, q * k] [W_k - W_d, W_p]^T,
      so the query's part is computed once per row and each position needs a 2D-wide product;
    - padded positions are not scored one by one. Their weight is 0, but in training Dice's batch
      statistics count them; a row's padded positions all hold id 0 (the `Batch` contract) and so
      give identical inputs, and one stand-in row per padded history, counted L - length times, gives
      the same statistics (`Dice(x, counts)`). On ML-100K 41% of the positions are padding.
    """

    def __init__(self, dim: int, units: tuple[int, ...], activation: Activation):
        super().__init__()
        self.score = MLP(4 * dim, units, out_dim=1, activation=activation)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (B, D), keys (B, L, D), mask (B, L) -> interest (B, D), weights (B, L)."""
        b, length, d = keys.shape
        lengths = mask.sum(dim=1)  # (B,)
        real = mask.flatten().nonzero().squeeze(1)  # (V,) flat indices of real positions
        padded = (lengths < length).nonzero().squeeze(1)  # (P,) rows with padding
        positions = torch.cat([real, padded * length + lengths[padded]])  # (N,) = V + P; a stand-in per padded row
        counts = torch.cat([keys.new_ones(real.shape[0]), (length - lengths[padded]).to(keys.dtype)])  # (N,)
        rows = torch.div(positions, length, rounding_mode="floor")  # (N,)
        k = keys.reshape(b * length, d)[positions]  # (N, D)
        first, *rest = self.score.net
        w_q, w_k, w_d, w_p = first.weight.split(d, dim=1)  # 4 x (A, D)
        per_row = torch.addmm(first.bias, query, (w_q + w_d).t())  # (B, A)
        pairs = torch.cat([k, query[rows] * k], dim=1)  # (N, 2D)
        hidden = torch.addmm(per_row[rows], pairs, torch.cat([w_k - w_d, w_p], dim=1).t())  # (N, A)
        for layer in rest:
            hidden = layer(hidden, counts) if isinstance(layer, Dice) else layer(hidden)  # (N, A') ... (N, 1)
        weights = keys.new_zeros(b * length).index_copy(0, real, hidden[:real.shape[0], 0]).view(b, length)  # (B, L)
        return torch.bmm(weights[:, None, :], keys).squeeze(1), weights  # (B, D), (B, L)


@register("din", DINConfig)
class DIN(nn.Module):
    """Embeddings of every field plus the history pooled by attention to the candidate, then an MLP.

    Args:
        cfg: hyper-parameters; `target` and `sequence` must read the same embedding table.
        inputs: the model-input view of the feature spec (must include the sequence feature).
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: DINConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__()
        if cfg.sequence not in inputs.sequences:
            raise ConfigError(f"DIN needs the sequence feature {cfg.sequence!r}; the spec's sequence features are "
                              f"{list(inputs.sequences) or 'none'} (use a spec with a history, e.g. ml-100k-history)")
        if cfg.target not in inputs.pooled:
            raise ConfigError(f"DIN's target {cfg.target!r} is not a categorical feature of the spec")
        if inputs.table_of[cfg.target] != inputs.table_of[cfg.sequence]:
            raise ConfigError(f"DIN's target {cfg.target!r} and sequence {cfg.sequence!r} must share an embedding "
                              f"table (they read {inputs.table_of[cfg.target]!r} and {inputs.table_of[cfg.sequence]!r})")
        self.cfg = cfg
        self.embedding = embedding
        self.target_index = inputs.fields.index(cfg.target)
        self.attention = TargetAttention(cfg.embedding_dim, cfg.attention_units, cfg.attention_activation)
        width = (inputs.num_fields + 1) * cfg.embedding_dim
        self.dnn = Tower(width, TowerConfig.of(cfg), len(inputs.tasks))

    def attention_weights(self, batch: Batch) -> Tensor:
        """Per-position attention weights (B, L) of the history, 0 on padding: what the model looked at."""
        fields, sequences = self.embedding.fields_and_sequences(batch)  # (B, F, D), {name: ((B, L, D), (B, L))}
        keys, mask = sequences[self.cfg.sequence]  # (B, L, D), (B, L)
        return self.attention(fields[:, self.target_index], keys, mask)[1]  # (B, L)

    def forward(self, batch: Batch) -> Tensor:
        fields, sequences = self.embedding.fields_and_sequences(batch)  # (B, F, D), {name: ((B, L, D), (B, L))}
        keys, mask = sequences[self.cfg.sequence]  # (B, L, D), (B, L)
        interest, _ = self.attention(fields[:, self.target_index], keys, mask)  # (B, D)
        return self.dnn(torch.cat([fields.flatten(1), interest], dim=1))  # (B, (F+1)*D) -> (B, T)
