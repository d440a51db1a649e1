"""Preprocessing on Ray Data: raw rows -> derived features -> vocabularies (train only) -> Parquet.

    prepared/<spec name>/
        spec.yaml  vocabulary.json  stats.json
        train/part-00000.parquet ...   valid/...   test/...

Everything streams: the source is read by Ray Data readers (or made in Ray tasks), behaviour
histories are computed per user group, vocabularies and statistics are merged by Ray Data
aggregations over the train split (the driver receives only the distinct values), and the encoded
rows reach the Parquet writer a few blocks at a time. Two passes run over the source: one to fit,
one to encode and write.

The whole folder is built in a staging folder and swapped in at the end, with deterministic file
names, so a rerun replaces the previous output instead of adding to it, and a failed run leaves the
previous output intact. stats.json records an input fingerprint (spec + source files' names, sizes
and modification times, see `input_fingerprint`): `prepare(..., reuse=True)` returns the existing
output when it matches and every written file is still there, without redoing any work.

This module imports neither torch nor TorchRec (`SplitRows.batches` and specs with content encoders
import them when used): Ray Data's worker processes import it to run its tasks, and each spent ~5 s
importing them and held them for as long as it lived. Measured with them and without, alternated: the
first `prepare` of 16,000 synthetic rows on a fresh Ray 9.0 / 9.2 s and 4.8 / 4.3 s (later ones ~1.5 s
either way); `muxrec prepare --force` of ML-100K, the whole command, 26.5 / 27.4 s and 17.5 / 16.0 s.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
from ray.data import Dataset

from muxrec.data import find_dataset
from muxrec.data.movielens import ML100K_FILES
from muxrec.encoding import SPLIT_COLUMN, SPLITS, Vocabulary, count_values, derive, encode, moments, quantile_sketch
from muxrec.artifacts import ArtifactRegistry
from muxrec.errors import ConfigError, DataError, MuxrecError, find_muxrec_error
from muxrec.log import say
from muxrec.history import add_histories
from muxrec.pipelines.io import collect, replacing, write_parquet_by
from muxrec.pipelines.sources import ROW_COLUMN, estimated_rows, source_dataset
from muxrec.ray_env import ensure_ray, use_shuffle_for
from muxrec.spec import FeatureSpec, ModelInputs, SourceSpec, load_spec

if TYPE_CHECKING:
    import torch

    from muxrec.models import Batch

SPEC_FILE = "spec.yaml"
VOCAB_FILE = "vocabulary.json"
STATS_FILE = "stats.json"


READ_CHUNK_ROWS = 65_536  # rows a split is read in when it is evaluated on the driver


class SplitRows:
    """A prepared split, encoded and batched chunk by chunk in stored order (`pipelines.loop.Rows`)."""

    def __init__(self, prepared: PreparedData, split: str, chunk_rows: int):
        self.dataset = pads.dataset(prepared.split_dir(split), format="parquet")
        self.inputs = prepared.inputs
        self.chunk_rows = chunk_rows

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        from muxrec.models import EncodedRows  # torch: see the module docstring

        if generator is not None:
            raise ValueError("SplitRows reads a split in its stored order: it cannot shuffle")
        for chunk in self.dataset.to_batches(batch_size=max(self.chunk_rows, batch_size)):
            yield from EncodedRows(pa.Table.from_batches([chunk]), self.inputs).batches(batch_size)


@dataclass(frozen=True)
class PreparedData:
    """A prepared folder. The vocabulary is read when first used: at a few million ids its JSON costs a
    few hundred MB to parse, which a driver that only orchestrates (e.g. `train` with large data) skips."""

    root: Path
    spec: FeatureSpec
    stats: dict

    @cached_property
    def vocab(self) -> Vocabulary:
        vocab = Vocabulary.load(self.root / VOCAB_FILE)
        if vocab.spec_fingerprint != self.spec.fingerprint():
            raise DataError(f"{self.root}: the vocabulary does not match spec.yaml; re-run prepare")
        return vocab

    @property
    def inputs(self) -> ModelInputs:
        return ModelInputs.from_spec(self.spec, self.vocab.num_embeddings())

    def split_dir(self, split: str) -> Path:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; splits: {list(SPLITS)}")
        return self.rows_root / split

    @property
    def rows_root(self) -> Path:
        """The folder holding the Parquet splits: this one, or for a view the prepared data it selects from."""
        return self.root.parent / self.stats["view_of"] if "view_of" in self.stats else self.root

    def positive_rates(self, split: str = "train") -> dict[str, float]:
        """Each label column's positive rate in `split`, as prepare measured it."""
        rates = self.stats["splits"][split]
        return {c: rates[f"{c}_rate"] for c in self.spec.label_columns if rates.get(f"{c}_rate") is not None}

    def read(self, split: str) -> pa.Table:
        return pads.dataset(self.split_dir(split), format="parquet").to_table()

    def read_head(self, split: str, rows: int) -> pa.Table:
        """The split's first `rows` rows (all of them when it holds fewer)."""
        return pads.dataset(self.split_dir(split), format="parquet").head(rows)

    def rows(self, split: str, chunk_rows: int = READ_CHUNK_ROWS) -> SplitRows:
        """The split as `Rows` read from disk `chunk_rows` at a time, in order: for evaluating on the driver,
        whose memory must not grow with the data."""
        return SplitRows(self, split, chunk_rows)

    @classmethod
    def load(cls, root: str | Path) -> PreparedData:
        root = Path(root).resolve()  # Ray workers run in other folders
        if not (root / VOCAB_FILE).is_file():
            raise DataError(f"{root} holds no prepared data; run `muxrec prepare --spec <spec.yaml>` first")
        prepared = cls(root, load_spec(root / SPEC_FILE), json.loads((root / STATS_FILE).read_text()))
        if prepared.rows_root != root and not (prepared.rows_root / VOCAB_FILE).is_file():
            raise DataError(f"{root} reads the prepared rows of {prepared.stats['view_of']!r}, which are gone; "
                            f"run `muxrec prepare --spec <spec.yaml>` again")
        return prepared


def _rows_of(table: pa.Table, split: str) -> pa.Table:
    return table.filter(pc.equal(table[SPLIT_COLUMN], split)).drop_columns([SPLIT_COLUMN])


def _partitions() -> int:
    """Shuffle partitions: a few per CPU of the cluster (Ray's default of 200 costs more than it gains here)."""
    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))


def with_histories(ds: Dataset, spec: FeatureSpec) -> Dataset:
    """Add every `history:` feature, grouping rows by user; restore the source order when it is known."""
    users = list(dict.fromkeys(f.history.user for f in spec.features if f.history))
    if not users:
        return ds
    in_order = ROW_COLUMN in ds.schema().names
    for user in users:
        ds = ds.groupby(user, num_partitions=_partitions()).map_groups(add_histories, fn_kwargs={"spec": spec, "user": user},
                                         batch_format="pyarrow")
    # Materialised once: both passes over the rows (fit, then encode) read it instead of regrouping.
    return (ds.sort(ROW_COLUMN) if in_order else ds).materialize()


# A block's train statistics travel as one table: count_values rows, moments rows and quantile
# sketch rows side by side (each kind fills its own columns; the sketch's are prefixed).
_SKETCH_COLUMNS = {"feature": "sketch_feature", "value": "sketch_value", "weight": "sketch_weight"}


def _train_statistics(derived: pa.Table, spec: FeatureSpec) -> pa.Table:
    """count_values, moments and quantile_sketch of a block's train rows, as one table."""
    train = _rows_of(derived, "train")
    sketch = quantile_sketch(train, spec)
    sketch = sketch.rename_columns([_SKETCH_COLUMNS[c] for c in sketch.column_names])
    return pa.concat_tables([count_values(train, spec), moments(train, spec), sketch], promote_options="default")


def _part(table: pa.Table, column: str, columns: list[str]) -> pa.Table:
    return table.filter(pc.is_valid(table[column])).select(columns)


def fit_vocabulary(derived: Dataset, spec: FeatureSpec, empty: pa.Table) -> Vocabulary:
    """Vocabularies, numeric statistics and quantile boundaries of the train rows, merged by Ray Data.

    Only the distinct values with their counts (an Arrow table), one row of moments per block and
    numeric feature, and bounded quantile sketches reach the driver. `empty` is a derived table
    without rows (for the schemas).
    """
    stats = derived.map_batches(_train_statistics, fn_kwargs={"spec": spec}, batch_format="pyarrow",
                                batch_size=None).materialize()
    counts_ds = stats.map_batches(_part, fn_kwargs={"column": "table", "columns": ["table", "value", "count"]},
                                  batch_format="pyarrow", batch_size=None)
    counts = counts_ds.groupby(["table", "value"], num_partitions=_partitions()).sum("count").rename_columns({"sum(count)": "count"})
    moments_ds = stats.map_batches(
        _part, fn_kwargs={"column": "feature", "columns": ["feature", "count", "sum", "sumsq", "min", "max"]},
        batch_format="pyarrow", batch_size=None)
    sketch_schema = quantile_sketch(empty, spec).schema
    sketch_ds = stats.map_batches(_part, fn_kwargs={"column": "sketch_feature",
                                                    "columns": [_SKETCH_COLUMNS[c] for c in sketch_schema.names]},
                                  batch_format="pyarrow", batch_size=None)
    renamed = pa.schema([pa.field(_SKETCH_COLUMNS[f.name], f.type) for f in sketch_schema])
    sketches = collect(sketch_ds, renamed).rename_columns(sketch_schema.names)
    return Vocabulary.fit(spec, collect(counts, count_values(empty, spec).schema),
                          collect(moments_ds, moments(empty, spec).schema), sketches)


def _source_files(source: SourceSpec) -> list[Path]:
    if source.loader == "synthetic":
        return []
    if source.loader == "movielens-100k":
        root = Path(source.path) if source.path else find_dataset("ml-100k")
        return [root / f for f in ML100K_FILES]
    path = Path(source.path)
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def input_fingerprint(spec: FeatureSpec) -> str:
    """The spec's fingerprint + every source file's path, size and modification time (synthetic: the spec)."""
    h = hashlib.sha256(spec.fingerprint().encode())
    for p in _source_files(spec.source):
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _label_rates(folder: Path, labels: list[str]) -> dict[str, float | None]:
    rows, sums = 0, dict.fromkeys(labels, 0.0)
    for part in sorted(folder.glob("*.parquet")):
        for batch in pq.ParquetFile(part).iter_batches(columns=labels):
            rows += batch.num_rows
            for t in labels:
                sums[t] += pc.sum(batch.column(t)).as_py() or 0.0
    return {f"{t}_rate": (sums[t] / rows if rows else None) for t in labels}


def _reusable(root: Path, fingerprint: str) -> PreparedData | None:
    try:
        prepared = PreparedData.load(root)
    except (MuxrecError, OSError, ValueError):
        return None
    files = prepared.stats.get("files", {})
    if prepared.stats.get("input_fingerprint") != fingerprint or not files:
        return None
    if any(not (root / name).is_file() or (root / name).stat().st_size != size for name, size in files.items()):
        return None
    if "view_of" in prepared.stats:  # a view is as current as the rows it reads
        parent = _current(root.parent / prepared.stats["view_of"])
        if parent is None or parent.stats["input_fingerprint"] != prepared.stats["parent_input_fingerprint"]:
            return None
    return prepared


def _current(root: Path) -> PreparedData | None:
    """The prepared data at `root` if it is complete and made from its spec and today's source files."""
    try:
        spec = load_spec(root / SPEC_FILE)
    except (MuxrecError, OSError):
        return None
    return _reusable(root, input_fingerprint(spec))


# ---- views: a spec that only drops features reads the rows of one that has them ----------------------

_SAME = ("source", "keys", "labels", "split", "blend")  # what a view and the data it reads must share


def _selects_from(spec: FeatureSpec, parent: FeatureSpec) -> bool:
    """Whether every feature of `spec` is in `parent`, defined alike, over the same rows and labels."""
    if parent.name == spec.name or any(getattr(spec, k) != getattr(parent, k) for k in _SAME):
        return False
    theirs = {f.name: f for f in parent.features}
    for f in spec.features:
        if theirs.get(f.name) != f or (f.table is not None and spec.tables[f.table] != parent.tables.get(f.table)):
            return False
    return True


def find_superset(spec: FeatureSpec, out_root: Path) -> PreparedData | None:
    """Current prepared data under out_root whose spec has every feature of `spec` (the fewest extra first)."""
    found = []
    for spec_file in sorted(out_root.glob(f"*/{SPEC_FILE}")) if out_root.is_dir() else []:
        try:
            parent_spec = load_spec(spec_file)
        except MuxrecError:
            continue
        if _selects_from(spec, parent_spec) and (parent := _current(spec_file.parent)) is not None \
                and "view_of" not in parent.stats:
            found.append(parent)
    return min(found, key=lambda p: (len(p.spec.features), p.root.name), default=None)


def write_view(spec: FeatureSpec, parent: PreparedData, out_root: Path) -> PreparedData:
    """Prepared data for `spec` that reads `parent`'s rows: no row is read or written.

    The vocabularies are the parent's (a shared table keeps the ids it was fitted with, also for
    values only a dropped feature brought), restricted to the tables and numeric features `spec` uses;
    its own spec.yaml and fingerprint, so models trained on it record and serve `spec`.
    """
    tables = {t.name for t in spec.tables_list()}
    numeric = {f.name for f in spec.features} & set(parent.vocab.numeric)
    vocab = Vocabulary(spec.fingerprint(), {n: t for n, t in parent.vocab.tables.items() if n in tables},
                       {n: s for n, s in parent.vocab.numeric.items() if n in numeric})
    content = {f.encoder for f in spec.content}
    summary = {"spec": spec.name, "spec_fingerprint": spec.fingerprint(), "input_fingerprint": input_fingerprint(spec),
               "view_of": parent.root.name, "parent_input_fingerprint": parent.stats["input_fingerprint"],
               **({"encoders": {k: v for k, v in parent.stats["encoders"].items() if k in content}}
                  if content else {}),
               "splits": parent.stats["splits"]}
    with replacing(out_root / spec.name) as staging:
        (staging / SPEC_FILE).write_text(spec.to_yaml())
        vocab.save(staging / VOCAB_FILE)
        summary["files"] = {name: (staging / name).stat().st_size for name in (SPEC_FILE, VOCAB_FILE)}
        (staging / STATS_FILE).write_text(json.dumps(summary, indent=1))
    say(f"{spec.name}: reading the prepared rows of {parent.spec.name} (a subset of its features; nothing re-prepared)")
    return PreparedData.load(out_root / spec.name)


def prepare(spec: FeatureSpec, out_root: str | Path, reuse: bool = False,
            registry: str | Path | None = None) -> PreparedData:
    """Run preprocessing for `spec` into out_root/<spec.name>/ and return the result.

    With `reuse`, an existing output made from the same spec and the same source files is returned
    as it is, and a spec that only drops features of one already prepared under out_root (the
    derived spec of `muxrec select`) becomes a view of that one's rows (`write_view`). A spec with content features (text / image read by a pinned encoder) needs the `registry`
    holding those encoder versions: their vectors are computed once per distinct value (pipelines.content).
    """
    out_root = Path(out_root)
    digests = {}
    if spec.content:
        # Content encoders are torch models (see the module docstring).
        from muxrec.models.encoders.content import encoder_digests
        from muxrec.pipelines.content import catalog_vectors, distinct_values, with_catalog

        if registry is None:
            raise ConfigError(f"spec {spec.name!r} has content features read by encoders "
                              f"{sorted({f.encoder for f in spec.content})}: give the registry holding them")
        digests = encoder_digests(spec, ArtifactRegistry(registry))
    fingerprint = input_fingerprint(spec)
    if reuse and (done := _reusable(out_root / spec.name, fingerprint)) is not None:
        return done
    if reuse and (parent := find_superset(spec, out_root)) is not None:
        return write_view(spec, parent, out_root)
    ensure_ray()
    use_shuffle_for(estimated_rows(spec.source))
    try:
        raw = source_dataset(spec.source)
        # Schema errors (missing columns, wrong types) before any work on the rows.
        empty = derive(add_histories(raw.schema().base_schema.empty_table(), spec), spec)
        derived = with_histories(raw, spec).map_batches(derive, fn_kwargs={"spec": spec}, batch_format="pyarrow",
                                                        batch_size=None)
        vocab = fit_vocabulary(derived, spec, empty)
        if spec.content:
            say(f"encoding content with {', '.join(sorted(digests))}")
            catalog = catalog_vectors(distinct_values(derived, spec), spec, registry)
            derived = derived.map_batches(with_catalog, fn_kwargs={"spec": spec, "catalog": catalog},
                                          batch_format="pyarrow", batch_size=None)
        encoded = derived.map_batches(encode, fn_kwargs={"spec": spec, "vocab": vocab},
                                      batch_format="pyarrow", batch_size=None)

        summary = {"spec": spec.name, "spec_fingerprint": spec.fingerprint(), "input_fingerprint": fingerprint,
                   **({"encoders": digests} if digests else {}), "splits": {}}
        with replacing(out_root / spec.name) as staging:
            rows = write_parquet_by(encoded, SPLIT_COLUMN, {s: staging / s for s in SPLITS})
            for split in SPLITS:
                summary["splits"][split] = {"rows": rows[split],
                                            **_label_rates(staging / split, spec.label_columns)}
            (staging / SPEC_FILE).write_text(spec.to_yaml())
            vocab.save(staging / VOCAB_FILE)
            summary["files"] = {str(p.relative_to(staging)): p.stat().st_size
                                for p in sorted(staging.rglob("*")) if p.is_file()}
            (staging / STATS_FILE).write_text(json.dumps(summary, indent=1))
    except Exception as err:  # Ray re-raises task errors wrapped; surface ours as they are.
        ours = find_muxrec_error(err)
        if ours is not None and ours is not err:
            raise ours from None
        raise
    return PreparedData.load(out_root / spec.name)


def prepare_cached(spec: FeatureSpec, out_root: str | Path, registry: str | Path | None = None) -> PreparedData:
    """Reuse out_root/<spec.name> when it was prepared from this exact spec and source, else prepare."""
    return prepare(spec, out_root, reuse=True, registry=registry)
