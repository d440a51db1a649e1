"""New datasets by YAML alone: two tables unlike the built-in ones, generated here (seeded, tiny),
written as CSV / Parquet, described by a spec YAML and run through the real pipeline.

  adult-like   a string label ('<=50K' / '>50K'), no id column at all, numbers to bucketize (CSV)
  shop clicks  a text column with nulls, column names with spaces, a string visitor id (Parquet)

Plus the CLI on a bad file: one line naming feature, column, row and value; exit code 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyarrow import csv

from muxrec.artifacts import ArtifactRegistry
from muxrec.config import TrainConfig
from muxrec.encoding import SPLIT_COLUMN, encode, derive, split_of
from muxrec.models import make_config
from muxrec.models.serialization import load_model
from muxrec.pipelines.prepare import prepare
from muxrec.pipelines.train import TrainJob, train
from muxrec.services.schema import RequestSchema
from muxrec.services.settings import ServeSettings
from muxrec.spec import load_spec

from tests.conftest import REPO

pytestmark = pytest.mark.integration

ADULT_YAML = """\
name: adult-like
source: {{loader: csv, path: {path}}}
labels: [{{name: rich, source: income, positive: ['>50K']}}]
split: {{row_number: true, seed: 7, buckets: 10, test: [0], valid: [1]}}
features:
  - {{name: age_band, kind: categorical, source: age, bucketize: {{quantiles: 8}}}}
  - {{name: hours, kind: categorical, source: hours-per-week, bucketize: {{boundaries: [20, 35, 45, 60]}}}}
  - {{name: workclass, kind: categorical}}
  - {{name: education, kind: categorical}}
  - {{name: sex, kind: categorical}}
  - {{name: capital_gain, kind: numeric, source: capital gain}}
"""

SHOP_YAML = """\
name: shop-clicks
source: {{loader: parquet, path: {path}}}
labels: [{{name: click, source: clicked}}]
split: {{hash: [visitor id], buckets: 5, test: [0], valid: [1]}}
features:
  - {{name: shop, kind: categorical, source: shop name}}
  - {{name: title, kind: text, source: product title, max_len: 6, hash_buckets: 128}}
  - {{name: price, kind: numeric, source: unit price, fill: 0}}
  - {{name: price_band, kind: categorical, source: unit price, bucketize: {{quantiles: 5}}}}
"""


def adult_like(n: int, seed: int = 11) -> pa.Table:
    """Census-like rows: income depends on age, education and hours, as in the UCI Adult table."""
    rng = np.random.default_rng(seed)
    age = rng.integers(17, 80, n)
    education = rng.choice(["HS-grad", "Some-college", "Bachelors", "Masters", "Doctorate"], n,
                           p=[0.35, 0.3, 0.2, 0.1, 0.05])
    hours = np.clip(rng.normal(40, 12, n).round(), 1, 99).astype(np.int64)
    gain = np.where(rng.random(n) < 0.9, 0, rng.integers(1000, 20000, n))
    edu_effect = {"HS-grad": -1.0, "Some-college": -0.5, "Bachelors": 0.6, "Masters": 1.2, "Doctorate": 1.6}
    logit = -1.2 + 1.6 * ((age > 30) & (age < 60)) + np.vectorize(edu_effect.get)(education) \
        + 0.05 * (hours - 40) + 1.5 * (gain > 0)
    rich = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pa.table({
        "age": age,
        "workclass": rng.choice(["Private", "Self-emp", "Gov", "?"], n, p=[0.7, 0.12, 0.13, 0.05]),
        "education": education,
        "hours-per-week": hours,
        "capital gain": gain,
        "sex": rng.choice(["Male", "Female"], n),
        "income": np.where(rich, ">50K", "<=50K"),
    })


def shop_clicks(n: int, seed: int = 12) -> pa.Table:
    """Product impressions: a title (null for a quarter of the rows), a shop (sometimes null)."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "blue", "green", "black"], n)
    thing = rng.choice(["shoe", "lamp", "chair", "mug"], n)
    title = np.char.add(np.char.add(colour, " "), thing).astype(object)
    title[rng.random(n) < 0.25] = None
    shop = rng.choice(["Ann's", "Bob & Co", "Cheap Stuff"], n).astype(object)
    shop[rng.random(n) < 0.1] = None
    price = [None if m else float(p) for m, p in zip(rng.random(n) < 0.05, rng.lognormal(3, 0.7, n))]
    clicked = rng.random(n) < np.where(colour == "red", 0.5, 0.15)
    return pa.table({
        "visitor id": [f"v-{i:05d}" for i in rng.integers(0, n // 3, n)],
        "shop name": pa.array(shop, pa.string()),
        "product title": pa.array(title, pa.string()),
        "unit price": pa.array(price, pa.float64()),
        "clicked": clicked.astype(np.int64),
    })


def _split_rows(raw: pa.Table, spec, split: str) -> pa.Table:
    return raw.filter(pc.equal(split_of(raw, spec), split))


def test_adult_like_csv_string_label_no_id_bucketized_numbers(ray_cluster, tmp_path):
    raw = adult_like(6000)
    csv.write_csv(raw, tmp_path / "adult.csv")
    (tmp_path / "adult.yaml").write_text(ADULT_YAML.format(path=tmp_path / "adult.csv"))
    spec = load_spec(tmp_path / "adult.yaml")
    prep = prepare(spec, tmp_path / "prepared")

    splits = prep.stats["splits"]
    assert sum(s["rows"] for s in splits.values()) == 6000
    assert splits["test"]["rows"] == pytest.approx(600, abs=90) and splits["valid"]["rows"] == pytest.approx(600, abs=90)
    # The label is income == '>50K': the positives over all splits are exactly the CSV's.
    positives = sum(round(s["rows"] * s["rich_rate"]) for s in splits.values())
    assert positives == pc.sum(pc.equal(raw["income"], ">50K")).as_py()

    # Explicit boundaries: ids follow the cut points; quantile boundaries come from train rows.
    test_raw = _split_rows(raw, spec, "test")
    test = prep.read("test")
    hours = test_raw["hours-per-week"].to_numpy()
    assert test["hours"].to_pylist() == (1 + np.searchsorted([20, 35, 45, 60], hours, side="right")).tolist()
    cuts = prep.vocab.tables["age_band"].boundaries
    train_ages = np.sort(_split_rows(raw, spec, "train")["age"].to_numpy())
    assert 5 <= len(cuts) <= 7 and list(cuts) == sorted(cuts)
    below = np.searchsorted(train_ages, cuts) / len(train_ages)  # share of train rows under each cut
    np.testing.assert_allclose(below, np.arange(1, 8)[:len(cuts)] / 8, atol=0.03)
    assert set(test["age_band"].to_pylist()) <= set(range(1, len(cuts) + 2))

    # A short training run, then a request built by the HTTP schema and scored by the published model.
    job = TrainJob(str(prep.root), "deepfm", make_config("deepfm", {"embedding_dim": 8, "hidden_units": [32]}),
                   TrainConfig(epochs=3, batch_size=256, lr=5e-3, seed=3, num_workers=0))
    result = train(job, ArtifactRegistry(tmp_path / "registry"), "adult-like", tmp_path / "ray")
    assert result.metrics["test"]["auc"] > 0.7
    schema = RequestSchema(spec, ServeSettings())
    rows = test_raw.drop_columns(["income"]).slice(0, 50).to_pylist()
    table, _ = schema.to_table(schema.Request.model_validate({"candidates": rows}))
    loaded = load_model(result.version)
    online = loaded.predict_raw(table)[:, 0]
    np.testing.assert_allclose(online, loaded.predict_raw(test_raw.slice(0, 50))[:, 0], atol=1e-6)
    assert np.all((online > 0) & (online < 1)) and online.std() > 0.01


def test_shop_clicks_parquet_text_with_nulls_and_spaces_in_column_names(ray_cluster, tmp_path):
    raw = shop_clicks(3000)
    (tmp_path / "data").mkdir()
    pq.write_table(raw, tmp_path / "data" / "part-0.parquet")
    (tmp_path / "shop.yaml").write_text(SHOP_YAML.format(path=tmp_path / "data"))
    spec = load_spec(tmp_path / "shop.yaml")
    prep = prepare(spec, tmp_path / "prepared")
    assert sum(s["rows"] for s in prep.stats["splits"].values()) == 3000

    # Rows with the same visitor share a split (a stable hash of the string id).
    derived = derive(raw, spec)
    visitors = {}
    for v, s in zip(raw["visitor id"].to_pylist(), derived[SPLIT_COLUMN].to_pylist()):
        visitors.setdefault(v, set()).add(s)
    assert all(len(s) == 1 for s in visitors.values())

    # Null titles and shops read as the empty bag and the missing id, in the prepared files ...
    train_raw = _split_rows(raw, spec, "train")
    train = prep.read("train")
    null_title = pc.is_null(train_raw["product title"]).to_numpy(zero_copy_only=False)
    null_shop = pc.is_null(train_raw["shop name"]).to_numpy(zero_copy_only=False)
    assert null_title.sum() > 300 and null_shop.sum() > 100
    assert all(ids == [] for ids, n in zip(train["title"].to_pylist(), null_title) if n)
    assert all(ids for ids, n in zip(train["title"].to_pylist(), null_title) if not n)
    assert set(np.asarray(train["shop"].to_pylist())[null_shop]) == {0}
    # ... and a request that omits those fields encodes to the same ids.
    schema = RequestSchema(spec, ServeSettings())
    rows = [{k: v for k, v in r.items() if v is not None}
            for r in train_raw.drop_columns(["clicked", "visitor id"]).slice(0, 200).to_pylist()]
    assert any("product title" not in r for r in rows) and any("shop name" not in r for r in rows)
    table, _ = schema.to_table(schema.Request.model_validate({"candidates": rows}))
    online = encode(derive(table, spec, labels=False, split=False), spec, prep.vocab)
    for f in spec.features:
        assert online[f.name].to_pylist() == train[f.name].slice(0, 200).to_pylist(), f.name


def _bad_csv(path: Path, rows: int, bad_row: int) -> None:
    prices = [f"{(i * 37) % 100 / 3:.2f}" for i in range(rows)]
    prices[bad_row] = "12,5"  # a decimal comma: the column reads as text
    csv.write_csv(pa.table({"unit price": prices, "y": [i % 2 for i in range(rows)]}), path)


def test_cli_prepare_on_bad_data_prints_one_line_and_exits_2(ray_cluster, tmp_path):
    # More rows than one block (20,000), the bad one in the second block: the row is the source's.
    _bad_csv(tmp_path / "bad.csv", 25_000, 23_456)
    (tmp_path / "bad.yaml").write_text(
        f"name: bad\nsource: {{loader: csv, path: {tmp_path / 'bad.csv'}}}\nlabels: [{{name: y, source: y}}]\n"
        "split: {row_number: true, buckets: 4, test: [0], valid: [1]}\n"
        "features: [{name: price, kind: numeric, source: unit price}]\n")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    env.pop("MUXREC_LOG_LEVEL", None)
    command = [sys.executable, "-m", "muxrec.cli", "prepare", "--spec", str(tmp_path / "bad.yaml"),
               "--out", str(tmp_path / "out")]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert quiet.returncode == 2
    assert quiet.stderr.splitlines() == [
        "muxrec: error: feature 'price' (column 'unit price'): expected numbers, got text, first at row 23456 ('12,5')"]
    loud = subprocess.run([command[0], "-m", "muxrec.cli", "--verbose", *command[3:]], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)
    assert loud.returncode == 2
    assert "Traceback" in loud.stderr and loud.stderr.splitlines()[-1] == quiet.stderr.strip()
    assert not (tmp_path / "out" / "bad").exists()
