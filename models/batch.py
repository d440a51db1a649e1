"""The model input contract: a `Batch` of tensors keyed by feature name.

`EncodedRows` holds encoded rows (from Arrow) as padded tensors and cuts them into batches: the
trainer and the evaluator build batches through it. Batch scoring and the serving Ranker encode
straight to numpy columns and build each batch from those (`array_batches`), without the padded
matrix; tests hold the two to the same tensors for the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor
from torchrec import KeyedJaggedTensor

from muxrec.encoding import content_matrix
from muxrec.spec import ModelInputs


@dataclass
class Batch:
    """One batch of model inputs.

    sparse:     pooled id features, keys = ModelInputs.pooled (one bag per row and key)
    dense:      (B, N) normalised numeric features, N = len(ModelInputs.numeric)
    sequences:  name -> (B, L) ids padded with 0, and (B,) lengths
    labels:     (B, T + G) float 0/1 (the tasks, then their grade columns), or None at inference
    content:    (B, C) content features' encoder vectors side by side (ModelInputs.content gives each
                one's width, in order), or None when the spec has none
    """

    sparse: KeyedJaggedTensor
    dense: Tensor
    sequences: dict[str, tuple[Tensor, Tensor]]
    labels: Tensor | None = None
    content: Tensor | None = None

    def __len__(self) -> int:
        return self.dense.shape[0]


def _padded(column: pa.ChunkedArray | pa.Array, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """A list<int64> column -> (N, max_len) ids padded with 0, and (N,) lengths."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = np.minimum(lengths, max_len)
    values = pc.list_flatten(pc.list_slice(column, 0, max_len)).to_numpy(zero_copy_only=False)
    ids = np.zeros((len(column), max_len), dtype=np.int64)
    rows = np.repeat(np.arange(len(column)), lengths)
    cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ids[rows, cols] = values
    return ids, lengths


def _padded_arrays(offsets: np.ndarray, values: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """_padded for a list column given as (offsets (N+1,), values (M,)) numpy arrays."""
    lengths = np.minimum(np.diff(offsets).astype(np.int64), max_len)  # (N,)
    ids = np.zeros((len(lengths), max_len), dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ids[rows, cols] = values[np.repeat(offsets[:-1].astype(np.int64), lengths) + cols]
    return ids, lengths


def _ids(table: pa.Table, name: str, max_len: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A feature column as numpy: (N,) values, or for a list column (N, max_len) padded ids and (N,) lengths."""
    col = table.column(name)
    if pa.types.is_list(col.type):
        return _padded(col, max_len)
    return col.to_numpy(), None


class EncodedRows:
    """Encoded rows held as tensors; `take(rows)` builds a Batch, `batches()` iterates them.

    From an encoded Arrow table (muxrec.encoding.encode). Rows encoded to numpy for scoring
    (muxrec.encoding.encode_arrays) go through `array_batches` instead."""

    def __init__(self, table: pa.Table, inputs: ModelInputs, with_labels: bool = True):
        missing = [c for c in (*inputs.pooled, *inputs.numeric, *inputs.sequences, *inputs.content)
                   if c not in table.column_names]
        if missing:
            raise ValueError(f"encoded rows lack feature column(s) {missing}")
        self.inputs = inputs
        self.num_rows = table.num_rows
        # All pooled ids side by side in one (N, W) tensor, so a batch is one gather: a single-valued
        # feature is one column, a multi-valued one L padded columns plus (N,) lengths.
        columns: list[np.ndarray] = []
        self._pooled: list[tuple[int, int, Tensor | None]] = []  # (first column, width, lengths or None)
        width = 0
        for name in inputs.pooled:
            ids, lengths = _ids(table, name, inputs.max_len.get(name))
            if lengths is not None:
                self._pooled.append((width, ids.shape[1], torch.from_numpy(lengths)))
            else:
                ids = ids.astype(np.int64, copy=False).reshape(-1, 1)
                self._pooled.append((width, 1, None))
            columns.append(ids)
            width += ids.shape[1]
        self._ids = torch.from_numpy(np.concatenate(columns, axis=1) if columns
                                     else np.zeros((self.num_rows, 0), np.int64))  # (N, W)
        self._sequences = {}
        for name in inputs.sequences:
            ids, lengths = _ids(table, name, inputs.max_len[name])
            self._sequences[name] = (torch.from_numpy(ids), torch.from_numpy(lengths))
        dense = [_ids(table, n, None)[0].astype(np.float32, copy=False) for n in inputs.numeric]
        self._dense = torch.from_numpy(np.stack(dense, axis=1) if dense else np.zeros((self.num_rows, 0), np.float32))
        self._content = None
        if inputs.content:
            vectors = [content_matrix(table.column(n), d, n) for n, d in inputs.content.items()]
            self._content = torch.from_numpy(np.concatenate(vectors, axis=1).astype(np.float32, copy=False))  # (N, C)
        self._labels = None
        if with_labels:
            absent = [t for t in inputs.label_columns if t not in table.column_names]
            if absent:
                raise ValueError(f"encoded rows lack label column(s) {absent}")
            labels = [table.column(t).to_numpy().astype(np.float32) for t in inputs.label_columns]
            self._labels = torch.from_numpy(np.stack(labels, axis=1))  # (N, tasks + grade columns)

    def __len__(self) -> int:
        return self.num_rows

    @property
    def labels(self) -> Tensor | None:
        return self._labels

    def ids(self, name: str) -> Tensor:
        """(N,) ids of single-valued pooled feature `name`, every row."""
        start, width, lengths = self._pooled[self.inputs.pooled.index(name)]
        if lengths is not None:
            raise ValueError(f"feature {name!r} holds several ids per row")
        return self._ids[:, start]  # (N,)

    def take(self, rows: Tensor) -> Batch:
        """The Batch of these (B,) row indices; pooled ids go into the KeyedJaggedTensor key by key."""
        wide = self._ids[rows]  # (B, W)
        ones = torch.ones(len(rows), dtype=torch.int64)
        values, lengths = [], []
        for start, width, lens in self._pooled:
            if lens is None:  # single-valued: every row has exactly one id
                values.append(wide[:, start])  # (B,)
                lengths.append(ones)
                continue
            ids, lens = wide[:, start:start + width], lens[rows]  # (B, L), (B,)
            mask = torch.arange(width) < lens[:, None]  # (B, L)
            values.append(ids[mask])
            lengths.append(lens)
        sparse = KeyedJaggedTensor(
            keys=list(self.inputs.pooled),
            values=torch.cat(values) if values else torch.zeros(0, dtype=torch.int64),
            lengths=torch.cat(lengths) if lengths else torch.zeros(0, dtype=torch.int64),
        )
        sequences = {n: (ids[rows], lens[rows]) for n, (ids, lens) in self._sequences.items()}
        labels = self._labels[rows] if self._labels is not None else None
        content = self._content[rows] if self._content is not None else None
        return Batch(sparse, self._dense[rows], sequences, labels, content)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Consecutive batches; shuffled when a generator is given."""
        order = torch.randperm(self.num_rows, generator=generator) if generator is not None else torch.arange(self.num_rows)
        for start in range(0, self.num_rows, batch_size):
            yield self.take(order[start:start + batch_size])


def array_batches(arrays: dict, inputs: ModelInputs, batch_size: int) -> Iterator[Batch]:
    """Consecutive Batches (no labels) straight from `muxrec.encoding.encode_arrays`' numpy columns: the
    Batch `EncodedRows(encode(...)).take` builds for the same rows, without the Arrow table, the (N, W)
    matrix and the gather in between (the Ranker's and batch scoring's path; tested equal)."""
    missing = [c for c in (*inputs.pooled, *inputs.numeric, *inputs.sequences, *inputs.content) if c not in arrays]
    if missing:
        raise ValueError(f"encoded arrays lack feature column(s) {missing}")
    first = next(iter(arrays.values()), np.zeros(0))
    num_rows = len(first[0]) - 1 if isinstance(first, tuple) else len(first)
    for start in range(0, num_rows, batch_size):
        yield _array_batch(arrays, inputs, start, min(start + batch_size, num_rows))


def _array_batch(arrays: dict, inputs: ModelInputs, start: int, stop: int) -> Batch:
    rows = stop - start
    values, lengths = [], []
    for name in inputs.pooled:
        value = arrays[name]
        if not isinstance(value, tuple):  # single-valued: one id per row
            values.append(value[start:stop])
            lengths.append(np.ones(rows, np.int64))
            continue
        offsets, ids = value[0][start:stop + 1].astype(np.int64), value[1]
        lens = np.diff(offsets)  # (B,)
        max_len = inputs.max_len.get(name)
        if max_len is not None and rows and lens.max() > max_len:  # keep each row's first max_len ids
            ids, offsets = _truncated(offsets, ids, max_len)
            lens = np.diff(offsets)
        values.append(ids[offsets[0]:offsets[-1]])
        lengths.append(lens)
    sparse = KeyedJaggedTensor(
        keys=list(inputs.pooled),
        values=torch.from_numpy(np.concatenate(values).astype(np.int64, copy=False)) if values
        else torch.zeros(0, dtype=torch.int64),
        lengths=torch.from_numpy(np.concatenate(lengths)) if lengths else torch.zeros(0, dtype=torch.int64),
    )
    sequences = {}
    for name in inputs.sequences:
        offsets, ids = arrays[name]
        offsets = offsets[start:stop + 1].astype(np.int64)
        padded, lens = _padded_arrays(offsets, ids, inputs.max_len[name])
        sequences[name] = (torch.from_numpy(padded), torch.from_numpy(lens))
    dense = [arrays[n][start:stop].astype(np.float32, copy=False) for n in inputs.numeric]
    content = [arrays[n][start:stop] for n in inputs.content]
    return Batch(
        sparse,
        torch.from_numpy(np.stack(dense, axis=1) if dense else np.zeros((rows, 0), np.float32)),
        sequences,
        None,
        torch.from_numpy(np.concatenate(content, axis=1).astype(np.float32, copy=False)) if content else None,
    )


def _truncated(offsets: np.ndarray, ids: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, offsets) of each row's first max_len ids, the ids gathered from 0."""
    lens = np.minimum(np.diff(offsets), max_len)
    kept = np.concatenate([[0], np.cumsum(lens)])
    within = np.arange(kept[-1]) - np.repeat(kept[:-1], lens)  # position inside its row
    return ids[np.repeat(offsets[:-1], lens) + within], kept
