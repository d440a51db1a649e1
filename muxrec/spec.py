"""The declarative feature spec: one YAML file per dataset.

The same `FeatureSpec` object drives
  * preprocessing (`muxrec.encoding`): which source column feeds which feature, vocabularies,
    hashing, bucketing, normalisation, labels and the train / valid / test split;
  * model inputs (`FeatureSpec.tables` -> TorchRec `EmbeddingBagConfig`s, `KeyedJaggedTensor` keys);
  * request validation in the serving gateway (`FeatureSpec.request_columns`).

A new dataset needs a new YAML file, no code. Example (configs/ml-100k.yaml is the full one):

    name: ml-100k
    source: {loader: movielens-100k}
    keys: {user: user_id, item: item_id}
    labels: [{name: click, source: rating, threshold: 4}]
    split: {hash: {user_id: 1000003, item_id: 1}, buckets: 10, test: [0], valid: [1]}
    features:
      - {name: user_id, kind: categorical}
      - {name: release_year, kind: categorical, source: release_date, slice: [-4, null], fill: unknown}
      - {name: genres, kind: multi_categorical, max_len: 6, pooling: mean}

A table with a string label, no id column, numbers to bucketize and column names with spaces:

    name: adult
    source: {loader: csv, path: data/adult.csv}
    labels:
      - {name: rich, source: income, positive: ['>50K', '>50K.']}   # values that count as 1
      # or: {name: long_hours, source: hours-per-week, when: "> 40"}  (== != < <= > >= a literal)
    split: {row_number: true, seed: 7, buckets: 10, test: [0], valid: [1]}   # no id: the row's position
      # or: {hash: [workclass, "native country"], buckets: 10, ...}        # any columns, strings too
    features:
      - {name: age_band, kind: categorical, source: age, bucketize: {quantiles: 10}}  # fitted on train
      - {name: hours, kind: categorical, source: hours-per-week, bucketize: {boundaries: [20, 40, 60]}}
      - {name: title, kind: text, source: product title, max_len: 8, hash_buckets: 4096}
      - {name: country, kind: categorical, source: native country, required: true}

Missing values: a null (or empty) categorical, text, list or bucketized value reads as the missing id
0 / an empty list, in the source data and in requests alike, so such request fields are optional. A
numeric feature without `fill`, and any feature with `required: true`, refuses missing values in
both places (prepare names the column and row; the gateway answers 422 naming the field).
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError,
                      field_validator, model_validator)

from muxrec.errors import SpecError

_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A pinned content encoder: a registry name and an exact version, e.g. "synthetic-text@v0002".
ENCODER_REF = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}@v[0-9]{4,}$"


class FeatureKind(StrEnum):
    CATEGORICAL = "categorical"  # one id per row
    MULTI_CATEGORICAL = "multi_categorical"  # a bag of ids per row, pooled
    NUMERIC = "numeric"  # one float per row, normalised
    SEQUENCE = "sequence"  # an ordered list of ids per row, not pooled (behaviour history)
    TEXT = "text"  # free text: hashed word ids, pooled; or, with `encoder`, a text-tower vector
    IMAGE = "image"  # an image file (a path; base64 bytes in requests), read by its `encoder` into a vector


# Kinds whose values are looked up in an embedding table.
ID_KINDS = frozenset(
    {FeatureKind.CATEGORICAL, FeatureKind.MULTI_CATEGORICAL, FeatureKind.SEQUENCE, FeatureKind.TEXT}
)
# Kinds that carry a variable-length list of ids per row.
LIST_KINDS = frozenset({FeatureKind.MULTI_CATEGORICAL, FeatureKind.SEQUENCE, FeatureKind.TEXT})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    """Where raw rows come from: a built-in loader, or Parquet / CSV files."""

    loader: Literal["movielens-100k", "synthetic", "parquet", "csv"]
    path: str | None = None  # parquet / csv: a file or a directory of files
    options: dict[str, Any] = Field(default_factory=dict)  # loader-specific, e.g. synthetic rows

    @model_validator(mode="after")
    def _path_for_files(self) -> SourceSpec:
        if self.loader in ("parquet", "csv") and not self.path:
            raise ValueError(f"loader {self.loader!r} needs a `path`")
        return self


_COMPARISON = re.compile(r"^\s*(==|!=|<=|>=|<|>)\s*(\S.*?)\s*$")


def category_text(value: str | int | float) -> str:
    """A category value as derive() writes it: integral floats as integers (3.0 -> "3")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class LabelSpec(_Strict):
    """A binary label from one source column, by at most one rule (none: the source holds 0/1).

        threshold: 4              1 where source >= 4 (a number column)
        positive: ['>50K']        1 where the source, read as text, is one of these values
        when: "< 30"              1 where `source <op> literal`, op one of == != < <= > >= (a quoted
                                  string literal compares as text, a number as a number)

    Several labels make a multi-task model (one output per label). `weight` scales a task's loss
    (with `task_weighting: fixed`, the default). `parent` names an earlier label that must be 1 for
    this one to be 1 (conversion after click): a funnel. Models that chain the funnel predict
    P(child) = P(parent) * P(child | parent); with `funnel: masked` the child learns only from its
    parent's positive rows. Metrics of a child task are reported on all rows and on those rows.

    `grades` adds more cut points on the same graded source, e.g. `threshold: 4, grades: [2, 3, 5]`
    for 1-5 star ratings. They are training targets only (the model still predicts `source >=
    threshold`): one score s per row and P(source >= g) = sigmoid(s + offset_g), a cumulative-link
    (proportional-odds) model, "Regression Models for Ordinal Data", McCullagh, JRSS-B 1980. A row
    rated 5 then teaches more than a row rated 4, and a 1 more than a 3, where the binary label
    cannot tell them apart. Each grade becomes a label column `<name>@<grade>`.
    """

    name: str = Field(pattern=_NAME)
    source: str
    type: Literal["binary"] = "binary"
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)  # the task's weight in the training loss
    parent: str | None = None  # a label this one only happens after (love after like): a funnel step
    threshold: float | None = None
    positive: tuple[StrictStr | StrictInt | StrictFloat, ...] | None = Field(default=None, min_length=1,
                                                                              max_length=1000)
    when: str | None = Field(default=None, max_length=200)
    grades: tuple[float, ...] = Field(default=(), max_length=16)

    @model_validator(mode="after")
    def _one_rule(self) -> LabelSpec:
        rules = [r for r in ("threshold", "positive", "when") if getattr(self, r) is not None]
        if len(rules) > 1:
            raise ValueError(f"label {self.name!r}: give one rule, not {rules} (`threshold`, `positive` or `when`)")
        if self.when is not None:
            self.comparison  # noqa: B018 - parse now, so a bad expression fails when the spec loads
        return self

    @property
    def comparison(self) -> tuple[str, str | float]:
        """`when` parsed into (operator, literal)."""
        match = _COMPARISON.match(self.when or "")
        if match is None:
            raise ValueError(f"label {self.name!r}: `when` must read `<op> <value>` with op one of == != < <= > >=, "
                             f"e.g. \"> 50000\" or \"== 'yes'\"; got {self.when!r}")
        op, text = match.groups()
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"label {self.name!r}: `when` value {text!r} is neither a number nor a quoted string") \
                from None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"label {self.name!r}: `when` value {text!r} is neither a number nor a quoted string")
        if isinstance(value, str) and op not in ("==", "!="):
            raise ValueError(f"label {self.name!r}: `{op}` compares numbers; got the string {value!r}")
        if not isinstance(value, str) and not math.isfinite(value):
            raise ValueError(f"label {self.name!r}: `when` value must be finite")
        return op, value if isinstance(value, str) else float(value)

    @property
    def positive_texts(self) -> tuple[str, ...]:
        return tuple(category_text(v) for v in self.positive or ())

    @model_validator(mode="after")
    def _grades_are_cut_points(self) -> LabelSpec:
        if not self.grades:
            return self
        if self.threshold is None:
            raise ValueError(f"label {self.name!r}: `grades` needs a `threshold` (they are more cut points on it)")
        if not all(math.isfinite(g) for g in self.grades):
            raise ValueError(f"label {self.name!r}: grades must be finite numbers")
        if len(set(self.grades)) != len(self.grades) or self.threshold in self.grades:
            raise ValueError(f"label {self.name!r}: grades {list(self.grades)} must be distinct and differ from "
                             f"the threshold {self.threshold:g}")
        return self

    @property
    def grade_columns(self) -> tuple[str, ...]:
        return tuple(f"{self.name}@{g:g}" for g in self.grades)


def _check_buckets(buckets: int, test: list[int], valid: list[int], what: str = "") -> None:
    """ValueError unless every test / valid bucket is in 0..buckets-1 and none is in both."""
    for part, chosen in (("test", test), ("valid", valid)):
        bad = [b for b in chosen if not 0 <= b < buckets]
        if bad:
            raise ValueError(f"{what}{part} buckets {bad} are outside 0..{buckets - 1}")
    if set(test) & set(valid):
        raise ValueError(f"a {what}bucket cannot be in both test and valid")


class ColdSpec(_Strict):
    """Whole items held out of training, for cold-start evaluation: every row whose `column` value hashes
    (blake2b-64 of its text, salted with `seed`) into a `test` / `valid` bucket goes to that split, whatever
    the row rule says, so those items' ids are never seen in training and map to the OOV id."""

    column: str
    buckets: int = Field(gt=1)
    test: list[int] = Field(default_factory=list)
    valid: list[int] = Field(default_factory=list)
    seed: int = Field(default=0, ge=0, lt=2**63)

    @model_validator(mode="after")
    def _buckets_in_range(self) -> ColdSpec:
        _check_buckets(self.buckets, self.test, self.valid, "cold ")
        if not self.test and not self.valid:
            raise ValueError("cold needs `test` and/or `valid` buckets")
        return self


class SplitSpec(_Strict):
    """Deterministic split: each row gets a bucket h % buckets, then `test` / `valid` buckets, else train.

    Three rules for h, exactly one per spec:

        hash: {user_id: 1000003, item_id: 1}   integer columns: h = sum of column * multiplier
                                               (the ML-100K protocol; unchanged)
        hash: [workclass, "native country"]    any columns, strings too: each value's text (3 and
                                               3.0 both read "3"; null hashes to 0) through
                                               blake2b-64 salted with `seed`, the per-column
                                               hashes folded with SplitMix64 (muxrec.encoding)
        row_number: true                       no id at all: SplitMix64 of (seed, the row's
                                               position in the source), so row order decides

    Both hashes are fixed functions of the bytes: the same in every process and on every machine.
    """

    hash: dict[str, int] | list[str] | None = None
    row_number: bool = False
    seed: int = Field(default=0, ge=0, lt=2**63)
    buckets: int = Field(gt=1)
    test: list[int]
    valid: list[int]
    cold: ColdSpec | None = None  # items held out of training whole (cold-start evaluation)

    @model_validator(mode="after")
    def _buckets_in_range(self) -> SplitSpec:
        _check_buckets(self.buckets, self.test, self.valid)
        if (self.hash is None) == (not self.row_number):
            raise ValueError("give one split rule: `hash` (columns) or `row_number: true`")
        if self.hash is not None and not self.hash:
            raise ValueError("hash needs at least one column")
        if isinstance(self.hash, dict) and self.seed:
            raise ValueError("`seed` applies to `hash: [columns]` and `row_number`, not to integer multipliers")
        return self

    @property
    def columns(self) -> list[str]:
        """The source columns the rule reads."""
        return list(self.hash or ()) + ([self.cold.column] if self.cold else [])


class CompressionSpec(_Strict):
    """How a table stores its rows, when not as one dense (rows, d) matrix (models/layers/tables.py).

        {method: qr, buckets: 64}   quotient-remainder ("Compositional Embeddings Using Complementary
                                    Partitions for Memory-Efficient Recommendation Systems", Shi et al.,
                                    KDD 2020): row i is q[i // 64] * r[i % 64], element-wise, from two
                                    small tables of ceil(rows / 64) and 64 rows
        {method: mixed_dim,         mixed dimensions by frequency ("Mixed Dimension Embeddings with
         blocks: [[0.1, 16],         Application to Memory-Efficient Recommendation Systems", Ginart et
                  [1.0, 4]]}         al., ISIT 2021): a fitted vocabulary numbers values most frequent
                                    first, so the first 10% of rows get 16 dims and the rest 4; each
                                    block narrower than the model is projected to its width
        {method: matryoshka,        nested widths ("Matryoshka Representation Learning", Kusupati et
         dims: [4, 8],               al., NeurIPS 2022): each training step reads the table at one of
         serve_dim: 8}               4, 8 or its full width (the rest zeroed), so every prefix is usable;
                                    published versions keep the first 8 values of each row
        {method: prune, keep: 0.2,  magnitude pruning: training zeroes the smallest values of the
         ramp_steps: 500}            table (all rows together) on a schedule reaching 1 - keep of them
                                    after ramp_steps steps ("To prune, or not to prune", Zhu and Gupta,
                                    2017); published versions store the largest `keep` of the values
                                    as sparse rows (value, column, row offsets), as in "Experimental
                                    Analysis of Large-scale Learnable Vector Storage Compression"
    """

    method: Literal["qr", "mixed_dim", "matryoshka", "prune"]
    buckets: int | None = Field(default=None, ge=2)  # qr
    blocks: tuple[tuple[float, int], ...] | None = Field(default=None, min_length=1, max_length=8)  # mixed_dim
    dims: tuple[int, ...] | None = Field(default=None, min_length=1, max_length=8)  # matryoshka: nested widths
    serve_dim: int | None = Field(default=None, ge=1)  # matryoshka: the width published versions keep
    keep: float | None = Field(default=None, gt=0, lt=1)  # prune: the fraction of values kept
    ramp_steps: int | None = Field(default=None, ge=1)  # prune: training steps to reach it (default 500)

    @model_validator(mode="after")
    def _fields_fit_method(self) -> CompressionSpec:
        if self.method == "matryoshka":
            if self.dims is None or any(d < 1 for d in self.dims) or list(self.dims) != sorted(set(self.dims)):
                raise ValueError(f"matryoshka needs `dims`, increasing widths >= 1; got {self.dims}")
            if self.serve_dim is not None and self.serve_dim not in self.dims:
                raise ValueError(f"matryoshka serve_dim {self.serve_dim} is not one of its trained dims {list(self.dims)}")
        elif self.dims is not None or self.serve_dim is not None:
            raise ValueError(f"`dims` and `serve_dim` do not apply to {self.method} compression")
        if self.ramp_steps is not None and self.method != "prune":
            raise ValueError(f"`ramp_steps` does not apply to {self.method} compression")
        needs = {"qr": "buckets", "mixed_dim": "blocks", "prune": "keep"}
        for method, attr in needs.items():
            if (getattr(self, attr) is not None) != (self.method == method):
                raise ValueError(f"`{attr}` {'is required by' if self.method == method else 'does not apply to'} "
                                 f"{self.method} compression")
        if self.blocks is not None:
            ends, dims = [b[0] for b in self.blocks], [b[1] for b in self.blocks]
            if any(not 0 < e <= 1 for e in ends) or ends != sorted(set(ends)) or ends[-1] != 1:
                raise ValueError(f"mixed_dim blocks end at increasing fractions of the rows, the last at 1; got {ends}")
            if any(d < 1 for d in dims) or dims != sorted(dims, reverse=True):
                raise ValueError(f"mixed_dim block dims are >= 1 and do not grow (frequent rows first); got {dims}")
        return self


class TableSpec(_Strict):
    """An embedding table that several features may share.

    By default their vocabulary is fitted jointly (or, with `hash_buckets`, one hash maps a value to
    the same row whichever feature holds it: an item id and a history of item ids meet there).

    `multiplex: true` makes it a Unified Embedding table ("Unified Embedding: Battle-Tested Feature
    Representations for Web-Scale ML Systems", Coleman et al., NeurIPS 2023): `hash_buckets` rows
    shared by all its features, each feature reaching them through its own hash (blake2b salted per
    feature name, `muxrec.encoding.slot_seed`), so equal strings of two features land on unrelated
    rows. A feature's `slots: k` makes it look up k rows (k hashes) and sum them (the multi-size
    variant: a large-vocabulary feature gets more capacity from the same table).
    """

    min_count: int = Field(default=1, ge=1)
    hash_buckets: int | None = Field(default=None, gt=0)
    embedding_dim: int | None = Field(default=None, gt=0)
    multiplex: bool = False
    compression: CompressionSpec | None = None
    quantize: Literal["int8", "int4"] | None = None  # how published versions store it (row-wise)

    @model_validator(mode="after")
    def _multiplex_is_hashed(self) -> TableSpec:
        if self.quantize is not None and self.compression is not None:
            raise ValueError("`quantize` applies to dense tables; drop `compression` or `quantize`")
        if self.multiplex and self.hash_buckets is None:
            raise ValueError("a multiplexed table hashes each feature into its rows: set `hash_buckets` (its rows)")
        if self.multiplex and self.min_count != 1:
            raise ValueError("`min_count` does not apply to a multiplexed table (it has no vocabulary)")
        return self


class BucketSpec(_Strict):
    """A numeric source cut into buckets, each one id of a categorical feature (id 0: missing).

        quantiles: 10              boundaries at the train rows' deciles (equal counts; repeated
                                   values merge buckets), from a mergeable sketch (muxrec.encoding)
        boundaries: [18, 30, 50]   fixed cut points: (-inf, 18) [18, 30) [30, 50) [50, inf)
    """

    quantiles: int | None = Field(default=None, ge=2, le=1000)
    boundaries: tuple[float, ...] | None = Field(default=None, min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _one_rule(self) -> BucketSpec:
        if (self.quantiles is None) == (self.boundaries is None):
            raise ValueError("bucketize needs one of `quantiles` or `boundaries`")
        b = self.boundaries or ()
        if not all(math.isfinite(x) for x in b) or any(x >= y for x, y in zip(b, b[1:])):
            raise ValueError(f"boundaries {list(b)} must be finite and strictly increasing")
        return self


class HistorySpec(_Strict):
    """How a `sequence` feature is derived: the items a user interacted with before this row."""

    user: str  # source column holding the user id
    item: str  # source column holding the item id put in the history
    time: str  # source column ordering the interactions
    label: str | None = None  # keep only interactions whose label is positive
    splits: list[Literal["train", "valid", "test"]] = Field(default_factory=lambda: ["train"])


class Feature(_Strict):
    """One model input. Table / vocabulary settings may be inline (own table) or in `tables`."""

    name: str = Field(pattern=_NAME)
    kind: FeatureKind
    source: str | None = None  # raw column; defaults to `name`
    fill: str | float | None = None  # value used where the source is missing or empty
    # categorical kinds
    table: str | None = None  # share the named table (declared under `tables`)
    min_count: int | None = Field(default=None, ge=1)
    hash_buckets: int | None = Field(default=None, gt=0)
    embedding_dim: int | None = Field(default=None, gt=0)
    slots: int | None = Field(default=None, ge=1, le=16)  # rows looked up and summed (a multiplexed table)
    compression: CompressionSpec | None = None  # of the feature's own table (TableSpec for a shared one)
    quantize: Literal["int8", "int4"] | None = None  # of the feature's own table, in published versions
    slice: tuple[int | None, int | None] | None = None  # python-style substring of the source
    # list kinds
    max_len: int | None = Field(default=None, gt=0)
    pooling: Literal["sum", "mean"] | None = None
    separator: str | None = None  # split a delimited string source into a list
    history: HistorySpec | None = None  # sequence kind: derive the list from past interactions
    bucketize: BucketSpec | None = None  # categorical kind: a numeric source cut into buckets
    # numeric
    normalize: Literal["standard", "minmax", "none"] = "standard"
    # content (text with an encoder, image): a pinned encoder version and the Matryoshka width read
    encoder: str | None = Field(default=None, pattern=ENCODER_REF)
    dim: int | None = Field(default=None, gt=0)
    # None: by kind. A numeric feature without `fill` is required; the other kinds are not: a
    # missing (null or empty) value reads as the missing id / an empty list, in prepared data and
    # in requests alike. `required: true` rejects missing values in both places.
    required: bool | None = None

    @property
    def column(self) -> str:
        return self.source or self.name

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> Feature:
        kind = self.kind
        if kind == FeatureKind.IMAGE and self.encoder is None:
            raise ValueError("an image feature needs `encoder: <name>@<version>` (the vision tower reading it)")
        if self.encoder is not None:
            if kind not in (FeatureKind.TEXT, FeatureKind.IMAGE):
                raise ValueError("`encoder` applies to text and image features")
            if self.dim is None:
                raise ValueError("a feature with an `encoder` needs `dim` (the encoder width it reads, e.g. 32)")
            for attr in ("table", "min_count", "hash_buckets", "embedding_dim", "max_len", "pooling", "separator",
                         "slice", "slots", "compression", "quantize"):
                if getattr(self, attr) is not None:
                    raise ValueError(f"`{attr}` does not apply to a feature read by an encoder")
            return self
        if self.dim is not None:
            raise ValueError("`dim` applies to features read by an `encoder`")
        if kind == FeatureKind.NUMERIC:
            for attr in ("table", "min_count", "hash_buckets", "embedding_dim", "max_len", "pooling",
                         "separator", "slice", "history", "slots", "compression", "quantize"):
                if getattr(self, attr) is not None:
                    raise ValueError(f"`{attr}` does not apply to a numeric feature")
            if self.fill is not None and not isinstance(self.fill, (int, float)):
                raise ValueError("fill of a numeric feature must be a number")
        else:
            if self.normalize != "standard":
                raise ValueError("`normalize` applies to numeric features only")
        if kind in LIST_KINDS and self.max_len is None:
            raise ValueError(f"a {kind.value} feature needs `max_len`")
        if self.bucketize is not None:
            if kind != FeatureKind.CATEGORICAL:
                raise ValueError("`bucketize` applies to categorical features (it makes a numeric source an id)")
            for attr in ("table", "min_count", "hash_buckets", "slice"):
                if getattr(self, attr) is not None:
                    raise ValueError(f"`{attr}` does not apply to a bucketized feature")
            if self.fill is not None and not isinstance(self.fill, (int, float)):
                raise ValueError("fill of a bucketized feature must be a number")
        if self.required and self.fill is not None:
            raise ValueError("`fill` makes a missing value valid; drop `required` or `fill`")
        if self.required is False and kind == FeatureKind.NUMERIC and self.fill is None:
            raise ValueError("a numeric feature without `fill` is required; declare `fill` to make it optional")
        if kind not in LIST_KINDS and self.max_len is not None:
            raise ValueError(f"`max_len` does not apply to a {kind.value} feature")
        if kind == FeatureKind.SEQUENCE and self.pooling is not None:
            raise ValueError("a sequence feature is not pooled; drop `pooling`")
        if kind == FeatureKind.CATEGORICAL and self.pooling is not None:
            raise ValueError("`pooling` applies to multi_categorical and text features")
        if self.history is not None and kind != FeatureKind.SEQUENCE:
            raise ValueError("`history` applies to sequence features only")
        if kind == FeatureKind.TEXT and self.hash_buckets is None and self.table is None:
            raise ValueError("a text feature needs `hash_buckets` (its words are hashed)")
        if self.quantize is not None and self.compression is not None:
            raise ValueError("`quantize` applies to dense tables; drop `compression` or `quantize`")
        if self.slots is not None and (kind != FeatureKind.CATEGORICAL or self.bucketize is not None):
            raise ValueError("`slots` applies to single-valued categorical features (of a multiplexed table)")
        if self.table is not None:
            inline = [a for a in ("min_count", "hash_buckets", "embedding_dim", "compression", "quantize")
                      if getattr(self, a) is not None]
            if inline:
                raise ValueError(f"feature uses shared table {self.table!r}: set {inline} on the table, not the feature")
        return self

    @property
    def is_required(self) -> bool:
        """Whether a missing value is an error (in source data and in requests alike)."""
        if self.required is not None:
            return self.required
        return self.kind == FeatureKind.NUMERIC and self.fill is None

    @property
    def reads_numbers(self) -> bool:
        return self.kind == FeatureKind.NUMERIC or self.bucketize is not None

    @property
    def is_content(self) -> bool:
        """Read by a content encoder into a vector (no embedding table of its own)."""
        return self.encoder is not None

    @property
    def table_name(self) -> str | None:
        if self.kind == FeatureKind.NUMERIC or self.is_content:
            return None
        return self.table or self.name

    @property
    def effective_pooling(self) -> Literal["sum", "mean"] | None:
        if self.kind in (FeatureKind.NUMERIC, FeatureKind.SEQUENCE) or self.is_content:
            return None
        if self.kind == FeatureKind.CATEGORICAL:
            return "sum"
        return self.pooling or "mean"


@dataclass(frozen=True)
class Table:
    """An embedding table after joining the spec's `tables` with inline feature settings."""

    name: str
    features: tuple[str, ...]
    min_count: int
    hash_buckets: int | None
    embedding_dim: int | None  # None: the model's default dim
    bucketize: BucketSpec | None = None  # a bucketized numeric feature's own table
    multiplex: bool = False  # each feature hashed into the rows by its own seed (TableSpec)
    compression: CompressionSpec | None = None  # None: one dense (rows, d) matrix
    quantize: Literal["int8", "int4"] | None = None  # row-wise, in published versions


@dataclass(frozen=True)
class RequestColumn:
    """A raw column a request (or a batch-scoring input) must carry."""

    name: str
    type: Literal["string", "number", "string_list", "integer"]
    required: bool  # Feature.is_required of the features reading it


class FeatureSpec(_Strict):
    name: str
    description: str = ""
    source: SourceSpec
    keys: dict[Literal["user", "item"], str] = Field(default_factory=dict)
    labels: list[LabelSpec] = Field(min_length=1)
    split: SplitSpec
    tables: dict[str, TableSpec] = Field(default_factory=dict)
    features: list[Feature] = Field(min_length=1)
    # How tasks are blended into one figure: early stopping, the registry's headline metric (a weighted
    # mean of task AUCs) and the default ranking order (a weighted sum of task probabilities). Default:
    # the first label alone.
    blend: dict[str, float] = Field(default_factory=dict)

    @field_validator("features")
    @classmethod
    def _unique_names(cls, features: list[Feature]) -> list[Feature]:
        seen: set[str] = set()
        for f in features:
            if f.name in seen:
                raise ValueError(f"feature {f.name!r} is declared twice")
            seen.add(f.name)
        return features

    @model_validator(mode="after")
    def _tables_and_labels(self) -> FeatureSpec:
        names = {f.name for f in self.features}
        earlier: list[str] = []
        for label in self.labels:
            if label.name in names:
                raise ValueError(f"label {label.name!r} has the name of a feature")
            if label.name in earlier:
                raise ValueError(f"label {label.name!r} is declared twice")
            if label.parent is not None and label.parent not in earlier:
                raise ValueError(f"label {label.name!r}: parent {label.parent!r} must be a label declared before "
                                 f"it (declared before: {earlier or 'none'})")
            earlier.append(label.name)
        check_blend(self.blend, self.label_names, "blend")
        for f in self.features:
            if f.history is not None and f.history.label is not None and f.history.label not in self.label_names:
                raise ValueError(f"feature {f.name!r}: history label {f.history.label!r} is not one of the "
                                 f"labels {self.label_names}")
        for f in self.features:
            if f.table is not None and f.table not in self.tables:
                raise ValueError(
                    f"feature {f.name!r} names table {f.table!r}, which is not declared under `tables` "
                    f"(declared: {sorted(self.tables) or 'none'})"
                )
            if f.table is None and f.table_name in self.tables:
                raise ValueError(f"feature {f.name!r} has the name of a shared table; rename one of them")
        used = {f.table for f in self.features if f.table}
        unused = sorted(set(self.tables) - used)
        if unused:
            raise ValueError(f"tables {unused} are declared but no feature uses them")
        for table in self.tables_list():
            kinds = {self.feature(n).kind for n in table.features}
            if FeatureKind.TEXT in kinds and table.hash_buckets is None:
                raise ValueError(f"table {table.name!r} holds text features and needs `hash_buckets`")
            if table.compression is not None and table.compression.method == "mixed_dim" and \
                    (table.hash_buckets is not None or table.bucketize is not None):
                raise ValueError(f"table {table.name!r}: mixed_dim needs a fitted vocabulary (its rows sorted by "
                                 f"frequency), not `hash_buckets` or `bucketize`")
            if table.compression is not None and FeatureKind.TEXT in kinds:
                raise ValueError(f"table {table.name!r}: {table.compression.method} compression does not apply to "
                                 f"text features (their ids are hashed words: lower `hash_buckets` instead)")
            if table.multiplex and FeatureKind.SEQUENCE in kinds:
                raise ValueError(f"table {table.name!r} is multiplexed (each feature hashed by its own seed), so a "
                                 f"sequence feature there would not meet its items' rows; give it a table without "
                                 f"`multiplex`")
        if self.split.cold is not None and self.split.cold.column not in self.keys.values():
            raise ValueError(f"split.cold.column {self.split.cold.column!r} must be a key column "
                             f"(keys: {self.keys or 'none'}): cold items are held out by their id")
        for f in self.features:
            if f.slots is not None and not (f.table is not None and self.tables[f.table].multiplex):
                raise ValueError(f"feature {f.name!r}: `slots` needs a multiplexed shared table "
                                 f"(`table:` naming one with `multiplex: true`)")
        return self

    # ---- derived views ---------------------------------------------------------------------

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature {name!r}; known: {[f.name for f in self.features]}")

    def of_kind(self, *kinds: FeatureKind) -> list[Feature]:
        """Features of these kinds, content features (read by an encoder) left out."""
        return [f for f in self.features if f.kind in kinds and not f.is_content]

    @property
    def content(self) -> list[Feature]:
        """Features read by a content encoder (text with `encoder`, image), in spec order."""
        return [f for f in self.features if f.is_content]

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def task_blend(self) -> dict[str, float]:
        """`blend` with its default (the first label alone) resolved, weights summing to 1."""
        blend = self.blend or {self.labels[0].name: 1.0}
        total = sum(blend.values())
        return {t: blend[t] / total for t in self.label_names if blend.get(t, 0.0) > 0}

    @property
    def label_columns(self) -> list[str]:
        """The label names, then every grade column (`<label>@<grade>`)."""
        return self.label_names + [c for label in self.labels for c in label.grade_columns]

    def tables_list(self) -> list[Table]:
        """Embedding tables in first-use order, each with the features that read it."""
        order: dict[str, list[str]] = {}
        for f in self.features:
            if f.table_name is not None:
                order.setdefault(f.table_name, []).append(f.name)
        tables = []
        for name, feats in order.items():
            shared = self.tables.get(name)
            if shared is not None:
                tables.append(Table(name, tuple(feats), shared.min_count, shared.hash_buckets, shared.embedding_dim,
                                    multiplex=shared.multiplex, compression=shared.compression,
                                    quantize=shared.quantize))
            else:
                f = self.feature(feats[0])
                tables.append(Table(name, (f.name,), f.min_count or 1, f.hash_buckets, f.embedding_dim, f.bucketize,
                                    compression=f.compression, quantize=f.quantize))
        return tables

    def table(self, name: str) -> Table:
        for t in self.tables_list():
            if t.name == name:
                return t
        raise KeyError(name)

    def request_columns(self) -> list[RequestColumn]:
        """The raw columns one row must carry to be scored (what the HTTP API validates)."""
        cols: dict[str, RequestColumn] = {}
        for f in self.features:
            if f.kind == FeatureKind.SEQUENCE and f.history is not None:
                # A derived history arrives as a list of item ids under the feature's own name.
                cols[f.name] = RequestColumn(f.name, "string_list", required=False)
                continue
            if f.kind == FeatureKind.IMAGE:
                typ = "image"  # the image file's bytes, base64-encoded
            elif f.reads_numbers:
                typ = "number"
            elif f.kind in (FeatureKind.MULTI_CATEGORICAL, FeatureKind.SEQUENCE) and f.separator is None:
                typ = "string_list"
            else:
                typ = "string"
            known = cols.get(f.column)
            cols[f.column] = RequestColumn(f.column, known.type if known else typ,
                                           required=f.is_required or (known is not None and known.required))
        return list(cols.values())

    def fingerprint(self) -> str:
        """sha256 of the canonical spec: prepared data and models record it to detect a mismatch."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:  # the spec is frozen: hash it once (encode() checks it per call)
        data = self.model_dump(mode="json")
        if not data["blend"]:
            del data["blend"]
        # Fields added later are left out while unused, so older specs keep their hash.
        for part, defaults in _ADDED_LATER.items():
            items = data[part]
            for item in items if isinstance(items, list) else items.values() if part == "tables" else [items]:
                for key, default in defaults.items():
                    if item[key] == default:
                        del item[key]
                if item.get("compression"):
                    for key in _ADDED_LATER_TO_COMPRESSION:
                        if item["compression"][key] is None:
                            del item["compression"][key]
        canon = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


# Spec fields added after published models recorded their spec's fingerprint, with their defaults.
_ADDED_LATER: dict[str, dict[str, Any]] = {
    "labels": {"grades": [], "positive": None, "when": None, "type": "binary", "weight": 1.0, "parent": None},
    "split": {"row_number": False, "seed": 0, "cold": None},
    "features": {"bucketize": None, "required": None, "slots": None, "compression": None, "quantize": None,
                 "encoder": None, "dim": None},
    "tables": {"multiplex": False, "compression": None, "quantize": None},
}
_ADDED_LATER_TO_COMPRESSION = ("keep", "ramp_steps")


@dataclass(frozen=True)
class TableInput:
    """An embedding table as a model builds it: rows known once the vocabulary is fitted."""

    name: str
    num_embeddings: int
    embedding_dim: int | None
    feature_names: tuple[str, ...]  # pooled features reading this table
    sequence_names: tuple[str, ...]  # sequence features reading this table (one vector per position)
    pooling: Literal["sum", "mean"]
    compression: CompressionSpec | None = None  # None: a dense table
    quantize: Literal["int8", "int4"] | None = None  # a dense table stored row-wise quantized when published

    @property
    def standalone(self) -> bool:
        """Outside the EmbeddingBagCollection: compressed, or to be quantized."""
        return self.compression is not None or self.quantize is not None

    @property
    def changes_for_serving(self) -> bool:
        """Stored otherwise in a published version: quantized, cut to a Matryoshka serve_dim, or pruned sparse."""
        c = self.compression
        return self.quantize is not None or (c is not None and (c.serve_dim is not None or c.method == "prune"))


@dataclass(frozen=True)
class ModelInputs:
    """What a model sees, derived from a FeatureSpec plus the fitted table sizes.

    fields:     the F axis of (B, F, D): every feature in spec order (a sequence is mean-pooled there;
                models that attend over its positions read them through `sequences`)
    pooled:     id features (KeyedJaggedTensor keys, in order): those of dense tables first (the
                EmbeddingBagCollection's), then those of compressed tables
    numeric:    numeric features, the columns of the dense (B, N) tensor
    sequences:  sequence features, (B, L) padded ids looked up position by position
    content:    content features (read by an encoder) -> their vector width, the columns of (B, sum of widths)
    item_feature: the single-valued categorical feature reading the spec's item key (its `keys: {item: ...}`)
    tasks:      label names; a model predicts the first `num_tasks` of them
    grades:     a task's extra cut-point label columns (`grades:` in the spec), training targets only
    parents:    task -> the task it follows in a funnel (`parent:` in the spec)
    weights:    task -> its weight in the training loss
    blend:      task -> its share of the blended metric and ranking score (sums to 1)
    """

    fields: tuple[str, ...]
    pooled: tuple[str, ...]
    numeric: tuple[str, ...]
    sequences: tuple[str, ...]
    max_len: dict[str, int]
    table_of: dict[str, str]
    tables: tuple[TableInput, ...]
    tasks: tuple[str, ...]
    grades: dict[str, tuple[str, ...]] = field(default_factory=dict)
    parents: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    blend: dict[str, float] = field(default_factory=dict)
    content: dict[str, int] = field(default_factory=dict)
    item_feature: str | None = None

    @classmethod
    def from_spec(cls, spec: FeatureSpec, num_embeddings: dict[str, int]) -> ModelInputs:
        tables = []
        for t in spec.tables_list():
            if t.name not in num_embeddings:
                raise SpecError(f"no fitted size for table {t.name!r}; re-run prepare for this spec")
            feats = [spec.feature(n) for n in t.features]
            pooled = tuple(f.name for f in feats if f.kind != FeatureKind.SEQUENCE)
            # One value pools the same either way; several slots of one value are summed.
            poolings = {f.effective_pooling for f in feats
                        if f.effective_pooling and (f.kind != FeatureKind.CATEGORICAL or (f.slots or 1) > 1)}
            if len(poolings) > 1:
                raise SpecError(f"table {t.name!r}: its features ask for different pooling {sorted(poolings)}")
            rows = num_embeddings[t.name]
            if t.compression is not None and t.compression.buckets is not None and t.compression.buckets >= rows:
                raise SpecError(f"table {t.name!r}: qr buckets {t.compression.buckets} >= its {rows} rows, nothing "
                                f"to compress; lower `buckets` or drop `compression`")
            tables.append(TableInput(t.name, rows, t.embedding_dim, pooled,
                                     tuple(f.name for f in feats if f.kind == FeatureKind.SEQUENCE),
                                     poolings.pop() if poolings else "sum", t.compression, t.quantize))
        fields = tuple(f.name for f in spec.features)
        compressed = {n for t in tables if t.standalone for n in t.feature_names}
        pooled = [f.name for f in spec.of_kind(FeatureKind.CATEGORICAL, FeatureKind.MULTI_CATEGORICAL, FeatureKind.TEXT)]
        return cls(
            fields=fields,
            # Features of dense tables first: the EmbeddingBagCollection reads that leading part of the KJT.
            pooled=tuple(sorted(pooled, key=lambda name: name in compressed)),
            numeric=tuple(f.name for f in spec.of_kind(FeatureKind.NUMERIC)),
            sequences=tuple(f.name for f in spec.of_kind(FeatureKind.SEQUENCE)),
            max_len={f.name: f.max_len or f.slots for f in spec.features if (f.max_len or f.slots) is not None},
            table_of={f.name: f.table_name for f in spec.features if f.table_name is not None},
            tables=tuple(tables),
            tasks=tuple(spec.label_names),
            grades={label.name: label.grade_columns for label in spec.labels if label.grades},
            parents={label.name: label.parent for label in spec.labels if label.parent is not None},
            weights={label.name: label.weight for label in spec.labels},
            blend=spec.task_blend,
            content={f.name: f.dim for f in spec.content},
            item_feature=next((f.name for f in spec.of_kind(FeatureKind.CATEGORICAL)
                               if f.column == spec.keys.get("item") and (f.slots or 1) == 1), None),
        )

    def task_blend(self) -> dict[str, float]:
        """`blend`, or the first task alone when unset (inputs built by hand)."""
        return self.blend or {self.tasks[0]: 1.0}

    def parent_index(self, task: str) -> int | None:
        """The position of `task`'s parent among `tasks`, or None."""
        parent = self.parents.get(task)
        return None if parent is None else self.tasks.index(parent)

    @property
    def label_columns(self) -> tuple[str, ...]:
        """Every label column a training row carries: the tasks, then each task's grade columns."""
        return self.tasks + tuple(c for t in self.tasks for c in self.grades.get(t, ()))

    @property
    def num_fields(self) -> int:
        return len(self.fields)


def check_blend(blend: dict[str, float], tasks: list[str] | tuple[str, ...], where: str) -> None:
    """Raise ValueError naming the problem unless `blend` weighs known tasks with finite weights >= 0,
    at least one of them > 0 (an empty blend is allowed: it means the default)."""
    unknown = sorted(set(blend) - set(tasks))
    if unknown:
        raise ValueError(f"{where}: unknown task(s) {unknown}; tasks: {list(tasks)}")
    for task, w in blend.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{where}.{task}: weight must be a finite number >= 0, got {w!r}")
    if blend and not sum(blend.values()) > 0:
        raise ValueError(f"{where}: at least one weight must be > 0")


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_spec(data: Any, origin: str = "<spec>") -> FeatureSpec:
    """Validate a loaded mapping into a FeatureSpec; raise SpecError naming each bad field."""
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: a feature spec must be a mapping, got {type(data).__name__}")
    try:
        return FeatureSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(f"{origin}: {_format_validation_error(err)}") from None


def load_spec(path: str | Path) -> FeatureSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"feature spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: malformed YAML{where}: {getattr(err, 'problem', err)}") from None
    return parse_spec(data, origin=str(path))


def spec_from_yaml(text: str, origin: str = "<spec>") -> FeatureSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{origin}: malformed YAML: {err}") from None
    return parse_spec(data, origin=origin)

