"""Writing pipeline outputs so that reruns replace them and crashes leave nothing half-written."""

from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data import Dataset


class _Parts:
    """folder/part-00000.parquet, part-00001.parquet, ...: a new file every `rows_per_file` rows."""

    def __init__(self, folder: Path, rows_per_file: int):
        self.folder, self.rows_per_file = Path(folder), rows_per_file
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer: pq.ParquetWriter | None = None
        self.files = self.in_file = self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.folder / f"part-{self.files:05d}.parquet", table.schema)
            self.files += 1
        self.writer.write_table(table.cast(self.writer.schema))
        self.in_file += table.num_rows
        self.rows += table.num_rows
        if self.in_file >= self.rows_per_file:
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer, self.in_file = None, 0


def _batches(ds: Dataset) -> Iterator[pa.Table]:
    return ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=2)


def write_parquet(ds: Dataset, folder: Path, rows_per_file: int = 1_000_000,
                  on_rows: Callable[[int], object] | None = None) -> int:
    """Write `ds` to folder/part-00000.parquet, part-00001.parquet, ... in dataset order; return rows.

    Ray's own Parquet writer coalesces blocks into files in the order they finish, so two runs over
    the same input can write the same rows in different orders (seen here in 3 of 15 reruns). The
    blocks are still produced in parallel; only the writing is sequential, in the order Ray Data
    yields them (preserve_order is on, see ray_env), which makes a rerun's files identical. The
    driver holds a few blocks at a time, never the dataset. `on_rows(n)` is called as each block (n rows)
    arrives, e.g. to move a progress bar.
    """
    return write_parquet_by(ds, None, {None: folder}, rows_per_file, on_rows)[None]


def write_parquet_by(ds: Dataset, column: str | None, folders: dict, rows_per_file: int = 1_000_000,
                     on_rows: Callable[[int], object] | None = None) -> dict:
    """Like write_parquet, in one pass, routing rows by the value of `column` (dropped) to folders[value].

    Values without a folder are an error. Returns the rows written per value.
    """
    parts = {value: _Parts(folder, rows_per_file) for value, folder in folders.items()}
    try:
        for batch in _batches(ds):
            if on_rows is not None:
                on_rows(batch.num_rows)
            if column is None:
                parts[None].write(batch)
                continue
            keys = batch[column]
            rest = batch.drop_columns([column])
            unknown = set(pc.unique(keys).to_pylist()) - set(parts)
            if unknown:
                raise ValueError(f"column {column!r} holds {sorted(map(str, unknown))}, outside {list(parts)}")
            for value, out in parts.items():
                out.write(rest.filter(pc.equal(keys, value)))
    finally:
        for out in parts.values():
            out.close()
    return {value: out.rows for value, out in parts.items()}


@contextmanager
def replacing(final: Path) -> Iterator[Path]:
    """Yield a staging folder beside `final`; on success it replaces `final`, on failure it is removed.

    Readers see the old folder or the new one, never a mix or a half-written one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.staging-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def collect(ds: Dataset, schema: pa.Schema) -> pa.Table:
    """Every row of `ds` on the driver as one table of `schema` (for small results: distinct values, vectors)."""
    blocks = [b for b in ray.get(ds.to_arrow_refs()) if b.num_rows]
    return pa.concat_tables([b.select(schema.names).cast(schema) for b in blocks]) if blocks else schema.empty_table()
