"""Faults: a training process killed mid-run resumes from its checkpoint; bad inputs to the Ray
pipeline give clear errors and leave existing outputs and artifacts intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from muxrec.artifacts import ArtifactRegistry
from muxrec.errors import DataError
from muxrec.pipelines.prepare import prepare

from tests.helpers import synthetic_spec, tiny_raw, tiny_spec

pytestmark = pytest.mark.integration


def _train_cmd(spec_path, tmp_path, epochs):
    return [sys.executable, "-m", "muxrec.cli", "train", "--spec", str(spec_path), "--model", "deepfm",
            "--epochs", str(epochs), "--patience", "10", "--batch-size", "128", "--num-workers", "2",
            "--sharding", "table_wise", "--runs", str(tmp_path / "runs"), "--registry", str(tmp_path / "registry")]


def test_killed_sharded_training_resumes_from_its_checkpoint(ray_cluster, tmp_path):
    """A sharded `muxrec train` (2 workers, TorchRec table-wise) is killed (SIGKILL) after two
    checkpoints; a rerun resumes from the unsharded checkpoint, its tables' Adagrad state included.
    (Resuming an unsharded run, in-process: tests/integration/test_pipeline.py.)

    Both commands join the session's Ray (RAY_ADDRESS), as they would join a `muxrec ray up` one:
    killing the driver ends its job, whose Ray Train actors Ray then stops. That saves two cold Ray
    starts; a cold `muxrec train` process is run by test_bench_train_times_floor_loop_and_command.
    """
    spec = synthetic_spec(rows=6000, seed=5).model_dump(mode="json")
    spec["features"] = [f for f in spec["features"] if f["kind"] != "sequence"]  # (sharded tables are pooled only)
    spec_path = tmp_path / "synthetic.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "runs" / "ray" / "synthetic-deepfm-seed2026"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    proc = subprocess.Popen(_train_cmd(spec_path, tmp_path, 40), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(list(run_dir.glob("checkpoint_*"))) < 2:
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.2)
        assert list(run_dir.glob("checkpoint_*")), "no checkpoint appeared"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver (its own session); Ray then ends its job
        proc.wait(timeout=60)
    assert not (run_dir / "muxrec-done.json").exists()
    assert not (tmp_path / "registry").exists() or not ArtifactRegistry(tmp_path / "registry").names()

    done = subprocess.run(_train_cmd(spec_path, tmp_path, 3), capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "[muxrec] resuming after epoch" in out
    resumed_after = int(out.split("[muxrec] resuming after epoch ")[1].split()[0])
    assert resumed_after >= 1
    assert f"[muxrec] epoch {resumed_after}:" not in out.split("resuming after epoch")[1]  # no epoch trained twice
    assert "table weights 12 table_wise, 12 data_parallel" in out
    assert "saved under another sharding" not in out  # the tables' optimizer state was restored
    version = ArtifactRegistry(tmp_path / "registry").open("synthetic-deepfm")
    assert version.version == "v0001"


def test_nan_in_numeric_input_fails_prepare_and_keeps_the_previous_output(ray_cluster, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    raw = tiny_raw(400)
    pq.write_table(raw, src / "data.parquet")
    spec = tiny_spec(source={"loader": "parquet", "path": str(src)})
    good = prepare(spec, tmp_path / "prepared")
    before = pq.read_table(good.split_dir("train"))

    prices = raw["price"].to_numpy().copy()
    prices[123] = np.nan
    pq.write_table(raw.set_column(3, "price", pa.array(prices)), src / "data.parquet")
    with pytest.raises(DataError, match=r"feature 'price' \(column 'price'\): 1 NaN/inf value\(s\), first at row 123 \(nan\)"):
        prepare(spec, tmp_path / "prepared")
    assert pq.read_table(good.split_dir("train")).equals(before)
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == ["tiny"]


def test_missing_columns_fail_prepare_naming_them(ray_cluster, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(tiny_raw(50).drop_columns(["tags"]), src / "data.parquet")
    spec = tiny_spec(source={"loader": "parquet", "path": str(src)})
    with pytest.raises(DataError, match=r"missing column\(s\) \['tags'\]"):
        prepare(spec, tmp_path / "prepared")
    assert not (tmp_path / "prepared" / "tiny").exists()


def test_corrupted_artifact_is_refused_by_evaluate_and_others_still_load(tmp_path):
    from muxrec.encoding import Vocabulary, count_values, derive, moments
    from muxrec.models import build_model, make_config
    from muxrec.models.serialization import load_model, model_files
    from muxrec.spec import ModelInputs

    spec = tiny_spec()
    derived = derive(tiny_raw(100), spec)
    vocab = Vocabulary.fit(spec, count_values(derived, spec), moments(derived, spec))
    cfg = make_config("deepfm", {"embedding_dim": 4, "hidden_units": [8]})
    model = build_model("deepfm", cfg, ModelInputs.from_spec(spec, vocab.num_embeddings()))
    registry = ArtifactRegistry(tmp_path / "registry")
    files = model_files(model, "deepfm", cfg, spec, vocab)
    good = registry.publish("tiny-deepfm", files)
    bad = registry.publish("tiny-deepfm", files)
    weights = bad.path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    out = subprocess.run([sys.executable, "-m", "muxrec.cli", "evaluate", "--name", "tiny-deepfm", "--version",
                          bad.version, "--registry", str(tmp_path / "registry")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "weights.safetensors fails its manifest check" in out.stderr and "Traceback" not in out.stderr
    assert load_model(registry.open("tiny-deepfm", good.version)).name == "deepfm"
