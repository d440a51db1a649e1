"""Embedding tables behind one interface: ids in, vectors out, and their size in bytes.

Whatever a model or the Embedder reads of a table goes through `EmbeddingTable`: `forward(ids)` maps
ids of any shape (...) to vectors (..., d), and `num_bytes()` is what the table weighs (the formula
each method documents, checked against its parameters in tests). `FeatureEmbedding` builds one per
table from the spec (`TableInput.compression`); a model never knows which method it got.

    DenseTable   one (rows, d) matrix: rows * d * 4 bytes (the default; TorchRec's
                 EmbeddingBagCollection holds these, the table is a view of its weight)
    QRTable      quotient-remainder: (ceil(rows / m) + m) * d * 4 bytes
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from muxrec.spec import TableInput

FLOAT_BYTES = 4


class EmbeddingTable(nn.Module):
    """rows ids -> d-wide vectors. Subclasses set `rows` and `dim` and implement forward / num_bytes."""

    rows: int
    dim: int

    def forward(self, ids: Tensor) -> Tensor:  # (...) -> (..., d)
        raise NotImplementedError

    def num_bytes(self) -> int:
        raise NotImplementedError


class DenseTable(EmbeddingTable):
    """A view of one (rows, d) weight held elsewhere (an EmbeddingBagCollection bag, an nn.Embedding)."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self._weight = [weight]  # a list: not registered here, so the weight is saved once, by its owner
        self.rows, self.dim = weight.shape

    @property
    def weight(self) -> nn.Parameter:
        return self._weight[0]

    def forward(self, ids: Tensor) -> Tensor:
        return nn.functional.embedding(ids, self.weight)  # (..., d)

    def num_bytes(self) -> int:
        return self.rows * self.dim * FLOAT_BYTES


class QRTable(EmbeddingTable):
    """Row i is quotient[i // m] * remainder[i % m] (element-wise): two small tables stand for `rows`.

    "Compositional Embeddings Using Complementary Partitions for Memory-Efficient Recommendation
    Systems" (Shi et al., KDD 2020): no two ids share both parts, so unlike hashing every row stays
    distinct. The quotient table starts at 1 + noise, so training starts out as remainder rows.

    Args:
        rows: ids the table answers for (0 .. rows-1).
        dim: d.
        buckets: m, rows of the remainder table.
        init_std: std of the remainder rows' (and the quotient rows' noise) normal initialisation.
    """

    def __init__(self, rows: int, dim: int, buckets: int, init_std: float):
        super().__init__()
        self.rows, self.dim, self.buckets = rows, dim, buckets
        self.quotient = nn.Parameter(torch.empty(math.ceil(rows / buckets), dim))  # (ceil(rows / m), d)
        self.remainder = nn.Parameter(torch.empty(buckets, dim))  # (m, d)
        nn.init.normal_(self.quotient, mean=1.0, std=init_std)
        nn.init.normal_(self.remainder, std=init_std)

    def forward(self, ids: Tensor) -> Tensor:
        q = nn.functional.embedding(torch.div(ids, self.buckets, rounding_mode="floor"), self.quotient)  # (..., d)
        return q * nn.functional.embedding(ids % self.buckets, self.remainder)  # (..., d)

    def num_bytes(self) -> int:
        return (math.ceil(self.rows / self.buckets) + self.buckets) * self.dim * FLOAT_BYTES


def compressed_table(table: TableInput, dim: int, init_std: float) -> EmbeddingTable:
    """The module a compressed table's spec asks for."""
    method = table.compression.method
    if method == "qr":
        return QRTable(table.num_embeddings, dim, table.compression.buckets, init_std)
    raise ValueError(f"table {table.name!r}: unknown compression method {method!r}")
