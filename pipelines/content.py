"""Item vectors for a catalog with Ray Data: batch inference, one encoder load per worker.

`catalog_vectors` encodes the distinct values (titles, image paths) of a spec's content features: the
values go into a Ray dataset, an actor pool of `_Encode` workers (each loads the pinned encoder versions
once, in its constructor) maps batches of them to vectors, and the driver receives a small table of
value -> vector per feature. `prepare` then joins each block's rows to it (`with_catalog`), so a title
seen on 10,000 rows is encoded once, and `muxrec encoders catalog` writes it to Parquet for other systems.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data import Dataset

from muxrec.artifacts import ArtifactRegistry
from muxrec.encoding import attach_content, derive
from muxrec.errors import ConfigError, DataError
from muxrec.pipelines.sources import source_dataset
from muxrec.ray_env import ensure_ray
from muxrec.pipelines.io import collect
from muxrec.models.encoders.content import ContentVectors
from muxrec.spec import FeatureSpec, parse_spec, spec_from_yaml

VALUE, VECTOR, FEATURE = "value", "vector", "feature"
ENCODE_BATCH = 256  # values per forward pass of a worker
CATALOG_SCHEMA = pa.schema([(FEATURE, pa.string()), (VALUE, pa.string()), (VECTOR, pa.list_(pa.float32()))])


class _Encode:
    """A Ray Data worker: the spec's pinned encoders, loaded once, mapping batches of distinct values."""

    def __init__(self, spec_yaml: str, registry: str):
        self.vectors = ContentVectors(spec_from_yaml(spec_yaml), ArtifactRegistry(registry))

    def __call__(self, batch: pa.Table) -> pa.Table:
        parts = []
        for name in pc.unique(batch[FEATURE]).to_pylist():
            rows = batch.filter(pc.equal(batch[FEATURE], name))
            f = self.vectors.spec.feature(name)
            v = self.vectors.catalog(f, rows[VALUE].to_pylist())  # (n, dim)
            parts.append(pa.table({FEATURE: rows[FEATURE], VALUE: rows[VALUE],
                                   VECTOR: pa.array(list(v.astype(np.float32)), pa.list_(pa.float32()))}))
        return pa.concat_tables(parts)


def distinct_values(ds: Dataset, spec: FeatureSpec) -> pa.Table:
    """(feature, value): every distinct value of every content feature of derived rows `ds`."""
    names = [f.name for f in spec.content]

    def _distinct(block: pa.Table) -> pa.Table:
        parts = []
        for name in names:
            values = pc.unique(block[name].combine_chunks())
            parts.append(pa.table({FEATURE: pa.array([name] * len(values), pa.string()), VALUE: values}))
        return pa.concat_tables(parts)

    schema = pa.schema([(FEATURE, pa.string()), (VALUE, pa.string())])
    table = collect(ds.map_batches(_distinct, batch_format="pyarrow", batch_size=None), schema)
    return table.group_by([FEATURE, VALUE]).aggregate([]).sort_by([(FEATURE, "ascending"), (VALUE, "ascending")])


def catalog_vectors(values: pa.Table, spec: FeatureSpec, registry: str | Path, workers: int = 1) -> pa.Table:
    """(feature, value, vector) for `values` (feature, value), encoded by `workers` Ray Data actors."""
    if not values.num_rows:
        return CATALOG_SCHEMA.empty_table()
    ds = ray.data.from_arrow(values).repartition(max(1, -(-values.num_rows // ENCODE_BATCH)))
    out = ds.map_batches(_Encode, fn_constructor_args=(spec.to_yaml(), str(registry)), concurrency=workers,
                         batch_size=ENCODE_BATCH, batch_format="pyarrow")
    return collect(out, CATALOG_SCHEMA)


def with_catalog(derived: pa.Table, spec: FeatureSpec, catalog: pa.Table) -> pa.Table:
    """`derived` with each content feature's values replaced by their catalog vectors."""
    vectors = {}
    for f in spec.content:
        part = catalog.filter(pc.equal(catalog[FEATURE], f.name))
        found = pc.index_in(derived.column(f.name).combine_chunks(), value_set=part[VALUE].combine_chunks())
        if found.null_count:
            raise DataError(f"feature {f.name!r}: {found.null_count} row(s) hold values missing from the catalog")
        table = np.stack(part[VECTOR].to_numpy(zero_copy_only=False)) if part.num_rows else np.zeros((0, f.dim))
        vectors[f.name] = table[found.to_numpy(zero_copy_only=False)]  # (N, dim)
    return attach_content(derived, spec, vectors)


def write_catalog(spec: FeatureSpec, feature: str, registry: ArtifactRegistry, output: Path) -> dict:
    """Parquet (value, vector) of every distinct value of content feature `feature` in the spec's source."""
    f = spec.feature(feature)
    if not f.is_content:
        raise ConfigError(f"feature {feature!r} is not read by an encoder (content features: "
                          f"{[c.name for c in spec.content]})")
    one = parse_spec({**spec.model_dump(mode="json", exclude_defaults=True), "tables": {},
                      "features": [f.model_dump(mode="json", exclude_defaults=True)]})  # the feature alone
    ensure_ray()
    t0 = time.perf_counter()
    derived = source_dataset(one.source).map_batches(derive, fn_kwargs={"spec": one, "labels": False, "split": False},
                                                     batch_format="pyarrow", batch_size=None)
    values = distinct_values(derived, one)
    vectors = catalog_vectors(values, one, registry.root)
    output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(vectors.select([VALUE, VECTOR]), output)
    seconds = time.perf_counter() - t0
    return {"feature": feature, "encoder": f.encoder, "dim": f.dim, "values": vectors.num_rows,
            "output": str(output), "seconds": round(seconds, 1)}
