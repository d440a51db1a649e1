"""Raw rows of a spec's `source` as a Ray Data stream: nothing but small plans on the driver.

    parquet / csv   a file or a folder of files, read in parallel by Ray tasks (Parquet one row group
                    per task, CSV streamed in batches, one file per task)
    synthetic       chunks of muxrec.data.synthetic made inside Ray tasks, CHUNKS_PER_TASK per task
    movielens-100k  loaded on the driver (100k rows), then the same stream as the others

Every row carries its position in the source in ROW_COLUMN: split rules (`row_number: true`) and
data errors read it, and steps that regroup rows (behaviour histories) restore the source order
with it, so a rerun writes the same files whatever the block layout. For a folder of files the
position is `file index * 2**32 + row within the file` (files in sorted path order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import ray
from ray.data import Dataset

from muxrec.data import find_dataset, synthetic_config
from muxrec.data.movielens import load_ml100k
from muxrec.data.synthetic import SyntheticConfig, generate_chunk, num_chunks
from muxrec.encoding import FILE_ROW_STRIDE, ROW_NUMBER_COLUMN
from muxrec.errors import DataNotFoundError
from muxrec.spec import SourceSpec

ROW_COLUMN = ROW_NUMBER_COLUMN
_BLOCK_ROWS = 20_000


def _synthetic_chunks(batch: dict[str, np.ndarray], cfg: SyntheticConfig) -> pa.Table:
    tables = [generate_chunk(cfg, int(c)) for c in batch["id"]]
    table = pa.concat_tables(tables)
    first = int(batch["id"][0]) * cfg.chunk_rows
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
        return ray.data.from_arrow([table.slice(i, _BLOCK_ROWS)
                                    for i in range(0, max(table.num_rows, 1), _BLOCK_ROWS)])
    path = Path(source.path)
    if not path.exists():
        raise DataNotFoundError(f"source path {path} does not exist")
    files = data_files(path)
    if not files:
        raise DataNotFoundError(f"source folder {path} holds no files")
    if source.loader == "parquet":
        pieces = [{"path": str(f), "file": i, "group": g, "offset": offset}
                  for i, f in enumerate(files) for g, offset in enumerate(_row_group_offsets(f))]
        reader = _read_parquet_group
    else:
        pieces = [{"path": str(f), "file": i, "group": 0, "offset": 0} for i, f in enumerate(files)]
        reader = _read_csv_file
    return ray.data.from_items(pieces, override_num_blocks=len(pieces)).map_batches(
        reader, batch_size=1, batch_format="pyarrow")


def data_files(path: Path) -> list[Path]:
    """The files of a file source, in order: `path` itself, or every file under it but hidden and `_` ones."""
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))


def estimated_rows(source: SourceSpec) -> int:
    """About how many rows `source` holds, without reading them: a synthetic source's row count, Parquet
    footers, 100 bytes per CSV row. Picks Ray Data's shuffle (muxrec.ray_env.shuffle_strategy)."""
    if source.loader == "synthetic":
        return synthetic_config(source).rows
    if source.loader == "movielens-100k":
        return 100_000
    path = Path(source.path)
    files = data_files(path) if path.exists() else []
    if source.loader == "parquet":
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return sum(f.stat().st_size for f in files) // 100


def _row_group_offsets(path: Path) -> list[int]:
    """Where each row group of a Parquet file starts (from the footer: no data is read)."""
    meta = pq.ParquetFile(path).metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    return list(np.cumsum([0, *sizes[:-1]])) if sizes else []


def _positions(piece: pa.Table, rows: int, start: int) -> pa.Array:
    first = int(piece["file"][0].as_py()) * FILE_ROW_STRIDE + start
    return pa.array(np.arange(first, first + rows, dtype=np.int64))


def _read_parquet_group(piece: pa.Table) -> pa.Table:
    """One row group of one Parquet file, with its rows' source positions."""
    group = pq.ParquetFile(piece["path"][0].as_py()).read_row_group(int(piece["group"][0].as_py()))
    return group.append_column(ROW_COLUMN, _positions(piece, group.num_rows, int(piece["offset"][0].as_py())))


def _read_csv_file(piece: pa.Table):
    """One CSV file with its rows' source positions, handed on in blocks.

    The whole file is parsed at once so that column types are inferred from all its rows (a number
    column with one bad value becomes text, and derive names the feature, column and row).
    """
    table = pacsv.read_csv(piece["path"][0].as_py())
    table = table.append_column(ROW_COLUMN, _positions(piece, table.num_rows, 0))
    for start in range(0, table.num_rows, _BLOCK_ROWS):
        yield table.slice(start, _BLOCK_ROWS)
