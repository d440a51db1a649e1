"""Field embeddings on TorchRec: one EmbeddingBagCollection for every id feature of the spec."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

from muxrec.models.batch import Batch
from muxrec.models.layers.tables import (QUANTIZED_BITS, DenseTable, EmbeddingTable, MatryoshkaTable, PrefixTable,
                                         PrunedTable, QuantizedTable, SparseTable, StandaloneTable, compressed_table)
from muxrec.spec import ModelInputs

_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}


class FeatureEmbedding(nn.Module):
    """Embeds every field of a row into a (B, F, D) tensor.

    Id features (categorical, multi-valued, text) are looked up in a TorchRec
    `EmbeddingBagCollection`; several features may read one table (the spec's `table:`), which is
    how per-feature vs shared tables becomes a config change. Multi-valued bags are pooled.
    Each numeric feature scales a learned D-vector (x * v), so it is a field like the others.
    A sequence feature (a behaviour history) is a field too, the mean of its positions' vectors;
    `sequence()` gives the positions themselves for target attention (DIN). It reads its table row by
    row, sharing the weights with the pooled features of that table (item_id and the history).

    A compressed table (the spec's `compression`, e.g. quotient-remainder) is an `EmbeddingTable`
    module of its own, outside the collection; its features are pooled here. Every table, dense or
    not, is read through `table(name)` (models/layers/tables.py), never as a raw weight matrix.

    A content feature (text or an image read by a shared, pinned encoder) arrives as its encoder's vector
    (batch.content) and a learned linear map (its width -> D, one per feature) makes it a field; the encoder
    itself is not part of the model (it is trained once and shared, see muxrec.models.encoders.content).

    A table whose spec sets its own `embedding_dim` d (e.g. a small d for a large vocabulary) is stored
    d wide, and a learned linear map (d -> D, one per such table) brings its features to the model's
    width, so every field is still D wide for the layers above.

    Args:
        inputs: the model-input view of the feature spec.
        dim: D, the model's embedding size: of every field, and of every table without its own dim.
        init_std: std of the normal initialisation (small: interactions start near zero).
        table_dims: honour the tables' own dims; False makes every table D wide (first-order weights).
        device: where the EmbeddingBagCollection's tables are created (None: TorchRec's default).

    Example::

        >>> emb = FeatureEmbedding(inputs, dim=16)
        >>> emb(batch).shape      # (B, F, D)
        torch.Size([256, 8, 16])
    """

    def __init__(self, inputs: ModelInputs, dim: int, init_std: float = 1e-4, table_dims: bool = True,
                 device: torch.device | None = None):
        super().__init__()
        self.inputs = inputs
        self.dim = dim
        own = {t.name: t.embedding_dim for t in inputs.tables
               if table_dims and t.embedding_dim is not None and t.embedding_dim != dim}
        pooled_tables = [t for t in inputs.tables if t.feature_names and not t.standalone]
        self.bags = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(name=t.name, embedding_dim=own.get(t.name, dim), num_embeddings=t.num_embeddings,
                                   feature_names=list(t.feature_names), pooling=_POOLING[t.pooling])
                for t in pooled_tables
            ],
            device=device,  # None: TorchRec's default (CPU); "meta" for a sharding planner
        )
        # Tables read only by sequence features have no bag to live in.
        self.sequence_only = nn.ModuleDict({
            t.name: nn.Embedding(t.num_embeddings, own.get(t.name, dim))
            for t in inputs.tables if not t.feature_names and not t.standalone
        })
        self.compressed = nn.ModuleDict({t.name: compressed_table(t, own.get(t.name, dim), init_std)
                                         for t in inputs.tables if t.standalone})
        self._compressed_features = [f for t in inputs.tables if t.standalone for f in t.feature_names]
        self._pooling = {f: t.pooling for t in inputs.tables for f in t.feature_names}
        self.projections = nn.ModuleDict({name: nn.Linear(d, dim, bias=False) for name, d in own.items()})
        self.numeric = nn.Parameter(torch.empty(len(inputs.numeric), dim))  # (N, D)
        self.content = nn.ModuleDict({name: nn.Linear(width, dim) for name, width in inputs.content.items()})
        self._field_index = {name: i for i, name in enumerate(inputs.fields)}
        for table in self.tables().values():
            if isinstance(table, DenseTable):  # a table outside the collection initialises itself
                nn.init.normal_(table.weight, std=init_std)
        nn.init.normal_(self.numeric, std=init_std)

    @property
    def num_fields(self) -> int:
        return self.inputs.num_fields

    def tables(self) -> dict[str, EmbeddingTable]:
        """Table name -> the table (ids -> d-wide vectors, d its own dim, else D), dense or compressed."""
        views = {name: DenseTable(bag.weight, bag.sparse) for name, bag in self.bags.embedding_bags.items()}
        views.update({name: DenseTable(emb.weight, emb.sparse) for name, emb in self.sequence_only.items()})
        views.update(self.compressed.items())
        return views

    def table(self, name: str) -> EmbeddingTable:
        if name in self.compressed:
            return self.compressed[name]
        owner = self.sequence_only[name] if name in self.sequence_only else self.bags.embedding_bags[name]
        return DenseTable(owner.weight, owner.sparse)

    def for_serving(self, empty: bool = False) -> dict[str, str]:
        """Swap each table the spec stores otherwise when published for its serving form: a row-wise
        QuantizedTable (`quantize`), a PrefixTable of a Matryoshka table's first serve_dim values, or the
        SparseTable of a pruned table's kept values.
        `empty`: the right shapes, zeros, for loading a published version's weights into. Tables one
        value wide (first-order weights) stay as they are. Returns table -> "int8" / "int4" /
        "prefix:<k>" / "prune:<keep>" for every table now in its serving form."""
        done = {}
        for t in self.inputs.tables:
            table = self.compressed[t.name] if t.name in self.compressed else None
            if not t.changes_for_serving or table.dim == 1:
                continue
            if t.quantize is not None:
                done[t.name] = t.quantize
                if not isinstance(table, QuantizedTable):
                    bits = QUANTIZED_BITS[t.quantize]
                    self.compressed[t.name] = QuantizedTable(table.rows, table.dim, bits) if empty \
                        else QuantizedTable.from_float(table.weight, bits)
            elif isinstance(table, (PrunedTable, SparseTable)):
                done[t.name] = f"prune:{t.compression.keep:g}"
                if isinstance(table, PrunedTable):
                    self.compressed[t.name] = SparseTable(table.rows, table.dim, table.keep) if empty else table.sparse()
            elif isinstance(table, (MatryoshkaTable, PrefixTable)) and min(t.compression.serve_dim, table.dim) < table.dim:
                keep = min(t.compression.serve_dim, table.dim)
                done[t.name] = f"prefix:{keep}"
                if isinstance(table, MatryoshkaTable):
                    self.compressed[t.name] = PrefixTable(table.rows, table.dim, keep) if empty else table.cut()
        return done

    def table_weights(self) -> dict[str, nn.Parameter]:
        """Dense table name -> its (rows, d) weight (a compressed table has none: read it by `table`)."""
        return {name: t.weight for name, t in self.tables().items() if isinstance(t, (DenseTable, StandaloneTable))}

    def num_bytes(self) -> int:
        """Bytes of every table, by each method's formula (numeric feature vectors and projections aside)."""
        return sum(t.num_bytes() for t in self.tables().values())

    def lookup(self, feature: str, ids: Tensor) -> Tensor:
        """Feature `feature`'s vectors at its table's width d: ids (N,), or (N, k) for k slots, summed.

        What the Embedder serves for an entity's ids (encoded by the vocabulary for this feature)."""
        vectors = self.table(self.inputs.table_of[feature])(ids)  # (N, [k,] d)
        return vectors if ids.dim() == 1 else vectors.sum(dim=1)  # (N, d)

    def forward(self, batch: Batch) -> Tensor:
        return self.fields_and_sequences(batch)[0]  # (B, F, D)

    def fields_and_sequences(self, batch: Batch) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
        """The (B, F, D) fields, and each sequence feature's positions (B, L, D) and mask (B, L).

        A model that attends over a history (DIN) reads both; getting them from one call looks each
        history up once (its mean field and its positions share the vectors and their gradient).
        """
        columns: dict[str, Tensor] = {}
        sequences: dict[str, tuple[Tensor, Tensor]] = {}
        if self.inputs.pooled:
            sparse = batch.sparse
            if self._compressed_features:  # their keys come last (ModelInputs.pooled)
                n = len(self._compressed_features)
                sparse, rest = sparse.split([len(self.inputs.pooled) - n, n])
                columns.update({name: self._to_width(name, self._pool(name, rest[name].values(), rest[name].lengths()))
                                for name in self._compressed_features})  # name -> (B, D)
            if sparse.keys():
                pooled = self.bags(sparse).to_dict()  # name -> (B, d), d its table's width
                columns.update({name: self._to_width(name, v) for name, v in pooled.items()})  # name -> (B, D)
        if self.inputs.numeric:
            scaled = batch.dense[:, :, None] * self.numeric[None]  # (B, N, D)
            columns.update({name: scaled[:, i] for i, name in enumerate(self.inputs.numeric)})
        start = 0
        for name, width in self.inputs.content.items():
            columns[name] = self.content[name](batch.content[:, start:start + width])  # (B, D)
            start += width
        for name in self.inputs.sequences:
            vectors, mask = sequences[name] = self.sequence(batch, name)  # (B, L, D), (B, L)
            weights = mask.to(vectors.dtype)[:, None, :]  # (B, 1, L)
            total = torch.bmm(weights, vectors).squeeze(1)  # (B, D): padded positions add exact zeros
            columns[name] = total / weights.sum(dim=2).clamp(min=1)  # (B, D); empty history -> 0
        return torch.stack([columns[name] for name in self.inputs.fields], dim=1), sequences  # (B, F, D)

    def sequence(self, batch: Batch, name: str) -> tuple[Tensor, Tensor]:
        """A sequence feature's per-position embeddings (B, L, D) and mask (B, L)."""
        ids, lengths = batch.sequences[name]  # (B, L), (B,)
        mask = torch.arange(ids.shape[1], device=ids.device) < lengths[:, None]  # (B, L)
        return self._to_width(name, self.table(self.inputs.table_of[name])(ids)), mask  # (B, L, D), (B, L)

    def _pool(self, name: str, values: Tensor, lengths: Tensor) -> Tensor:
        """A compressed table's bags: (M,) ids in (B,) bags -> (B, d), summed or averaged as its table says."""
        vectors = self.table(self.inputs.table_of[name])(values)  # (M, d)
        bag = torch.repeat_interleave(torch.arange(len(lengths), device=values.device), lengths)  # (M,)
        total = vectors.new_zeros(len(lengths), vectors.shape[1]).index_add_(0, bag, vectors)  # (B, d)
        if self._pooling[name] == "mean":
            total = total / lengths.clamp(min=1)[:, None].to(total.dtype)
        return total  # (B, d)

    def _to_width(self, name: str, vectors: Tensor) -> Tensor:
        """Feature `name`'s vectors (..., d) from its table, at the model's width (..., D)."""
        table = self.inputs.table_of[name]
        return self.projections[table](vectors) if table in self.projections else vectors  # (..., D)
