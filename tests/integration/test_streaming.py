"""The streaming data plane: sources read by Ray Data readers, synthetic rows made in Ray tasks,
histories grouped by user on Ray Data, vocabularies merged by Ray Data aggregations, reuse of a
finished output, and scoring with an actor pool."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from muxrec.data import load_source
from muxrec.data.synthetic import SyntheticConfig, generate
from muxrec.encoding import SPLIT_COLUMN, derive, encode
from muxrec.history import add_histories
from muxrec.pipelines.prepare import prepare
from muxrec.pipelines.score import _block_count, score
from muxrec.pipelines.sources import ROW_COLUMN, source_dataset
from muxrec.spec import load_spec, parse_spec

from tests.conftest import CONFIGS, MODEL
from tests.helpers import fitted, synthetic_raw, synthetic_spec, tiny_raw, tiny_spec

pytestmark = pytest.mark.integration


def _by_price(table: pa.Table) -> pa.Table:
    return table.sort_by("price")  # prices are continuous random draws: a total order of the rows


def test_parquet_source_in_several_files_prepares_like_the_in_process_pipeline(ray_cluster, tmp_path):
    raw = tiny_raw(900, seed=4)
    src = tmp_path / "src"
    src.mkdir()
    for i, start in enumerate(range(0, raw.num_rows, 300)):
        pq.write_table(raw.slice(start, 300), src / f"part-{i}.parquet")
    spec = tiny_spec(source={"loader": "parquet", "path": str(src)})
    prepared = prepare(spec, tmp_path / "prepared")
    vocab, expected = fitted(spec, raw)
    assert prepared.vocab.tables["color"].values.equals(vocab.tables["color"].values)
    assert prepared.vocab.numeric["price"].mean == pytest.approx(vocab.numeric["price"].mean)
    for split, table in expected.items():
        got = prepared.read(split)
        assert _by_price(got).equals(_by_price(table.drop_columns([SPLIT_COLUMN]).select(got.column_names)))


def test_csv_source_folder(ray_cluster, tmp_path):
    raw = tiny_raw(600, seed=5)
    flat = raw.set_column(raw.schema.get_field_index("tags"), "tags",
                          pc.binary_join(raw["tags"], "|"))
    src = tmp_path / "csv"
    src.mkdir()
    for i, start in enumerate(range(0, flat.num_rows, 200)):
        pcsv.write_csv(flat.slice(start, 200), src / f"rows-{i}.csv")
    data = tiny_spec().model_dump(mode="json")
    data["source"] = {"loader": "csv", "path": str(src)}
    data["features"][1]["separator"] = "|"
    spec = parse_spec(data)
    prepared = prepare(spec, tmp_path / "prepared")
    assert sum(v["rows"] for v in prepared.stats["splits"].values()) == 600
    vocab, expected = fitted(spec, flat)
    assert prepared.vocab.tables["tags"].values.equals(vocab.tables["tags"].values)
    got = prepared.read("train")
    assert _by_price(got).equals(_by_price(expected["train"].drop_columns([SPLIT_COLUMN]).select(got.column_names)))


def test_synthetic_rows_made_in_ray_tasks_equal_the_in_process_ones(ray_cluster):
    chunk = 5000
    spec = synthetic_spec(rows=2 * chunk + 1234, seed=9, chunk_rows=chunk)  # 3 chunks, the last one short
    streamed = source_dataset(spec.source).take_batch(10**6, batch_format="pyarrow")
    assert streamed[ROW_COLUMN].to_pylist() == list(range(streamed.num_rows))
    assert streamed.drop_columns([ROW_COLUMN]).equals(synthetic_raw(spec))
    # The rows do not depend on how they are cut: a chunk is the same made alone or with others.
    cfg = SyntheticConfig(rows=chunk + 10, seed=9, chunk_rows=chunk)
    assert generate(cfg)[0].slice(0, chunk).equals(synthetic_raw(spec).slice(0, chunk))


def test_ml100k_histories_on_ray_data_equal_the_driver_side_ones(ray_cluster, ml100k_dir, tmp_path):
    spec = load_spec(CONFIGS / "ml-100k-history.yaml")
    prepared = prepare(spec, tmp_path / "prepared")
    # The previous implementation: every row on the driver at once, then encoded with the same vocabulary.
    driver = encode(derive(add_histories(load_source(spec.source), spec), spec), spec, prepared.vocab)
    for split in ("train", "valid", "test"):
        got = prepared.read(split)
        want = driver.filter(pc.equal(driver[SPLIT_COLUMN], split)).drop_columns([SPLIT_COLUMN])
        assert got.equals(want.select(got.column_names)), split  # same rows, same order, same histories
    assert pc.sum(pc.list_value_length(prepared.read("train")["history"])).as_py() > 1_000_000


def test_a_rerun_reuses_a_matching_output_and_redoes_a_changed_one(ray_cluster, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(tiny_raw(300), src / "a.parquet")
    spec = tiny_spec(source={"loader": "parquet", "path": str(src)})
    first = prepare(spec, tmp_path / "prepared")
    parts = sorted(first.root.rglob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in parts]
    again = prepare(spec, tmp_path / "prepared", reuse=True)
    assert again.root == first.root and [p.stat().st_mtime_ns for p in parts] == stamps  # nothing written

    pq.write_table(tiny_raw(320), src / "a.parquet")  # the source changed: prepared again
    changed = prepare(spec, tmp_path / "prepared", reuse=True)
    assert sum(v["rows"] for v in changed.stats["splits"].values()) == 320

    os.remove(sorted(changed.root.rglob("*.parquet"))[0])  # a written file went missing: prepared again
    repaired = prepare(spec, tmp_path / "prepared", reuse=True)
    assert all((repaired.root / name).is_file() for name in json.loads(
        (repaired.root / "stats.json").read_text())["files"])


def test_score_with_an_autoscaling_actor_pool_matches_one_actor(small_models, tmp_path):
    registry, v1, _, _ = small_models
    spec = synthetic_spec(rows=12_000, seed=22)  # ~3.6 MB in Arrow: blocks for two actors (1 MiB at least each)
    raw = synthetic_raw(spec)
    folder = tmp_path / "rows"
    folder.mkdir()
    for i, start in enumerate(range(0, raw.num_rows, 4000)):
        pq.write_table(raw.slice(start, 4000), folder / f"{i}.parquet")
    assert _block_count(list(pads.dataset(folder, format="parquet").get_fragments()), blocks=8) >= 2
    one = score(registry, MODEL, "v0001", folder, tmp_path / "one", batch_size=250, concurrency=1)
    pool = score(registry, MODEL, "v0001", folder, tmp_path / "pool", batch_size=250, concurrency=(1, 2))
    assert one["rows"] == pool["rows"] == raw.num_rows
    a, b = pq.read_table(tmp_path / "one"), pq.read_table(tmp_path / "pool")
    assert a.equals(b)  # same rows in the same order, whichever actor scored them
    assert np.isfinite(a["score"].to_numpy()).all()


def test_bench_pipeline_on_tiny_rows(ray_cluster, tmp_path):
    from muxrec.benchmarks.pipeline import bench_pipeline

    result = bench_pipeline(6000, 500, 300, 3000, CONFIGS, tmp_path / "runs", out_dir=tmp_path / "docs")
    assert result["rows"] == 6000 and result["score_rows"] == 3000
    assert result["rerun_files_rewritten"] == 0 and result["rerun_prepare_s"] < 5
    assert result["train_rows"] == pytest.approx(4800, rel=0.05) and result["train_rows_per_s"] > 0
    assert result["prepare_rows_per_s"] > 0 and result["score_rows_per_min"] > 0
    assert result["driver_peak_rss_mb"] > 100  # a Python process with torch and Ray loaded
    titles = [w["title"] for w in result["workers"]]
    assert any("Scorer" in t for t in titles) and any("RayTrainWorker" in t for t in titles), titles
    assert set(result["score_profile_s_per_1m_rows"]) == {"derive_s", "encode_s", "tensors_s", "forward_s"}
    table = (tmp_path / "docs" / "pipeline.md").read_text()
    assert "| score rows/min |" in table and "6,000 rows" in table and f"| commit | {result['commit']} |" in table
    saved = json.loads((tmp_path / "docs" / "results" / "pipeline-6000.json").read_text())
    assert saved["score_rows_per_min"] == result["score_rows_per_min"]


def test_the_spin_guard_pauses_a_held_back_executor_and_loses_nothing(ray_cluster):
    """A consumer slower than Ray Data: the guard pauses scheduling steps while output waits for it, and
    every row still arrives, in order. (What it saves in CPU is measured by a benchmark, docs/training.md.)"""
    import time

    import ray
    from ray.data import DataContext

    from muxrec.pipelines.backpressure import SpinGuard, use_spin_guard

    class Counting(SpinGuard):
        steps = pauses = 0

        def on_execution_step(self, executor) -> None:
            Counting.steps += 1
            Counting.pauses += self.should_pause(executor)
            super().on_execution_step(executor)

    ctx = DataContext.get_current()
    saved = list(ctx.custom_execution_callback_classes)
    try:
        ctx.custom_execution_callback_classes[:] = []
        use_spin_guard()
        use_spin_guard()
        assert ctx.custom_execution_callback_classes == [SpinGuard]  # added once
        ctx.custom_execution_callback_classes[:] = [Counting]
        ds = ray.data.range(3000, override_num_blocks=30).map_batches(lambda b: {"id": b["id"] * 2})
        seen = []
        for batch in ds.iter_batches(batch_size=200):
            seen.extend(batch["id"].tolist())
            time.sleep(0.03)  # the slow consumer
    finally:
        ctx.custom_execution_callback_classes[:] = saved
    assert seen == [2 * i for i in range(3000)]
    assert 0 < Counting.pauses <= Counting.steps
