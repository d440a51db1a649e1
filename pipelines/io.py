"""Writing pipeline outputs so that reruns replace them and crashes leave nothing half-written."""

from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
from ray.data import Dataset


def write_parquet(ds: Dataset, folder: Path, rows_per_file: int = 1_000_000) -> int:
    """Write `ds` to folder/part-00000.parquet, part-00001.parquet, ... in dataset order; return rows.

    Ray's own Parquet writer coalesces blocks into files in the order they finish, so two runs over
    the same input can write the same rows in different orders (seen here in 3 of 15 reruns). The
    blocks are still produced in parallel; only the writing is sequential, in the order Ray Data
    yields them (preserve_order is on, see ray_env), which makes a rerun's files identical.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writer, files, in_file, total = None, 0, 0, 0
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=2):
            if batch.num_rows == 0:
                continue
            if writer is None:
                writer = pq.ParquetWriter(folder / f"part-{files:05d}.parquet", batch.schema)
                files += 1
            writer.write_table(batch.cast(writer.schema))
            in_file += batch.num_rows
            total += batch.num_rows
            if in_file >= rows_per_file:
                writer.close()
                writer, in_file = None, 0
    finally:
        if writer is not None:
            writer.close()
    return total


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
