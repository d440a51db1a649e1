"""MovieLens-100K from ../shared/data: the loader and the fixed benchmark protocol."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from muxrec.data import find_dataset, load_source
from muxrec.data.movielens import load_ml100k
from muxrec.encoding import SPLIT_COLUMN, derive
from muxrec.errors import DataNotFoundError
from muxrec.spec import load_spec

from tests.conftest import CONFIGS


def test_loader_returns_one_arrow_row_per_rating(ml100k_dir):
    table = load_ml100k(ml100k_dir)
    assert table.num_rows == 100_000
    assert table.column_names == ["user_id", "item_id", "rating", "timestamp", "age", "gender", "occupation",
                                  "zip_code", "title", "release_date", "genres", "item_text"]
    first = table.slice(0, 1).to_pylist()[0]
    assert (first["user_id"], first["item_id"], first["rating"]) == (196, 242, 3)  # u.data order
    assert first["gender"] in ("M", "F") and isinstance(first["genres"], list) and first["genres"]
    assert pc.min(pc.list_value_length(table["genres"])).as_py() >= 1


def test_protocol_split_sizes_and_label(ml100k_dir):
    spec = load_spec(CONFIGS / "ml-100k.yaml")
    derived = derive(load_source(spec.source), spec)
    counts = dict(zip(*[pc.value_counts(derived[SPLIT_COLUMN]).field(k).to_pylist() for k in ("values", "counts")]))
    assert counts == {"train": 80_004, "valid": 9_976, "test": 10_020}
    raw = load_ml100k(ml100k_dir)
    assert derived["click"].to_pylist()[:5] == [float(r >= 4) for r in raw["rating"].to_pylist()[:5]]
    years = derived["release_year"]
    assert pc.sum(pc.equal(years, "unknown")).as_py() >= 1
    known = years.filter(pc.not_equal(years, "unknown"))
    assert pc.all(pc.match_substring_regex(known, r"^(19|20)\d\d$")).as_py()


def test_missing_data_message_names_both_options(tmp_path, monkeypatch):
    monkeypatch.setenv("MUXREC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError) as err:
        find_dataset("ml-100k")
    assert "MUXREC_DATA_DIR" in str(err.value) and "muxrec data download ml-100k" in str(err.value)
