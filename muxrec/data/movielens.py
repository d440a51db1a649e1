"""MovieLens-100K in the official GroupLens layout (u.data, u.user, u.item, u.genre), as Arrow.

"The MovieLens Datasets: History and Context", Harper & Konstan, ACM TiiS 2015.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv

from muxrec.errors import DataError

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# GroupLens publishes the MD5 of the archive beside it (ml-100k.zip.md5).
ML100K_CHECKSUM = "md5:0e33842e24a9c977be4e0107933c0723"
ML100K_FILES = ("u.data", "u.user", "u.item", "u.genre")


def _read(path: Path, names: list[str], delimiter: str, types: dict[str, pa.DataType]) -> pa.Table:
    if not path.is_file():
        raise DataError(f"MovieLens-100K file {path} is missing")
    return csv.read_csv(
        path,
        # u.item holds Latin-1 titles (e.g. "Les Misérables").
        read_options=csv.ReadOptions(column_names=names, encoding="latin-1"),
        parse_options=csv.ParseOptions(delimiter=delimiter, quote_char=False),
        convert_options=csv.ConvertOptions(column_types=types, strings_can_be_null=False),
    )


def load_ml100k(root: Path) -> pa.Table:
    """One row per rating, joined with the user's and the item's attributes, in u.data order.

    Columns: user_id, item_id, rating, timestamp (int64); age (int64), gender, occupation,
    zip_code (string); title, release_date (string, "" when unknown); genres (list<string>);
    item_text (string: the title and the genre names, what a text tower reads).
    """
    root = Path(root)
    genres = _read(root / "u.genre", ["name", "index"], "|", {"name": pa.string(), "index": pa.int64()})
    genre_names = [n for n, _ in sorted(zip(genres["name"].to_pylist(), genres["index"].to_pylist()),
                                        key=lambda p: p[1])]
    ratings = _read(root / "u.data", ["user_id", "item_id", "rating", "timestamp"], "\t",
                    {c: pa.int64() for c in ("user_id", "item_id", "rating", "timestamp")})
    users = _read(root / "u.user", ["user_id", "age", "gender", "occupation", "zip_code"], "|",
                  {"user_id": pa.int64(), "age": pa.int64(), "gender": pa.string(),
                   "occupation": pa.string(), "zip_code": pa.string()})
    flag_names = [f"g{i}" for i in range(len(genre_names))]
    items = _read(root / "u.item", ["item_id", "title", "release_date", "video_release_date", "imdb_url", *flag_names],
                  "|", {"item_id": pa.int64(), "title": pa.string(), "release_date": pa.string(),
                        "video_release_date": pa.string(), "imdb_url": pa.string(),
                        **{f: pa.int8() for f in flag_names}})
    flags = np.stack([items[f].to_numpy() for f in flag_names], axis=1).astype(bool)  # (items, genres)
    item_genres = pa.array([[genre_names[j] for j in np.flatnonzero(row)] for row in flags], pa.list_(pa.string()))
    # The item's text for a text tower: its title and its genres, e.g. "Toy Story (1995). Animation, Comedy".
    item_text = pa.array([f"{t}. {', '.join(g)}" for t, g in zip(items["title"].to_pylist(), item_genres.to_pylist())],
                         pa.string())
    items = pa.table({"item_id": items["item_id"], "title": items["title"],
                      "release_date": items["release_date"], "genres": item_genres, "item_text": item_text})

    # A lookup join by id keeps u.data order (the split and the DIN histories depend on it).
    columns = {name: ratings[name] for name in ratings.column_names}
    for side, key in ((users, "user_id"), (items, "item_id")):
        position = pc.index_in(ratings[key], value_set=side[key])
        if position.null_count:
            raise DataError(f"{root}: {position.null_count} ratings refer to a {key} missing from its table")
        for name in side.column_names:
            if name != key:
                columns[name] = side[name].take(position)
    joined = pa.table(columns)
    order = ["user_id", "item_id", "rating", "timestamp", "age", "gender", "occupation", "zip_code",
             "title", "release_date", "genres", "item_text"]
    return joined.select(order).combine_chunks()

