"""Raw rows -> model-ready columns, driven entirely by the FeatureSpec.

Three steps, each a pure function over Arrow tables so that Ray Data can run them per block:

  derive(raw, spec)          raw source columns -> one typed column per feature, labels, split
  count_values / moments     per-block statistics; Vocabulary.fit merges them (train rows only)
  encode(derived, spec, v)   typed values -> int64 ids / list<int64> ids / float32

Id 0 of every table is the out-of-vocabulary (and missing) bucket, so unknown categories at serving
time are never an error. The serving gateway runs derive + encode on request rows: the encoding a
model sees online is the one it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from muxrec.errors import DataError
from muxrec.spec import FeatureKind, FeatureSpec, LIST_KINDS

SPLIT_COLUMN = "__split"
SPLITS = ("train", "valid", "test")
OOV_ID = 0
_TOKEN_PATTERN = r"[^a-z0-9]+"


# ---- derive ------------------------------------------------------------------------------------


def _require_columns(table: pa.Table, columns: Iterable[str], what: str) -> None:
    missing = sorted({c for c in columns if c not in table.column_names})
    if missing:
        raise DataError(f"{what}: missing column(s) {missing}; the input has {table.column_names}")


def _as_string(arr: pa.ChunkedArray | pa.Array, feature: str) -> pa.Array:
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if pa.types.is_floating(arr.type):
        present = arr.drop_null().to_numpy(zero_copy_only=False)
        if not np.isfinite(present).all():
            raise DataError(f"feature {feature!r}: NaN/inf is not a category value")
        # 3.0 -> "3": categories some writers store as floats must match their integer form.
        if (present == np.round(present)).all():
            arr = pc.cast(arr, pa.int64())
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        try:
            arr = pc.cast(arr, pa.string())
        except pa.ArrowInvalid as err:
            raise DataError(f"feature {feature!r}: cannot read {arr.type} values as categories ({err})") from None
    return pc.cast(arr, pa.string())


def _fill_empty(arr: pa.Array, fill: str | float | None) -> pa.Array:
    if fill is None:
        return arr
    fill = str(fill)
    arr = pc.if_else(pc.equal(arr, ""), pa.scalar(fill), arr)
    return pc.fill_null(arr, fill)


def _list_of_strings(arr: pa.ChunkedArray | pa.Array, feature: str, separator: str | None) -> pa.Array:
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        if separator is None:
            raise DataError(f"feature {feature!r}: got a string column, expected a list (or set `separator`)")
        arr = pc.split_pattern(arr, separator)
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise DataError(f"feature {feature!r}: expected a list column, got {arr.type}")
    lengths = pc.fill_null(pc.list_value_length(arr), 0)
    values = _as_string(pc.list_flatten(arr), feature)
    offsets = np.concatenate([[0], np.cumsum(lengths.to_numpy(zero_copy_only=False))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _drop_empty_strings(arr: pa.ListArray) -> pa.ListArray:
    values = pc.list_flatten(arr)
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
    keep = pc.not_equal(values, "").to_numpy(zero_copy_only=False)
    counts = np.bincount(parents[keep], minlength=len(arr)) if len(parents) else np.zeros(len(arr), np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.filter(pa.array(keep)))


def _numeric(arr: pa.ChunkedArray | pa.Array, feature: str, fill: float | None) -> pa.Array:
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    try:
        values = pc.cast(arr, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"feature {feature!r}: expected numbers, got {arr.type}") from None
    if values.null_count:
        if fill is None:
            row = pc.index(pc.is_null(values), True).as_py()
            raise DataError(f"feature {feature!r}: {values.null_count} missing value(s), first at row {row}; "
                            "declare `fill` in the spec to impute them")
        values = pc.fill_null(values, float(fill))
    np_values = values.to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(np_values)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"feature {feature!r}: {int(bad.sum())} NaN/inf value(s), first at row {row} "
                        f"({np_values[row]}); numeric inputs must be finite")
    return values


def _labels(table: pa.Table, spec: FeatureSpec) -> dict[str, pa.Array]:
    out = {}
    for label in spec.labels:
        raw = table.column(label.source)
        values = _numeric(raw, f"label {label.name}", None)
        if label.threshold is not None:
            for grade, column in zip(label.grades, label.grade_columns):
                out[column] = pc.cast(pc.greater_equal(values, grade), pa.float32())
            values = pc.cast(pc.greater_equal(values, label.threshold), pa.float32())
        else:
            arr = values.to_numpy(zero_copy_only=False)
            if not np.isin(arr, (0.0, 1.0)).all():
                raise DataError(f"label {label.name!r}: source {label.source!r} must hold 0/1 "
                                "(or declare a `threshold`)")
            values = pc.cast(values, pa.float32())
        out[label.name] = values
    return out


def split_of(table: pa.Table, spec: FeatureSpec) -> pa.Array:
    """train / valid / test per row, by the spec's deterministic hash rule."""
    _require_columns(table, spec.split.hash, "split")
    h = np.zeros(table.num_rows, dtype=np.int64)
    for column, multiplier in spec.split.hash.items():
        col = table.column(column)
        if not pa.types.is_integer(col.type):
            raise DataError(f"split column {column!r} must be integer, got {col.type}")
        h += col.to_numpy().astype(np.int64) * multiplier
    bucket = h % spec.split.buckets
    names = np.full(table.num_rows, "train", dtype=object)
    names[np.isin(bucket, spec.split.valid)] = "valid"
    names[np.isin(bucket, spec.split.test)] = "test"
    return pa.array(names, pa.string())


def derive(table: pa.Table, spec: FeatureSpec, *, labels: bool = True, split: bool = True) -> pa.Table:
    """Raw source columns -> one typed column per feature (+ labels, + split).

    Categorical values become strings, list kinds list<string> (truncated to max_len), numeric
    float64 (NaN / inf rejected). Key columns (spec.keys) are carried along as strings.
    """
    sources = [f.column for f in spec.features if not (f.kind == FeatureKind.SEQUENCE and f.history)]
    sources += [f.name for f in spec.features if f.kind == FeatureKind.SEQUENCE and f.history]
    _require_columns(table, sources, f"spec {spec.name!r}")
    if labels:
        _require_columns(table, [lab.source for lab in spec.labels], "labels")
    columns: dict[str, pa.Array] = {}
    for f in spec.features:
        raw = table.column(f.name if f.history else f.column)
        if f.kind == FeatureKind.CATEGORICAL:
            values = _as_string(raw, f.name)
            if f.slice is not None:
                start, stop = f.slice
                values = pc.utf8_slice_codeunits(values, start if start is not None else 0,
                                                 stop if stop is not None else 2**31 - 1)
            columns[f.name] = _fill_empty(values, f.fill)
        elif f.kind == FeatureKind.TEXT:
            text = pc.fill_null(_as_string(raw, f.name), "" if f.fill is None else str(f.fill))
            tokens = pc.split_pattern_regex(pc.utf8_lower(text), _TOKEN_PATTERN)
            columns[f.name] = pc.list_slice(_drop_empty_strings(tokens), 0, f.max_len)
        elif f.kind in LIST_KINDS:
            values = _list_of_strings(raw, f.name, f.separator)
            columns[f.name] = pc.list_slice(values, 0, f.max_len)
        else:
            columns[f.name] = _numeric(raw, f.name, f.fill)
    for role, column in spec.keys.items():
        if column in table.column_names:
            columns[f"__key_{role}"] = _as_string(table.column(column), column)
    if labels:
        columns.update(_labels(table, spec))
    if split:
        columns[SPLIT_COLUMN] = split_of(table, spec)
    return pa.table(columns)


# ---- vocabulary --------------------------------------------------------------------------------


def _stable_hash(values: pa.Array, buckets: int) -> np.ndarray:
    """1 + blake2b(value) % buckets, identical in every process (unlike Python's hash())."""
    uniques = pc.unique(values)
    codes = np.array(
        [OOV_ID if v is None else 1 + int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little") % buckets
         for v in uniques.to_pylist()],
        dtype=np.int64,
    )
    position = pc.index_in(values, value_set=uniques).to_numpy(zero_copy_only=False)
    return codes[position] if len(codes) else np.zeros(len(values), np.int64)


@dataclass
class TableVocab:
    """Ids of one embedding table: a fitted vocabulary (id = rank + 1) or hashing into buckets.

    The values are one Arrow string array (compact: millions of ids cost their bytes, not a Python
    object each).
    """

    name: str
    values: pa.Array | list[str] | None = None
    hash_buckets: int | None = None

    def __post_init__(self) -> None:
        if self.values is not None and not isinstance(self.values, pa.Array):
            self.values = pa.array(self.values, pa.string())

    @property
    def num_embeddings(self) -> int:
        return 1 + (self.hash_buckets if self.hash_buckets is not None else len(self.values or ()))

    def ids(self, values: pa.Array) -> np.ndarray:
        """String values -> int64 ids; unknown and missing values -> OOV_ID."""
        if self.hash_buckets is not None:
            return _stable_hash(values, self.hash_buckets)
        if len(self.values) <= 4 * len(values):
            position = pc.index_in(values, value_set=self.values)
            return pc.fill_null(pc.add(position, 1), OOV_ID).to_numpy(zero_copy_only=False).astype(np.int64)
        # A large vocabulary: hash this block's few distinct values and probe the vocabulary with them,
        # instead of hashing millions of vocabulary values for every block.
        uniques = pc.unique(values)
        found = pc.index_in(self.values, value_set=uniques)  # (V,) position in uniques or null
        in_vocab = np.flatnonzero(pc.is_valid(found).to_numpy(zero_copy_only=False))
        id_of_unique = np.full(len(uniques), OOV_ID, dtype=np.int64)
        id_of_unique[found.to_numpy(zero_copy_only=False)[in_vocab].astype(np.int64)] = in_vocab + 1
        return id_of_unique[pc.index_in(values, value_set=uniques).to_numpy(zero_copy_only=False)]


@dataclass(frozen=True)
class NumericStats:
    count: int
    mean: float
    std: float
    min: float
    max: float

    def normalize(self, values: np.ndarray, how: str) -> np.ndarray:
        if how == "standard":
            return (values - self.mean) / (self.std if self.std > 0 else 1.0)
        if how == "minmax":
            span = self.max - self.min
            return (values - self.min) / (span if span > 0 else 1.0)
        return values


def count_values(derived: pa.Table, spec: FeatureSpec) -> pa.Table:
    """Per-block value counts for every vocabulary table (hashed tables need none)."""
    schema = pa.schema([("table", pa.string()), ("value", pa.string()), ("count", pa.int64())])
    parts_out = [schema.empty_table()]
    for table in spec.tables_list():
        if table.hash_buckets is not None:
            continue
        parts = []
        for name in table.features:
            col = derived.column(name).combine_chunks()
            parts.append(pc.list_flatten(col) if pa.types.is_list(col.type) else col)
        merged = pa.concat_arrays([p.cast(pa.string()) for p in parts]).drop_null()
        vc = pc.value_counts(merged)
        parts_out.append(pa.table([pa.array([table.name] * len(vc), pa.string()), vc.field("values"),
                                   vc.field("counts")], schema=schema))
    return pa.concat_tables(parts_out)


def moments(derived: pa.Table, spec: FeatureSpec) -> pa.Table:
    """Per-block count / sum / sum of squares / min / max of every numeric feature."""
    rows = []
    for f in spec.of_kind(FeatureKind.NUMERIC):
        x = derived.column(f.name).to_numpy().astype(np.float64)
        if len(x) == 0:
            continue
        rows.append({"feature": f.name, "count": len(x), "sum": float(x.sum()), "sumsq": float((x * x).sum()),
                     "min": float(x.min()), "max": float(x.max())})
    schema = pa.schema([("feature", pa.string()), ("count", pa.int64()), ("sum", pa.float64()),
                        ("sumsq", pa.float64()), ("min", pa.float64()), ("max", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


@dataclass
class Vocabulary:
    """Everything fitted on the train split: table vocabularies and numeric statistics."""

    spec_fingerprint: str
    tables: dict[str, TableVocab]
    numeric: dict[str, NumericStats]

    @classmethod
    def fit(cls, spec: FeatureSpec, counts: pa.Table, stats: pa.Table) -> Vocabulary:
        """Merge per-block statistics (from count_values / moments over train rows)."""
        counts = counts.group_by(["table", "value"]).aggregate([("count", "sum")])
        tables = {}
        for table in spec.tables_list():
            if table.hash_buckets is not None:
                tables[table.name] = TableVocab(table.name, hash_buckets=table.hash_buckets)
                continue
            mine = counts.filter(pc.and_(pc.equal(counts["table"], table.name),
                                         pc.greater_equal(counts["count_sum"], table.min_count)))
            # Most frequent first, ties by value: deterministic ids for the same data.
            mine = mine.sort_by([("count_sum", "descending"), ("value", "ascending")])
            tables[table.name] = TableVocab(table.name, values=mine["value"].combine_chunks())
        numeric = {}
        stats = stats.group_by("feature").aggregate(
            [("count", "sum"), ("sum", "sum"), ("sumsq", "sum"), ("min", "min"), ("max", "max")])
        by_name = {r["feature"]: r for r in stats.to_pylist()}
        for f in spec.of_kind(FeatureKind.NUMERIC):
            r = by_name.get(f.name)
            if r is None or r["count_sum"] == 0:
                raise DataError(f"feature {f.name!r}: no training rows to fit normalisation on")
            n = r["count_sum"]
            mean = r["sum_sum"] / n
            var = max(r["sumsq_sum"] / n - mean * mean, 0.0)
            numeric[f.name] = NumericStats(n, mean, math.sqrt(var), r["min_min"], r["max_max"])
        return cls(spec.fingerprint(), tables, numeric)

    def to_json(self) -> str:
        return json.dumps({
            "spec_fingerprint": self.spec_fingerprint,
            "tables": {n: {"values": None if t.values is None else t.values.to_pylist(), "hash_buckets": t.hash_buckets}
                       for n, t in self.tables.items()},
            "numeric": {n: vars(s) for n, s in self.numeric.items()},
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        data = json.loads(text)
        tables = {n: TableVocab(n, values=t["values"], hash_buckets=t["hash_buckets"])
                  for n, t in data["tables"].items()}
        numeric = {n: NumericStats(**s) for n, s in data["numeric"].items()}
        return cls(data["spec_fingerprint"], tables, numeric)

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        return cls.from_json(Path(path).read_text())

    def num_embeddings(self) -> dict[str, int]:
        return {name: t.num_embeddings for name, t in self.tables.items()}


# ---- encode ------------------------------------------------------------------------------------


def encode(derived: pa.Table, spec: FeatureSpec, vocab: Vocabulary) -> pa.Table:
    """Typed feature values -> ids and normalised floats. Labels, keys and split pass through."""
    if vocab.spec_fingerprint != spec.fingerprint():
        raise DataError("the vocabulary was fitted for another version of the feature spec; re-run prepare")
    columns: dict[str, pa.Array] = {}
    for f in spec.features:
        col = derived.column(f.name).combine_chunks()
        if f.kind == FeatureKind.NUMERIC:
            x = col.to_numpy(zero_copy_only=False).astype(np.float64)
            columns[f.name] = pa.array(vocab.numeric[f.name].normalize(x, f.normalize).astype(np.float32))
            continue
        table = vocab.tables[f.table_name]
        if f.kind in LIST_KINDS:
            lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            ids = table.ids(pc.list_flatten(col))
            columns[f.name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.int64()))
        else:
            columns[f.name] = pa.array(table.ids(col), pa.int64())
    passthrough = [c for c in derived.column_names
                   if c in spec.label_columns or c == SPLIT_COLUMN or c.startswith("__key_")]
    for c in passthrough:
        columns[c] = derived.column(c)
    return pa.table(columns)
