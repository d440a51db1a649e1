"""Raw rows -> model-ready columns, driven entirely by the FeatureSpec.

Three steps, each a pure function over Arrow tables so that Ray Data can run them per block:

  derive(raw, spec)          raw source columns -> one typed column per feature, labels, split
  count_values / moments /   per-block statistics (partials); Vocabulary.fit merges them (train
  quantile_sketch            rows only; merge_sketches folds sketches pairwise, for aggregations)
  attach_content(derived, …) content features (text with an encoder, image): their strings (text, an
                             image path) replaced by the encoder's vectors, computed by the caller
                             (muxrec.models.encoders.ContentVectors offline, the gateway's cache online)
  encode(derived, spec, v)   typed values -> int64 ids / list<int64> ids / float32 (vectors as they are)

Id 0 of every table is the out-of-vocabulary (and missing) bucket, so unknown categories at serving
time are never an error. The serving gateway runs derive + encode on request rows: the encoding a
model sees online is the one it was trained on.

Missing values (null, or an empty string in a categorical column) read the same in source data and
in requests: the missing id 0 for categorical and bucketized features, an empty list for text and
list features, the `fill` value where the spec declares one; a `required` feature (a numeric one
without `fill`, or any with `required: true`) rejects them in both places.

A data error names the feature, its source column and the first bad row (its position in the
source: the ROW_NUMBER_COLUMN a pipeline attaches before cutting the rows into blocks, else the
position in the table) with its value, in one line.
"""

from __future__ import annotations

import io
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from muxrec.errors import DataError
from muxrec.spec import Feature, FeatureKind, FeatureSpec, LabelSpec, LIST_KINDS

SPLIT_COLUMN = "__split"
ROW_NUMBER_COLUMN = "__row"  # a row's position in the source, attached before blocks are cut
FILE_ROW_STRIDE = 2 ** 32  # in a source of several files, file i's rows are numbered from i * FILE_ROW_STRIDE
SPLITS = ("train", "valid", "test")
OOV_ID = 0
_TOKEN_PATTERN = r"[^\p{L}\p{N}]+"  # words are runs of letters and digits of any script ("crème", "東京の寿司")


# ---- derive ------------------------------------------------------------------------------------


def _require_columns(table: pa.Table, columns: Iterable[str], what: str) -> None:
    present = set(table.column_names)
    missing = sorted({c for c in columns if c not in present})
    if missing:
        raise DataError(f"{what}: missing column(s) {missing}; the input has {table.column_names}")


def with_row_numbers(table: pa.Table) -> pa.Table:
    """`table` with its rows' positions in ROW_NUMBER_COLUMN, for split rules and error messages."""
    if ROW_NUMBER_COLUMN in table.column_names:
        return table
    return table.append_column(ROW_NUMBER_COLUMN, pa.array(np.arange(table.num_rows, dtype=np.int64)))


def _describe_row(position: int) -> str:
    file, row = divmod(position, FILE_ROW_STRIDE)
    return f"row {row} of file #{file}" if file else f"row {row}"


def _row_numbers(table: pa.Table) -> np.ndarray:
    if ROW_NUMBER_COLUMN in table.column_names:
        return table.column(ROW_NUMBER_COLUMN).to_numpy().astype(np.int64)
    return np.arange(table.num_rows, dtype=np.int64)


@dataclass(frozen=True)
class _Where:
    """What a data error names: the feature (or label), its source column, and the bad row."""

    what: str  # "feature 'price'" / "label 'click'" / "split"
    column: str
    table: pa.Table  # its rows' source positions are looked up on error only
    parents: pa.Array | None = None  # for the flattened values of a list column: value -> row

    def of_values(self, lists: pa.Array) -> _Where:
        return _Where(self.what, self.column, self.table, pc.list_parent_indices(lists))

    def error(self, problem: str, index: int | None = None, value: object = None, hint: str = "") -> DataError:
        at = ""
        if index is not None:
            row = index if self.parents is None else self.parents[index].as_py()
            at = f", first at {_describe_row(int(_row_numbers(self.table)[row]))} ({value!r})"
        return DataError(f"{self.what} (column {self.column!r}): {problem}{at}{'; ' + hint if hint else ''}")


def _where(table: pa.Table, what: str, column: str) -> _Where:
    return _Where(what, column, table)


def _flat(arr: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        return arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    return arr


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _as_string(arr: pa.ChunkedArray | pa.Array, where: _Where) -> pa.Array:
    arr = _flat(arr)
    if pa.types.is_floating(arr.type):
        present = arr.fill_null(0.0).to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(present)
        if bad.any():
            raise where.error("NaN/inf is not a category value", _first(bad), float(present[_first(bad)]))
        # 3.0 -> "3": categories some writers store as floats must match their integer form.
        if (present == np.round(present)).all():
            arr = pc.cast(arr, pa.int64())
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        try:
            arr = pc.cast(arr, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise where.error(f"cannot read {arr.type} values as categories") from None
    return arr if arr.type == pa.string() else pc.cast(arr, pa.string())


def _missing_as_null(arr: pa.Array, fill: str | float | None) -> pa.Array:
    """Empty strings are missing too; missing values become `fill` when the spec gives one."""
    if _any_empty(arr):
        arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, arr.type), arr)
    return arr if fill is None or not arr.null_count else pc.fill_null(arr, str(fill))


def _string_offsets(arr: pa.Array) -> np.ndarray:
    """(n+1,) int32 byte offsets of a string array's values into its data buffer (no copy; slices too)."""
    return np.frombuffer(arr.buffers()[1], np.int32, len(arr) + 1, arr.offset * 4)


def _any_empty(arr: pa.Array) -> bool:
    """Whether a string array holds "" (nulls aside), read from its offsets (cheaper than comparing)."""
    if not len(arr) or arr.null_count == len(arr):
        return False
    offsets = _string_offsets(arr)
    empty = offsets[1:] == offsets[:-1]
    if arr.null_count:
        empty &= pc.is_valid(arr).to_numpy(zero_copy_only=False)
    return bool(empty.any())


def _reject_missing(arr: pa.Array, where: _Where) -> None:
    if arr.null_count:
        missing = pc.is_null(arr).to_numpy(zero_copy_only=False)
        raise where.error(f"{arr.null_count} missing value(s)", _first(missing), None,
                          "the feature is required (declare `fill` to impute them, or drop `required`)")


_STRING_LIST = pa.list_(pa.string())


def _list_of_strings(arr: pa.ChunkedArray | pa.Array, where: _Where, separator: str | None) -> pa.Array:
    arr = _flat(arr)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        if separator is None:
            raise where.error("got a string column, expected a list (or set `separator`)")
        arr = pc.split_pattern(arr, separator)
    if arr.type == _STRING_LIST and arr.type.value_field.name == "item" and not arr.null_count:
        return arr  # already what the rebuild below makes (a request's lists, from the gateway)
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise where.error(f"expected a list column, got {arr.type}")
    lengths = pc.fill_null(pc.list_value_length(arr), 0)
    values = _as_string(pc.list_flatten(arr), where.of_values(arr))
    offsets = np.concatenate([[0], np.cumsum(lengths.to_numpy(zero_copy_only=False))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _drop_empty_strings(arr: pa.ListArray) -> pa.ListArray:
    values = pc.list_flatten(arr)
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
    keep = pc.not_equal(values, "").to_numpy(zero_copy_only=False)
    counts = np.bincount(parents[keep], minlength=len(arr)) if len(parents) else np.zeros(len(arr), np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.filter(pa.array(keep)))


def _first_unparsable(arr: pa.Array) -> int | None:
    """Index of the first value that is not text of a number (the slow path, on error only)."""
    for i, value in enumerate(arr.to_pylist()):
        if value is None:
            continue
        try:
            float(value)
        except (TypeError, ValueError):
            return i
    return None


def _numeric(arr: pa.ChunkedArray | pa.Array, where: _Where, fill: float | None, *, nullable: bool = False) -> pa.Array:
    """float64 values; nulls filled, kept (nullable) or refused; NaN / inf refused."""
    arr = _flat(arr)
    try:
        values = pc.cast(arr, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        text = pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
        bad = _first_unparsable(arr) if text else None
        if bad is None:
            raise where.error(f"expected numbers, got {arr.type}") from None
        raise where.error("expected numbers, got text", bad, arr[bad].as_py()) from None
    if values.null_count:
        if fill is not None:
            values = pc.fill_null(values, float(fill))
        elif not nullable:
            missing = pc.is_null(values).to_numpy(zero_copy_only=False)
            raise where.error(f"{values.null_count} missing value(s)", _first(missing), None,
                              "declare `fill` in the spec to impute them")
    np_values = values.fill_null(0.0).to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(np_values)
    if bad.any():
        raise where.error(f"{int(bad.sum())} NaN/inf value(s)", _first(bad), float(np_values[_first(bad)]),
                          "numeric inputs must be finite")
    return values


_COMPARE = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater,
            ">=": pc.greater_equal}


def label_mask(table: pa.Table, label: LabelSpec) -> pa.Array:
    """The label's rule (threshold / positive / when / 0-1) as a boolean per row; nulls refused."""
    raw = table.column(label.source)
    where = _where(table, f"label {label.name!r}", label.source)
    if label.positive is not None or (label.when is not None and isinstance(label.comparison[1], str)):
        text = _as_string(raw, where)
        _reject_missing(text, where)
        if label.positive is not None:
            return pc.is_in(text, value_set=pa.array(label.positive_texts, pa.string()))
        op, value = label.comparison
        return _COMPARE[op](text, pa.scalar(value))
    values = _numeric(raw, where, None)
    if label.threshold is not None:
        return pc.greater_equal(values, label.threshold)
    if label.when is not None:
        op, value = label.comparison
        return _COMPARE[op](values, value)
    arr = values.to_numpy(zero_copy_only=False)
    bad = ~np.isin(arr, (0.0, 1.0))
    if bad.any():
        raise where.error("values other than 0/1", _first(bad), float(arr[_first(bad)]),
                          "declare `threshold`, `positive` or `when`")
    return pc.equal(values, 1.0)


def _labels(table: pa.Table, spec: FeatureSpec) -> dict[str, pa.Array]:
    out = {}
    for label in spec.labels:
        out[label.name] = pc.cast(label_mask(table, label), pa.float32())
        if label.grades:
            values = _numeric(table.column(label.source), _where(table, f"label {label.name!r}", label.source), None)
            for grade, column in zip(label.grades, label.grade_columns):
                out[column] = pc.cast(pc.greater_equal(values, grade), pa.float32())
    return out


# ---- stable hashing ----------------------------------------------------------------------------


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele, Lea, Flood: "Fast splittable pseudorandom number
    generators", OOPSLA 2014) over uint64, vectorised: a fixed bijective mix of 64 bits."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _blake64(text: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8, salt=salt).digest(), "little")


def value_hashes(values: pa.Array, seed: int = 0) -> np.ndarray:
    """uint64 per value: blake2b-64 of its UTF-8 bytes, salted with the seed's 8 little-endian bytes
    (seed 0: unsalted), read little-endian; null -> 0. The same in every process (unlike hash())."""
    salt = seed.to_bytes(8, "little") if seed else b""
    uniques = pc.unique(values)
    codes = np.array([0 if v is None else _blake64(v, salt) for v in uniques.to_pylist()], dtype=np.uint64)
    if not len(codes):
        return np.zeros(len(values), np.uint64)
    return codes[pc.index_in(values, value_set=uniques).to_numpy(zero_copy_only=False)]


def slot_seed(feature: str, slot: int) -> int:
    """The hash seed of slot `slot` of `feature` in a multiplexed table: blake2b-64 of "<feature>/<slot>",
    so every process, Python version and machine hashes a feature's values the same way."""
    return _blake64(f"{feature}/{slot}", b"")


def _stable_hash(values: pa.Array, buckets: int, seed: int = 0) -> np.ndarray:
    """1 + blake2b(value) % buckets (value_hashes, salted by `seed`, 0: unsalted); null -> OOV_ID."""
    codes = value_hashes(values, seed)
    ids = (codes % np.uint64(buckets)).astype(np.int64) + 1
    return np.where(pc.is_null(values).to_numpy(zero_copy_only=False), OOV_ID, ids) if values.null_count else ids


def _split_hash(table: pa.Table, spec: FeatureSpec) -> np.ndarray:
    """h per row by the spec's rule (SplitSpec documents the three)."""
    split = spec.split
    if split.row_number:
        return _splitmix64(_row_numbers(table).astype(np.uint64) ^ np.uint64(split.seed))
    _require_columns(table, split.columns, "split")
    if isinstance(split.hash, dict):
        h = np.zeros(table.num_rows, dtype=np.int64)
        for column, multiplier in split.hash.items():
            col = table.column(column)
            if not pa.types.is_integer(col.type):
                raise DataError(f"split column {column!r} must be integer for `hash: {{column: multiplier}}`, got "
                                f"{col.type}; hash any column with `hash: [{column}]`")
            h += col.to_numpy().astype(np.int64) * multiplier
        return h
    h = np.zeros(table.num_rows, dtype=np.uint64)
    for column in split.columns:
        text = _as_string(table.column(column), _where(table, "split", column))
        h = _splitmix64(h ^ value_hashes(text, split.seed))
    return h


def split_of(table: pa.Table, spec: FeatureSpec) -> pa.Array:
    """train / valid / test per row, by the spec's deterministic rule."""
    bucket = _split_hash(table, spec) % spec.split.buckets
    names = np.full(table.num_rows, "train", dtype=object)
    names[np.isin(bucket, spec.split.valid)] = "valid"
    names[np.isin(bucket, spec.split.test)] = "test"
    cold = spec.split.cold
    if cold is not None:
        _require_columns(table, [cold.column], "split.cold")
        text = _as_string(table.column(cold.column), _where(table, "split.cold", cold.column))
        item_bucket = value_hashes(text, cold.seed) % np.uint64(cold.buckets)
        names[np.isin(item_bucket, cold.valid)] = "valid"
        names[np.isin(item_bucket, cold.test)] = "test"
    return pa.array(names, pa.string())


def _derive_feature(table: pa.Table, f: Feature) -> pa.Array:
    column = f.name if f.history else f.column
    raw = table.column(column)
    where = _where(table, f"feature {f.name!r}", column)
    if f.is_content:  # text / an image path, read by the feature's encoder later (attach_content)
        values = _missing_as_null(_as_string(raw, where), f.fill)
        if f.is_required:
            _reject_missing(values, where)
        return pc.fill_null(values, "") if f.kind == FeatureKind.TEXT else values
    if f.bucketize is not None:
        values = _numeric(raw, where, f.fill, nullable=True)
    elif f.kind == FeatureKind.CATEGORICAL:
        values = _as_string(raw, where)
        if f.slice is not None:
            start, stop = f.slice
            values = pc.utf8_slice_codeunits(values, start if start is not None else 0,
                                             stop if stop is not None else 2**31 - 1)
        values = _missing_as_null(values, f.fill)
    elif f.kind == FeatureKind.TEXT:
        text = _missing_as_null(_as_string(raw, where), f.fill)
        if f.is_required:
            _reject_missing(text, where)
        tokens = pc.split_pattern_regex(pc.utf8_lower(pc.fill_null(text, "")), _TOKEN_PATTERN)
        return pc.list_slice(_drop_empty_strings(tokens), 0, f.max_len)
    elif f.kind in LIST_KINDS:
        if f.is_required:
            _reject_missing(_flat(raw), where)
        return pc.list_slice(_list_of_strings(raw, where, f.separator), 0, f.max_len)
    else:
        return _numeric(raw, where, f.fill)
    if f.is_required:
        _reject_missing(values, where)
    return values


def derive(table: pa.Table, spec: FeatureSpec, *, labels: bool = True, split: bool = True) -> pa.Table:
    """Raw source columns -> one typed column per feature (+ labels, + split).

    Categorical values become strings (missing: null), list kinds list<string> (truncated to
    max_len), numeric and bucketized features float64 (NaN / inf rejected). Key columns
    (spec.keys) are carried along as strings.
    """
    sources = [f.column for f in spec.features if not (f.kind == FeatureKind.SEQUENCE and f.history)]
    sources += [f.name for f in spec.features if f.kind == FeatureKind.SEQUENCE and f.history]
    _require_columns(table, sources, f"spec {spec.name!r}")
    if labels:
        _require_columns(table, [lab.source for lab in spec.labels], "labels")
    columns: dict[str, pa.Array] = {f.name: _derive_feature(table, f) for f in spec.features}
    for role, column in spec.keys.items():
        if column in table.column_names:
            columns[f"__key_{role}"] = _as_string(table.column(column), _where(table, f"key {role!r}", column))
    if labels:
        columns.update(_labels(table, spec))
    if split:
        columns[SPLIT_COLUMN] = split_of(table, spec)
    return pa.table(columns)


def attach_content(derived: pa.Table, spec: FeatureSpec, vectors: dict[str, np.ndarray]) -> pa.Table:
    """`derived` with each content feature's column replaced by its (N, dim) vectors, as float32 lists.

    `vectors` maps every content feature of the spec to one finite row per derived row, `dim` wide."""
    columns = {name: derived.column(name) for name in derived.column_names}
    for f in spec.content:
        if f.name not in vectors:
            raise DataError(f"feature {f.name!r}: no vectors from its encoder {f.encoder}")
        v = np.asarray(vectors[f.name], dtype=np.float32)
        if v.shape != (derived.num_rows, f.dim):
            raise DataError(f"feature {f.name!r}: vectors of shape {v.shape}, expected ({derived.num_rows}, {f.dim})")
        if not np.isfinite(v).all():
            raise DataError(f"feature {f.name!r}: NaN/inf in the vectors of row {_first(~np.isfinite(v).all(axis=1))}")
        columns[f.name] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), f.dim)
    return pa.table(columns)


def content_matrix(column: pa.ChunkedArray | pa.Array, dim: int, feature: str) -> np.ndarray:
    """A content feature's vector column (attach_content) -> (N, dim) float32."""
    col = _flat(column)
    if not (pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type)) or \
            not pa.types.is_floating(col.type.value_type):
        raise DataError(f"feature {feature!r} holds {col.type}, not its encoder's vectors: content features are "
                        f"read by their encoder first (attach_content)")
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if len(values) != len(col) * dim:
        raise DataError(f"feature {feature!r}: vectors are not {dim} wide")
    return values.reshape(len(col), dim)


# ---- vocabulary --------------------------------------------------------------------------------


SORTED_INDEX_MAX_BYTES = 256 << 20  # above this a vocabulary is probed by hashing instead (TableVocab)
SORTED_PROBE_MIN_RATIO = 16  # a block of n values is searched when n <= max(256, V / 16), else hashed
VALUES_PER_WRITE = 65_536  # vocabulary values turned into JSON at a time (`Vocabulary.write_json`)


@dataclass
class TableVocab:
    """Ids of one embedding table: a fitted vocabulary (id = rank + 1), hashing into buckets, or
    the bucket boundaries of a bucketized numeric feature (id = 1 + bucket; missing -> 0).

    Vocabulary values are one Arrow string array (compact: millions of ids cost their bytes, not a
    Python object each). Lookups are array operations, never a Python loop over rows:

      * a small block (a serving request: n <= 256 values, or n <= V / SORTED_PROBE_MIN_RATIO) is
        looked up by binary search (numpy.searchsorted) in the vocabulary sorted once per table: a few
        numpy calls, O(n log V), so a request's cost does not grow with the vocabulary;
      * a larger block (offline) hashes the vocabulary once per block (pyarrow.compute.index_in), or,
        when the vocabulary is much larger than the block, probes it with the block's distinct values
        (per value, hashing beats the binary search over fixed-width strings once blocks are large).

    Both give the same ids (the position of the value's first occurrence in `values`, plus 1; OOV_ID
    for null and unknown values). The sorted index holds fixed-width numpy strings; a vocabulary over
    SORTED_INDEX_MAX_BYTES that way, or one holding a NUL character (numpy strings drop trailing NULs),
    always takes the hashing path, and so does a block holding a NUL.
    """

    name: str
    values: pa.Array | list[str] | None = None
    hash_buckets: int | None = None
    boundaries: list[float] | None = None
    multiplex: bool = False  # hashed per feature (slot_seed): `ids` needs the feature's name
    _sorted: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)
    _sortable: bool | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.values is not None and not isinstance(self.values, pa.Array):
            self.values = pa.array(self.values, pa.string())

    @property
    def num_embeddings(self) -> int:
        if self.boundaries is not None:
            return len(self.boundaries) + 2
        return 1 + (self.hash_buckets if self.hash_buckets is not None else len(self.values or ()))

    def ids(self, values: pa.Array, feature: str | None = None, slots: int = 1) -> np.ndarray:
        """Values -> int64 ids (N,); unknown and missing values -> OOV_ID.

        A multiplexed table hashes by `feature`'s own seeds and gives (N, slots) ids for slots > 1
        (a missing value: OOV_ID in every slot)."""
        if self.multiplex:
            if feature is None:
                raise ValueError(f"table {self.name!r} is multiplexed: ids depend on the feature that reads it")
            ids = [_stable_hash(values, self.hash_buckets, slot_seed(feature, j)) for j in range(slots)]
            return ids[0] if slots == 1 else np.stack(ids, axis=1)  # (N,) or (N, slots)
        if slots != 1:
            raise ValueError(f"table {self.name!r} is not multiplexed: one id per value")
        if self.boundaries is not None:
            x = values.fill_null(np.nan).to_numpy(zero_copy_only=False)
            ids = 1 + np.searchsorted(np.asarray(self.boundaries), x, side="right")
            return np.where(np.isnan(x), OOV_ID, ids).astype(np.int64)
        if self.hash_buckets is not None:
            return _stable_hash(values, self.hash_buckets)
        return vocabulary_ids([(self, values)])[0]

    def _searchable(self, n: int) -> bool:
        """Whether a block of `n` values is looked up by binary search (see the class docstring)."""
        return n <= max(256, len(self.values) // SORTED_PROBE_MIN_RATIO) and self._sorted_index() is not None

    def _sorted_index(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(keys, ids): the vocabulary as sorted fixed-width numpy strings and each key's id; None where
        the vocabulary cannot be held that way (built once, on first use)."""
        if self._sortable is None:
            width = int(pc.max(pc.utf8_length(self.values)).as_py() or 0) if len(self.values) else 0
            fits = len(self.values) * max(width, 1) * 4 <= SORTED_INDEX_MAX_BYTES  # fixed-width UTF-32
            self._sortable = fits and not _has_nul(self.values)
            if self._sortable:
                keys = self.values.to_numpy(zero_copy_only=False).astype(str) if len(self.values) \
                    else np.zeros(0, "<U1")  # (V,)
                order = np.argsort(keys, kind="stable")  # stable: a repeated value keeps its first id
                self._sorted = (keys[order], order.astype(np.int64) + 1)
        return self._sorted

    def _search(self, query: np.ndarray) -> np.ndarray:
        """Ids of `query` (n,) numpy strings of their own width, by binary search in the sorted keys."""
        keys, key_ids = self._sorted
        if not len(keys):
            return np.full(len(query), OOV_ID, dtype=np.int64)
        # Cut to the keys' width for the search; a longer value matches no key and fails the check.
        pos = np.minimum(np.searchsorted(keys, query.astype(keys.dtype)), len(keys) - 1)  # (n,)
        return np.where(keys[pos] == query, key_ids[pos], OOV_ID)

    def _hash_lookup(self, values: pa.Array) -> np.ndarray:
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


def _has_nul(values: pa.Array) -> bool:
    return bool(len(values)) and pc.match_substring(values, "\x00").true_count > 0


def _ascii_strings(values: pa.Array, missing: np.ndarray | None) -> np.ndarray | None:
    """A string array as (n,) numpy strings as wide as its longest value, "" where `missing`, laid out
    from Arrow's offsets and bytes by a few array operations (instead of a Python string per value);
    None unless every byte is ASCII and none is NUL (numpy strings drop trailing NULs)."""
    n = len(values)
    if not n:
        return np.zeros(0, "<U1")
    offsets = _string_offsets(values).astype(np.int64)
    data_buffer = values.buffers()[2]
    first, size = int(offsets[0]), int(offsets[-1] - offsets[0])
    data = np.frombuffer(data_buffer, np.uint8, size, first) if size else np.zeros(0, np.uint8)
    if size and ((data - np.uint8(1)) > 126).any():  # wraps around: byte 0 -> 255; so True for 0 and >= 128
        return None
    lengths = np.diff(offsets)  # (n,) bytes = characters, all ASCII
    if missing is not None:
        lengths[missing] = 0
    width = max(int(lengths.max()), 1)
    codes = np.zeros((n, width), np.uint32)  # UTF-32 code points, 0-padded as numpy pads its strings
    row = np.repeat(np.arange(n), lengths)
    col = np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    codes[row, col] = data[np.repeat(offsets[:-1] - first, lengths) + col]
    return codes.view(f"U{width}").reshape(n)  # native byte order, as the uint32 codes


def vocabulary_ids(lookups: list[tuple[TableVocab, pa.Array | pa.ChunkedArray]]) -> list[np.ndarray]:
    """int64 ids for each (vocabulary, string values) pair; null and unknown values -> OOV_ID.

    TableVocab.ids for several lookups at once: the values of every lookup that goes by binary search
    are converted to numpy strings together (a handful of array calls for all the features of a
    request instead of a handful per feature); the others are hashed one by one.
    """
    out: list[np.ndarray | None] = [None] * len(lookups)
    searched = []
    for k, (table, values) in enumerate(lookups):
        values = _flat(values)
        if values.type != pa.string():
            values = pc.cast(values, pa.string())
        if table._searchable(len(values)):
            searched.append((k, table, values))
        else:
            out[k] = table._hash_lookup(values)
    if searched:
        values = pa.concat_arrays([v for _, _, v in searched]) if len(searched) > 1 else searched[0][2]
        missing = pc.is_null(values).to_numpy(zero_copy_only=False) if values.null_count else None
        query = _ascii_strings(values, missing)
        if query is None:
            if _has_nul(values):  # numpy strings drop trailing NULs: such values take the exact hashing path
                for k, table, v in searched:
                    out[k] = table._hash_lookup(v)
                return out
            query = values.to_numpy(zero_copy_only=False)  # (n,) str or None
            if missing is not None:
                query = np.where(missing, "", query)
            query = query.astype(str)  # (n,) of their own width: exact
        start = 0
        for k, table, v in searched:
            ids = table._search(query[start:start + len(v)])
            if missing is not None:
                ids[missing[start:start + len(v)]] = OOV_ID
            out[k] = ids
            start += len(v)
    return out


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
        if table.hash_buckets is not None or table.bucketize is not None:
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


SKETCH_POINTS = 1024  # points a quantile sketch keeps per feature: rank error <= 1/1024 per merge level
_SKETCH_SCHEMA = pa.schema([("feature", pa.string()), ("value", pa.float64()), ("weight", pa.float64())])


def _compress(values: np.ndarray, weights: np.ndarray, points: int = SKETCH_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Sorted weighted values -> at most `points` values at evenly spaced ranks, equal weights."""
    if len(values) <= points:
        return values, weights
    total = weights.sum()
    targets = (np.arange(points) + 0.5) * (total / points)
    picked = values[np.minimum(np.searchsorted(np.cumsum(weights), targets), len(values) - 1)]
    return picked, np.full(points, total / points)


def _sketch_rows(feature: str, values: np.ndarray, weights: np.ndarray) -> dict[str, list]:
    order = np.argsort(values, kind="stable")
    v, w = _compress(values[order], weights[order])
    return {"feature": [feature] * len(v), "value": v.tolist(), "weight": w.tolist()}


def _sketch_table(parts: list[dict[str, list]]) -> pa.Table:
    cols = {k: [x for p in parts for x in p[k]] for k in ("feature", "value", "weight")}
    return pa.table(cols, schema=_SKETCH_SCHEMA)


def quantile_sketch(derived: pa.Table, spec: FeatureSpec) -> pa.Table:
    """Per-block quantile sketch of every `bucketize: {quantiles: n}` feature (missing values skipped).

    An equal-depth summary: the block's values at SKETCH_POINTS evenly spaced ranks, each carrying
    its share of the rows (exact for a block of fewer rows). Sketches merge by concatenation
    (merge_sketches); each compression moves a rank by at most total / SKETCH_POINTS.
    """
    parts = []
    for f in spec.features:
        if f.bucketize is not None and f.bucketize.quantiles is not None:
            x = _flat(derived.column(f.name)).drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
            parts.append(_sketch_rows(f.name, x, np.ones(len(x))))
    return _sketch_table(parts)


def merge_sketches(*sketches: pa.Table) -> pa.Table:
    """Fold quantile sketches (from quantile_sketch or earlier merges) into one of bounded size."""
    merged = pa.concat_tables([s.cast(_SKETCH_SCHEMA) for s in sketches]) if sketches else _SKETCH_SCHEMA.empty_table()
    parts = []
    for feature in sorted(set(merged["feature"].to_pylist())):
        mine = merged.filter(pc.equal(merged["feature"], feature))
        parts.append(_sketch_rows(feature, mine["value"].to_numpy(), mine["weight"].to_numpy()))
    return _sketch_table(parts)


def _quantile_boundaries(sketch: pa.Table, feature: str, quantiles: int) -> list[float]:
    mine = sketch.filter(pc.equal(sketch["feature"], feature))
    if mine.num_rows == 0:
        raise DataError(f"feature {feature!r}: no training values to fit quantile buckets on")
    values, weights = mine["value"].to_numpy(), mine["weight"].to_numpy()
    order = np.argsort(values, kind="stable")
    values, cum = values[order], np.cumsum(weights[order])
    targets = np.arange(1, quantiles) * (cum[-1] / quantiles)
    cuts = values[np.minimum(np.searchsorted(cum, targets), len(values) - 1)]
    return sorted(set(cuts.tolist()))  # repeated values merge buckets


@dataclass
class Vocabulary:
    """Everything fitted on the train split: table vocabularies and numeric statistics."""

    spec_fingerprint: str
    tables: dict[str, TableVocab]
    numeric: dict[str, NumericStats]

    @classmethod
    def fit(cls, spec: FeatureSpec, counts: pa.Table, stats: pa.Table, sketches: pa.Table | None = None) -> Vocabulary:
        """Merge per-block statistics (count_values / moments / quantile_sketch over train rows)."""
        counts = counts.group_by(["table", "value"]).aggregate([("count", "sum")])
        sketches = merge_sketches(*([] if sketches is None else [sketches]))
        tables = {}
        for table in spec.tables_list():
            if table.bucketize is not None:
                b = table.bucketize
                boundaries = list(b.boundaries) if b.boundaries is not None else \
                    _quantile_boundaries(sketches, table.features[0], b.quantiles)
                tables[table.name] = TableVocab(table.name, boundaries=boundaries)
                continue
            if table.hash_buckets is not None:
                tables[table.name] = TableVocab(table.name, hash_buckets=table.hash_buckets, multiplex=table.multiplex)
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
        out = io.StringIO()
        self.write_json(out)
        return out.getvalue()

    def write_json(self, out: TextIO) -> None:
        """The vocabulary as JSON, values written VALUES_PER_WRITE at a time: millions of ids never become
        Python strings all at once (as one `json.dumps` of the whole would make them)."""
        out.write(f'{{"spec_fingerprint": {json.dumps(self.spec_fingerprint)},\n "tables": {{')
        for i, (name, t) in enumerate(self.tables.items()):
            meta = {"hash_buckets": t.hash_buckets, **({"boundaries": t.boundaries} if t.boundaries is not None else {}),
                    **({"multiplex": True} if t.multiplex else {})}
            out.write(f'{"," if i else ""}\n  {json.dumps(name)}: {json.dumps(meta)[:-1]}, "values": ')
            if t.values is None:
                out.write("null}")
                continue
            out.write("[")
            for start in range(0, len(t.values), VALUES_PER_WRITE):
                chunk = json.dumps(t.values.slice(start, VALUES_PER_WRITE).to_pylist())
                out.write(("," if start else "") + chunk[1:-1])
            out.write("]}")
        out.write(f'}},\n "numeric": {json.dumps({n: vars(s) for n, s in self.numeric.items()})}}}\n')

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        data = json.loads(text)
        tables = {n: TableVocab(n, values=t["values"], hash_buckets=t["hash_buckets"], boundaries=t.get("boundaries"),
                                multiplex=t.get("multiplex", False))
                  for n, t in data["tables"].items()}
        numeric = {n: NumericStats(**s) for n, s in data["numeric"].items()}
        return cls(data["spec_fingerprint"], tables, numeric)

    def save(self, path: Path) -> None:
        with open(path, "w") as out:
            self.write_json(out)

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        return cls.from_json(Path(path).read_text())

    def num_embeddings(self) -> dict[str, int]:
        return {name: t.num_embeddings for name, t in self.tables.items()}


# ---- encode ------------------------------------------------------------------------------------


EncodedArrays = dict[str, "np.ndarray | tuple[np.ndarray, np.ndarray]"]


def _list_parts(col: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """A list column as (offsets (N+1,) int32 from 0, its values in order); a null list is empty."""
    if not col.null_count:  # offsets and values straight from the array (which may be a slice)
        offsets = col.offsets.to_numpy()
        values = col.values.slice(offsets[0], offsets[-1] - offsets[0])
        return (offsets - offsets[0]).astype(np.int32, copy=False), values
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32), pc.list_flatten(col)


def encode_arrays(derived: pa.Table, spec: FeatureSpec, vocab: Vocabulary) -> EncodedArrays:
    """`encode`'s feature columns as numpy, for a caller that wants tensors rather than Arrow (the
    Ranker): int64 (N,) ids, float32 (N,) normalised numbers, for list kinds (offsets (N+1,) int32,
    ids (M,) int64), and float32 (N, dim) vectors of content features."""
    if vocab.spec_fingerprint != spec.fingerprint():
        raise DataError("the vocabulary was fitted for another version of the feature spec; re-run prepare")
    columns: dict = {}
    lookups, listed = [], []  # vocabulary lookups, run together; (feature, offsets) of id features
    for f in spec.features:
        col = _flat(derived.column(f.name))
        if f.is_content:
            columns[f.name] = content_matrix(col, f.dim, f.name)  # (N, dim)
            continue
        if f.kind == FeatureKind.NUMERIC:
            x = col.to_numpy(zero_copy_only=False).astype(np.float64)
            columns[f.name] = vocab.numeric[f.name].normalize(x, f.normalize).astype(np.float32)
            continue
        table = vocab.tables[f.table_name]
        if f.kind in LIST_KINDS:
            offsets, col = _list_parts(col)
            listed.append((f, offsets))
        elif (f.slots or 1) > 1:  # k rows per value: a bag of exactly k ids
            listed.append((f, np.arange(0, len(col) * f.slots + 1, f.slots, dtype=np.int32)))
        else:
            listed.append((f, None))
        if table.multiplex:
            columns[f.name] = table.ids(col, f.name, f.slots or 1).reshape(-1)  # (N,) or (N * slots,)
        elif table.values is None:  # hashed or bucketized: no vocabulary to search
            columns[f.name] = table.ids(col)
        else:
            lookups.append((table, col))
            columns[f.name] = None
    found = iter(vocabulary_ids(lookups))
    for f, offsets in listed:
        ids = columns[f.name] if columns[f.name] is not None else next(found)
        columns[f.name] = ids.astype(np.int64, copy=False) if offsets is None else (offsets, ids.astype(np.int64))
    return columns


def encode(derived: pa.Table, spec: FeatureSpec, vocab: Vocabulary) -> pa.Table:
    """Typed feature values -> ids and normalised floats. Labels, keys and split pass through."""
    columns: dict[str, pa.Array] = {}
    for name, value in encode_arrays(derived, spec, vocab).items():
        if isinstance(value, tuple):
            offsets, ids = value
            columns[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.int64()))
        elif value.ndim == 2:  # a content feature's vectors
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(value.reshape(-1)), value.shape[1])
        else:
            columns[name] = pa.array(value)
    labels = set(spec.label_columns)
    passthrough = [c for c in derived.column_names if c in labels or c == SPLIT_COLUMN or c.startswith("__key_")]
    for c in passthrough:
        columns[c] = derived.column(c)
    return pa.table(columns)
