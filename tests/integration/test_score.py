"""Batch offline scoring on Ray Data: same scores as the model offline, deterministic reruns, and a
failed run leaves the previous output in place."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray

from muxrec.encoding import split_of
from muxrec.errors import DataError
from muxrec.models.serialization import load_model
from muxrec.pipelines.score import _block_count, _no_more_actors_than, score
from muxrec.ray_env import ensure_ray

from tests.conftest import MODEL
from tests.helpers import no_idle_actor_warning, synthetic_raw, synthetic_spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rows_dir(tmp_path_factory):
    spec = synthetic_spec(rows=6000, seed=21)
    raw = synthetic_raw(spec)
    raw = raw.filter(pc.equal(split_of(raw, spec), "test"))
    folder = tmp_path_factory.mktemp("score") / "rows"
    folder.mkdir()
    half = raw.num_rows // 2
    pq.write_table(raw.slice(0, half), folder / "a.parquet")
    pq.write_table(raw.slice(half), folder / "b.parquet")
    return folder, raw


@pytest.fixture(scope="module")
def scored_v1(small_models, rows_dir):
    """The rows scored once by v0001 (batch 200) and that call's report; tests copy the output to change it."""
    registry, *_ = small_models
    folder, _ = rows_dir
    out = folder.parent / "scored"
    with no_idle_actor_warning():  # two small files are one block: one actor scores it
        return out, score(registry, MODEL, "v0001", folder, out, batch_size=200)


def test_score_matches_the_model_and_reruns_identically(small_models, rows_dir, scored_v1, tmp_path, capsys):
    registry, v1, v2, _ = small_models
    folder, raw = rows_dir
    out = tmp_path / "scored"
    shutil.copytree(scored_v1[0], out)
    assert scored_v1[1] == {"output": str(scored_v1[0]), "rows": raw.num_rows, "model_version": v1.ref}
    scored = pq.read_table(out)
    # DeepFM's head has one logit per label of the spec: a column per task, and the ranking score (the
    # spec's blend: the first task alone by default).
    assert scored.column_names == ["user_id", "item_id", "score", "score_click", "score_conversion", "model_version"]
    assert scored["user_id"].to_pylist() == raw["user_id"].to_pylist()  # input order and keys kept
    assert set(scored["model_version"].to_pylist()) == {v1.ref}
    offline = load_model(v1).predict_raw(raw)  # (N, 2)
    np.testing.assert_allclose(scored["score"].to_numpy(), offline[:, 0], atol=1e-6)
    np.testing.assert_allclose(scored["score_click"].to_numpy(), offline[:, 0], atol=1e-6)
    np.testing.assert_allclose(scored["score_conversion"].to_numpy(), offline[:, 1], atol=1e-6)

    names = sorted(p.name for p in out.iterdir())
    assert names and all(n.startswith("part-") for n in names)
    # A rerun gives the same files, rows in the same order (the autoscaling pool's run in
    # test_streaming.py must equal a one-actor run too).
    capsys.readouterr()
    score(registry, MODEL, "v0001", folder, out, batch_size=200)
    said = capsys.readouterr().err  # progress for people: what runs on what, then the rows and the rate
    assert f"[muxrec] scoring {raw.num_rows:,} rows (2 file(s)) with {v1.ref} on 1 actor(s)" in said, said
    assert f"[muxrec] scored {raw.num_rows:,} rows in " in said and " rows/min) into " in said, said
    assert sorted(p.name for p in out.iterdir()) == names
    assert pq.read_table(out).equals(scored)

    # Another version replaces the output as a whole.
    score(registry, MODEL, "v0002", folder, out, batch_size=200)
    assert set(pq.read_table(out)["model_version"].to_pylist()) == {v2.ref}


def test_a_failed_run_leaves_the_previous_output(small_models, rows_dir, scored_v1, tmp_path):
    registry, v1, _, _ = small_models
    folder = tmp_path / "rows"
    shutil.copytree(rows_dir[0], folder)  # this test spoils a file of its own copy
    out = tmp_path / "scored"
    shutil.copytree(scored_v1[0], out)  # the previous output, as a run of the same model wrote it
    before = pq.read_table(out)
    # The second file turns bad: NaN in a numeric input, met only when that block is scored.
    bad = pq.read_table(folder / "b.parquet")
    price = bad["price"].to_numpy().copy()
    price[7] = np.nan
    pq.write_table(bad.set_column(bad.schema.get_field_index("price"), "price", pa.array(price)), folder / "b.parquet")
    free = ray.available_resources().get("CPU", 0)
    with pytest.raises(DataError, match="feature 'price'"):
        score(registry, MODEL, "v0001", folder, out, batch_size=200)
    assert pq.read_table(out).equals(before)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # The failed run's actor pool gives its CPUs back before the next stage starts (ensure_ray), not at
    # some later garbage collection: a scoring run after it once waited forever for them.
    ensure_ray()
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < free and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) >= free


def test_score_cli_names_missing_columns(small_models, rows_dir, tmp_path):
    registry, *_ = small_models
    folder, raw = rows_dir
    broken = tmp_path / "broken"
    broken.mkdir()
    pq.write_table(raw.drop_columns(["tags"]), broken / "x.parquet")
    out = subprocess.run([sys.executable, "-m", "muxrec.cli", "score", "--input", str(broken), "--output",
                          str(tmp_path / "o"), "--name", MODEL, "--registry", str(registry.root)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "missing column(s) ['tags']" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "o").exists()


def test_a_single_file_is_read_as_enough_blocks_for_the_actor_pool(ray_cluster, tmp_path):
    """Ray Data gives a whole block to one scoring actor, so `score` asks its reader for a few blocks per
    actor, none under 1 MiB: one file (40,000 rows, 11 MiB) in one row group or eight becomes the blocks
    asked for; two small files become one block, and the pool is cut to one actor."""
    def blocks(folder: Path, count: int) -> int:
        return ray.data.read_parquet(str(folder), override_num_blocks=count).materialize().num_blocks()

    raw = synthetic_raw(synthetic_spec(rows=40_000, seed=3))
    for row_group_size in (None, 5000):
        folder = tmp_path / f"groups-{row_group_size}"
        folder.mkdir()
        pq.write_table(raw, folder / "rows.parquet", row_group_size=row_group_size)
        count = _block_count(list(pads.dataset(folder, format="parquet").get_fragments()), blocks=8)
        assert count == 8 and blocks(folder, count) == 8
    # Enough files make enough blocks by themselves: one each.
    two = tmp_path / "two"
    two.mkdir()
    for i in range(2):
        pq.write_table(raw, two / f"{i}.parquet")
    assert _block_count(list(pads.dataset(two, format="parquet").get_fragments()), blocks=2) == 2
    # Files under the 1 MiB least block are one block, whatever is asked: the pool is cut to one actor.
    small = tmp_path / "small"
    small.mkdir()
    for i in range(2):
        pq.write_table(synthetic_raw(synthetic_spec(rows=300, seed=3 + i)), small / f"{i}.parquet")
    count = _block_count(list(pads.dataset(small, format="parquet").get_fragments()), blocks=8)
    assert count == 1 and _no_more_actors_than(2, count) == 1 and _no_more_actors_than((1, 4), count) == (1, 1)
    assert blocks(small, count) == 1
    # muxrec reads Parquet with Ray Data's classic reader (muxrec/ray_env.py), not the one that lists files
    # and reads their footers in actors of its own first.
    stages = ray.data.read_parquet(str(small)).materialize().stats()
    assert "ReadParquet" in stages and "ListFiles" not in stages, stages
