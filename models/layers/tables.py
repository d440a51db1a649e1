"""Embedding tables behind one interface: ids in, vectors out, and their size in bytes.

Whatever a model or the Embedder reads of a table goes through `EmbeddingTable`: `forward(ids)` maps
ids of any shape (...) to vectors (..., d), and `num_bytes()` is what the table weighs (the formula
each method documents, checked against its parameters in tests). `FeatureEmbedding` builds one per
table from the spec (`TableInput.compression`); a model never knows which method it got.

    DenseTable      one (rows, d) matrix: rows * d * 4 bytes (the default; TorchRec's
                    EmbeddingBagCollection holds these, the table is a view of its weight)
    StandaloneTable the same, owning its weight outside the collection (a table to be quantized)
    QRTable         quotient-remainder: (ceil(rows / m) + m) * d * 4 bytes
    MixedDimTable   dims by frequency: sum over blocks of (rows_k * d_k + d_k * d if d_k < d) * 4 bytes
    MatryoshkaTable nested widths, trained at each: rows * d * 4 bytes, served cut (PrefixTable)
    PrefixTable     the first k values of each row, zero-padded to d: rows * k * 4 bytes
    QuantizedTable  row-wise int8 / int4 for serving: rows * (ceil(d * bits / 8) + 4) bytes
    PrunedTable     magnitude pruning: trained dense with a mask, rows * d * (4 + 1) bytes
    SparseTable     its serving form, the kept values only: nnz * (4 + c) + (rows + 1) * 4 bytes,
                    c = 1 byte per column index (2 past 256 columns)
"""

from __future__ import annotations

import dataclasses
import math

import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm: the row-wise quantization kernels)
import torch
from torch import Tensor, nn

from muxrec.spec import TableInput

FLOAT_BYTES = 4
DEFAULT_RAMP_STEPS = 500  # magnitude pruning reaches its sparsity after this many training steps


class EmbeddingTable(nn.Module):
    """rows ids -> d-wide vectors. Subclasses set `rows` and `dim` and implement forward / num_bytes."""

    rows: int
    dim: int

    def forward(self, ids: Tensor) -> Tensor:  # (...) -> (..., d)
        raise NotImplementedError

    def num_bytes(self) -> int:
        raise NotImplementedError


class DenseTable(EmbeddingTable):
    """A view of one (rows, d) weight held elsewhere (an EmbeddingBagCollection bag, an nn.Embedding).

    `sparse`: its gradient is sparse (the rows looked up), as the owner's is when training switched it
    to sparse gradients (a table too large for a dense optimizer step, see pipelines/sparse.py).
    """

    def __init__(self, weight: nn.Parameter, sparse: bool = False):
        super().__init__()
        self._weight = [weight]  # a list: not registered here, so the weight is saved once, by its owner
        self.rows, self.dim = weight.shape
        self.sparse = sparse

    @property
    def weight(self) -> nn.Parameter:
        return self._weight[0]

    def forward(self, ids: Tensor) -> Tensor:
        return nn.functional.embedding(ids, self.weight, sparse=self.sparse)  # (..., d)

    def num_bytes(self) -> int:
        return self.rows * self.dim * FLOAT_BYTES


class StandaloneTable(EmbeddingTable):
    """A dense (rows, d) table owning its weight: trained as float32, quantized when published."""

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.rows, self.dim = rows, dim
        self.weight = nn.Parameter(torch.empty(rows, dim))  # (rows, d)

    def forward(self, ids: Tensor) -> Tensor:
        return nn.functional.embedding(ids, self.weight)  # (..., d)

    def num_bytes(self) -> int:
        return self.rows * self.dim * FLOAT_BYTES


class QuantizedTable(EmbeddingTable):
    """Row-wise quantized rows, dequantized on lookup: serving only (it has no gradient).

    fbgemm's fused row-wise format: each row is its d values at `bits` bits (asymmetric, from the
    row's own min and max), then an fp16 scale and an fp16 bias, so a row costs ceil(d * bits / 8) + 4
    bytes (d = 16: 20 bytes at int8, 12 at int4, against 64 as float32). The largest error of a value
    is half its row's step, (max - min) / (2 ** bits - 1) / 2, plus fp16 rounding of scale and bias.
    """

    def __init__(self, rows: int, dim: int, bits: int):
        super().__init__()
        if bits not in (4, 8) or dim * bits % 8:
            raise ValueError(f"row-wise int{bits} needs bits 4 or 8 and d * bits a whole number of bytes (d = {dim})")
        self.rows, self.dim, self.bits = rows, dim, bits
        self.register_buffer("packed", torch.zeros(rows, dim * bits // 8 + 4, dtype=torch.uint8))  # (rows, bytes)

    @classmethod
    def from_float(cls, weight: Tensor, bits: int) -> QuantizedTable:
        table = cls(weight.shape[0], weight.shape[1], bits)
        table.packed = torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(weight.detach().float().contiguous(), bits)
        return table

    def forward(self, ids: Tensor) -> Tensor:
        rows = self.packed[ids.reshape(-1)]  # (N, bytes)
        vectors = torch.ops.fbgemm.FusedNBitRowwiseQuantizedSBHalfToFloat(rows, self.bits)  # (N, d)
        return vectors.reshape(*ids.shape, self.dim)  # (..., d)

    def num_bytes(self) -> int:
        return self.rows * (math.ceil(self.dim * self.bits / 8) + 4)


QUANTIZED_BITS = {"int8": 8, "int4": 4}


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


class MixedDimTable(EmbeddingTable):
    """Rows in blocks by frequency, each block at its own width d_k, projected to d where narrower.

    "Mixed Dimension Embeddings with Application to Memory-Efficient Recommendation Systems" (Ginart
    et al., ISIT 2021). A fitted vocabulary numbers values most frequent first (row 0: missing or
    unknown), so block k holds rows [start_k, end_k) with end_k = round(fraction_k * rows).

    Args:
        rows: ids the table answers for.
        dim: d, the width of every vector it returns.
        blocks: (fraction of rows where the block ends, d_k) pairs, fractions increasing to 1; a d_k
            over d is cut to d (a first-order table, d = 1, is one value a row in every block).
        init_std: std of the blocks' normal initialisation.
    """

    def __init__(self, rows: int, dim: int, blocks: tuple[tuple[float, int], ...], init_std: float):
        super().__init__()
        blocks = tuple((fraction, min(d_k, dim)) for fraction, d_k in blocks)
        self.rows, self.dim = rows, dim
        ends = [round(fraction * rows) for fraction, _ in blocks[:-1]] + [rows]
        self.starts = [0] + ends[:-1]
        self.ends = ends
        self.blocks = nn.ParameterList(nn.Parameter(torch.empty(end - start, d_k))  # (rows_k, d_k)
                                       for start, end, (_, d_k) in zip(self.starts, ends, blocks))
        self.projections = nn.ModuleList(nn.Linear(d_k, dim, bias=False) if d_k < dim else nn.Identity()
                                         for _, d_k in blocks)
        for block in self.blocks:
            nn.init.normal_(block, std=init_std)

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)  # (N,)
        out = torch.zeros(len(flat), self.dim, device=ids.device)  # (N, d)
        for start, end, block, project in zip(self.starts, self.ends, self.blocks, self.projections):
            rows = torch.nonzero((flat >= start) & (flat < end)).squeeze(1)  # (n_k,)
            if len(rows):
                out = out.index_copy(0, rows, project(nn.functional.embedding(flat[rows] - start, block)))  # (n_k, d)
        return out.reshape(*ids.shape, self.dim)  # (..., d)

    def num_bytes(self) -> int:
        return FLOAT_BYTES * sum(b.shape[0] * b.shape[1] + (b.shape[1] * self.dim if b.shape[1] < self.dim else 0)
                                 for b in self.blocks)


class MatryoshkaTable(EmbeddingTable):
    """A (rows, d) table trained to be usable at nested widths ("Matryoshka Representation Learning",
    Kusupati et al., NeurIPS 2022): in training each call reads it at one width k drawn from `dims` + d
    (values past k zeroed; torch's seeded RNG, so a run replays), so every prefix learns to carry the
    row. In eval it reads `serve_dim` values (zero-padded), as a published version, cut, will.
    """

    def __init__(self, rows: int, dim: int, dims: tuple[int, ...], serve_dim: int | None, init_std: float):
        super().__init__()
        self.rows, self.dim = rows, dim
        self.widths = sorted({min(k, dim) for k in dims} | {dim})
        self.serve_dim = min(serve_dim or dim, dim)
        self.weight = nn.Parameter(torch.empty(rows, dim))  # (rows, d)
        nn.init.normal_(self.weight, std=init_std)

    def forward(self, ids: Tensor) -> Tensor:
        vectors = nn.functional.embedding(ids, self.weight)  # (..., d)
        k = self.widths[int(torch.randint(len(self.widths), ()))] if self.training else self.serve_dim
        if k == self.dim:
            return vectors
        return vectors * (torch.arange(self.dim, device=ids.device) < k).to(vectors.dtype)  # (..., d)

    def num_bytes(self) -> int:
        return self.rows * self.dim * FLOAT_BYTES

    def cut(self) -> PrefixTable:
        table = PrefixTable(self.rows, self.dim, self.serve_dim)
        table.weight = nn.Parameter(self.weight.detach()[:, :self.serve_dim].clone(), requires_grad=False)
        return table


class PrefixTable(EmbeddingTable):
    """The first k values of each row of a d-wide table, zero-padded back to d on lookup (serving)."""

    def __init__(self, rows: int, dim: int, keep: int):
        super().__init__()
        self.rows, self.dim, self.keep = rows, dim, keep
        self.weight = nn.Parameter(torch.zeros(rows, keep), requires_grad=False)  # (rows, k)

    def forward(self, ids: Tensor) -> Tensor:
        vectors = nn.functional.embedding(ids, self.weight)  # (..., k)
        return nn.functional.pad(vectors, (0, self.dim - self.keep))  # (..., d)

    def num_bytes(self) -> int:
        return self.rows * self.keep * FLOAT_BYTES


class PrunedTable(EmbeddingTable):
    """A (rows, d) table trained under gradual magnitude pruning ("To prune, or not to prune: exploring
    the efficacy of pruning for model compression", Zhu and Gupta, 2017).

    Training step t (counted by the table) reads the table through a mask that zeroes its smallest
    values, all rows together: a fraction s_t = (1 - keep) * (1 - (1 - t / ramp_steps) ** 3) of them,
    rising fast then levelling off at 1 - keep; pruned values are set to zero, so they leave the
    table for good unless they grow back above the threshold. The mask is renewed every
    ramp_steps / 20 steps (and at the end of the ramp). A published version keeps exactly the largest
    `keep` of the values (`sparse()`), whether or not training reached the end of the ramp; in eval the
    table reads as that already (recomputed whenever its weights changed), so validation and early
    stopping measure the table as it will be served.
    """

    def __init__(self, rows: int, dim: int, keep: float, ramp_steps: int, init_std: float):
        super().__init__()
        self.rows, self.dim, self.keep, self.ramp_steps = rows, dim, keep, ramp_steps
        self.weight = nn.Parameter(torch.empty(rows, dim))  # (rows, d)
        nn.init.normal_(self.weight, std=init_std)
        self.register_buffer("mask", torch.ones(rows, dim, dtype=torch.bool))  # (rows, d)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self._every = max(1, ramp_steps // 20)
        self._served: list[SparseTable] = []  # what eval reads (a list: not a submodule, not saved)
        self._served_version: tuple[int, int] | None = None

    def sparsity(self, step: int) -> float:
        """The pruned fraction at training step `step` (0 at the start, 1 - keep from ramp_steps on)."""
        done = min(step, self.ramp_steps) / self.ramp_steps
        return (1 - self.keep) * (1 - (1 - done) ** 3)

    def forward(self, ids: Tensor) -> Tensor:
        if not self.training:  # exactly the values a published version keeps, so validation measures that
            version = (self.weight._version, self.mask._version)  # bumped by every in-place change
            if self._served_version != version:
                self._served, self._served_version = [self.sparse()], version
            return self._served[0](ids)  # (..., d)
        self.steps += 1
        step = int(self.steps)
        if step % self._every == 0 or step == self.ramp_steps:
            self._prune(self.sparsity(step))
        return nn.functional.embedding(ids, self.weight * self.mask)  # (..., d)

    @torch.no_grad()
    def _prune(self, sparsity: float) -> None:
        drop = int(sparsity * self.weight.numel())
        if drop == 0:
            return
        threshold = self.weight.abs().flatten().kthvalue(drop).values  # the largest pruned magnitude
        self.mask.copy_(self.weight.abs() > threshold)
        self.weight.mul_(self.mask)

    def num_bytes(self) -> int:
        return self.rows * self.dim * (FLOAT_BYTES + 1)  # the weight and its mask (a byte a value)

    def sparse(self) -> SparseTable:
        return SparseTable.from_dense(self.weight.detach() * self.mask, self.keep)


class SparseTable(EmbeddingTable):
    """The kept values of a pruned table in compressed sparse rows (serving only): `values` (nnz,),
    their `columns` (nnz,) and `offsets` (rows + 1,), row i being values[offsets[i]:offsets[i + 1]].
    A lookup scatters a row's values into zeros; a row with nothing kept reads as zeros."""

    def __init__(self, rows: int, dim: int, keep: float):
        super().__init__()
        self.rows, self.dim, self.keep = rows, dim, keep
        nnz = self.kept_values(rows, dim, keep)
        self.register_buffer("values", torch.zeros(nnz))  # (nnz,)
        self.register_buffer("columns", torch.zeros(nnz, dtype=torch.uint8 if dim <= 256 else torch.int16))  # (nnz,)
        self.register_buffer("offsets", torch.zeros(rows + 1, dtype=torch.int32))  # (rows + 1,)

    @staticmethod
    def kept_values(rows: int, dim: int, keep: float) -> int:
        return max(1, int(keep * rows * dim))

    @classmethod
    def from_dense(cls, weight: Tensor, keep: float) -> SparseTable:
        """The largest `keep` of `weight`'s values by magnitude, in sparse rows."""
        rows, dim = weight.shape
        table = cls(rows, dim, keep)
        flat = weight.flatten()
        kept = flat.abs().topk(len(table.values)).indices.sort().values  # (nnz,) row-major order
        table.values.copy_(flat[kept])
        table.columns.copy_((kept % dim).to(table.columns.dtype))
        counts = torch.bincount(kept // dim, minlength=rows)  # (rows,)
        table.offsets[1:] = torch.cumsum(counts, 0).to(torch.int32)
        return table

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)  # (N,)
        starts, ends = self.offsets[flat].long(), self.offsets[flat + 1].long()  # (N,), (N,)
        counts = ends - starts  # (N,)
        which = torch.repeat_interleave(torch.arange(len(flat), device=ids.device), counts)  # (M,)
        within = torch.arange(len(which), device=ids.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        positions = starts[which] + within  # (M,) into values
        out = self.values.new_zeros(len(flat), self.dim)  # (N, d)
        out[which, self.columns[positions].long()] = self.values[positions]
        return out.reshape(*ids.shape, self.dim)  # (..., d)

    def num_bytes(self) -> int:
        return len(self.values) * (FLOAT_BYTES + self.columns.element_size()) + (self.rows + 1) * 4


def compressed_table(table: TableInput, dim: int, init_std: float) -> EmbeddingTable:
    """The module a table outside the collection trains as: its compression, or a standalone dense
    table (one to be quantized when published)."""
    if table.compression is None:
        standalone = StandaloneTable(table.num_embeddings, dim)
        nn.init.normal_(standalone.weight, std=init_std)
        return standalone
    method = table.compression.method
    if method == "qr":
        return QRTable(table.num_embeddings, dim, table.compression.buckets, init_std)
    if method == "mixed_dim":
        return MixedDimTable(table.num_embeddings, dim, table.compression.blocks, init_std)
    if method == "matryoshka":
        c = table.compression
        return MatryoshkaTable(table.num_embeddings, dim, c.dims, c.serve_dim, init_std)
    if method == "prune":
        if dim == 1:  # first-order weights: a sparse one-value row would weigh more than it does dense
            return compressed_table(dataclasses.replace(table, compression=None), dim, init_std)
        c = table.compression
        return PrunedTable(table.num_embeddings, dim, c.keep, c.ramp_steps or DEFAULT_RAMP_STEPS, init_std)
    raise ValueError(f"table {table.name!r}: unknown compression method {method!r}")
