"""Raw rows of a spec's `source` as a Ray Data stream: nothing but small plans on the driver.

    parquet / csv   ray.data.read_parquet / read_csv over a file or a folder (files read in parallel)
    synthetic       chunks of muxrec.data.synthetic made inside Ray tasks, CHUNKS_PER_TASK per task
    movielens-100k  loaded on the driver (100k rows), then the same stream as the others

Loaders that know each row's position add ROW_COLUMN, so steps that regroup rows (behaviour
histories) can restore the source order, and a rerun writes the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
from ray.data import Dataset

from muxrec.data import find_dataset, synthetic_config
from muxrec.data.movielens import load_ml100k
from muxrec.data.synthetic import CHUNK_ROWS, SyntheticConfig, generate_chunk, num_chunks
from muxrec.errors import DataNotFoundError
from muxrec.spec import SourceSpec

ROW_COLUMN = "__row"
_DRIVER_BLOCK_ROWS = 20_000


def _synthetic_chunks(batch: dict[str, np.ndarray], cfg: SyntheticConfig) -> pa.Table:
    tables = [generate_chunk(cfg, int(c)) for c in batch["id"]]
    table = pa.concat_tables(tables)
    first = int(batch["id"][0]) * CHUNK_ROWS
    return table.append_column(ROW_COLUMN, pa.array(np.arange(first, first + table.num_rows), pa.int64()))


def source_dataset(source: SourceSpec) -> Dataset:
    """The source's raw rows, streamed; ROW_COLUMN where the loader knows row positions."""
    if source.loader == "synthetic":
        cfg = synthetic_config(source)
        chunks = num_chunks(cfg)
        return ray.data.range(chunks, override_num_blocks=chunks).map_batches(
            _synthetic_chunks, fn_kwargs={"cfg": cfg}, batch_size=1, batch_format="numpy")
    if source.loader == "movielens-100k":
        table = load_ml100k(Path(source.path) if source.path else find_dataset("ml-100k"))
        table = table.append_column(ROW_COLUMN, pa.array(np.arange(table.num_rows), pa.int64()))
        return ray.data.from_arrow([table.slice(i, _DRIVER_BLOCK_ROWS)
                                    for i in range(0, max(table.num_rows, 1), _DRIVER_BLOCK_ROWS)])
    path = Path(source.path)
    if not path.exists():
        raise DataNotFoundError(f"source path {path} does not exist")
    if source.loader == "parquet":
        return ray.data.read_parquet(str(path))
    return ray.data.read_csv(str(path))
