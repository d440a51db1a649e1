"""The Ray pipeline end to end on small synthetic data and on MovieLens-100K.

prepare (Ray Data) -> train (Ray Train, checkpoints, resume, DDP) -> publish -> evaluate.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from muxrec.artifacts import ArtifactRegistry
from muxrec.config import TrainConfig
from muxrec.encoding import SPLIT_COLUMN, derive
from muxrec.models import make_config
from muxrec.models.deepfm import DeepFMConfig
from muxrec.pipelines.evaluate import evaluate
from muxrec.pipelines.prepare import PreparedData, prepare
from muxrec.pipelines.train import TrainJob, fit, train
from muxrec.spec import load_spec

from tests.conftest import CONFIGS
from tests.helpers import every_method_spec, mixed_dim_spec, synthetic_raw, synthetic_spec

pytestmark = pytest.mark.integration

# In this process (num_workers 0) unless a test is about Ray Train's workers: ~15 s less per run.
SMALL = TrainConfig(epochs=3, batch_size=256, lr=3e-3, patience=5, seed=11, num_workers=0)
DEEPFM = DeepFMConfig(embedding_dim=8, hidden_units=(32, 16), dropout=0.0)


@pytest.fixture(scope="module")
def prepared(ray_cluster, tmp_path_factory):
    spec = synthetic_spec(rows=16000, seed=3)
    return prepare(spec, tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def every_method(ray_cluster, tmp_path_factory):
    """every_method_spec prepared once for the tests that train it (unsharded and sharded)."""
    return prepare(every_method_spec(rows=16000, seed=3), tmp_path_factory.mktemp("every-method"))


def test_prepare_writes_deterministic_parquet_fitted_on_train_only(prepared):
    spec = prepared.spec
    assert {s: v["rows"] for s, v in prepared.stats["splits"].items()} == \
        {"train": pytest.approx(12800, rel=0.05), "valid": pytest.approx(1600, rel=0.15),
         "test": pytest.approx(1600, rel=0.15)}
    assert sum(v["rows"] for v in prepared.stats["splits"].values()) == 16000
    files = {s: sorted(p.name for p in prepared.split_dir(s).iterdir()) for s in ("train", "valid", "test")}
    assert all(names and all(n.startswith("part-") and n.endswith(".parquet") for n in names)
               for names in files.values())
    # Vocabularies come from train rows only: no value seen only in valid/test is in them.
    derived = derive(synthetic_raw(spec), spec)
    train_users = set(derived.filter(pc.equal(derived[SPLIT_COLUMN], "train"))["user_id"].to_pylist())
    held_out = set(derived.filter(pc.not_equal(derived[SPLIT_COLUMN], "train"))["user_id"].to_pylist())
    vocab_users = set(prepared.vocab.tables["user_id"].values.to_pylist())
    assert vocab_users == train_users and held_out - train_users  # some held-out users are unseen
    # A rerun replaces the output: same file names, same content, nothing added.
    before = {s: pq.read_table(prepared.split_dir(s)) for s in ("train", "test")}
    again = prepare(spec, prepared.root.parent)
    assert {s: sorted(p.name for p in again.split_dir(s).iterdir()) for s in ("train", "valid", "test")} == files
    for s, table in before.items():
        assert pq.read_table(again.split_dir(s)).equals(table)
    assert not [p for p in prepared.root.parent.iterdir() if p.name.startswith(".")]


def test_a_split_read_in_chunks_evaluates_as_when_read_whole(prepared):
    """What the driver evaluates a published model on: the split from disk a chunk at a time."""
    import torch

    from muxrec.models import EncodedRows, build_model
    from muxrec.pipelines.loop import evaluate_rows

    torch.manual_seed(0)
    model = build_model("deepfm", DEEPFM, prepared.inputs)
    whole = prepared.read("valid")
    chunked = prepared.rows("valid", chunk_rows=700)  # several chunks, a batch split across none
    assert sum(len(b.labels) for b in chunked.batches(256)) == whole.num_rows > 2 * 700
    model.eval()
    with torch.no_grad():  # the same rows in the same order, batched differently: equal up to float rounding
        got = torch.cat([model(b) for b in chunked.batches(256)])
        expected = torch.cat([model(b) for b in EncodedRows(whole, prepared.inputs).batches(256)])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    metrics = evaluate_rows(model, chunked, prepared.inputs, 256)
    assert 0.0 < metrics["auc"] < 1.0 and metrics["logloss"] > 0
    assert prepared.read_head("valid", 100).equals(whole.slice(0, 100))
    with pytest.raises(ValueError, match="cannot shuffle"):
        next(chunked.batches(256, torch.Generator()))


def test_train_resume_and_evaluate(prepared, tmp_path):
    """2 epochs on a Ray Train worker, then resumed to 3 in this process (num_workers 0) and published; the
    same name, now done, starts over and runs 3 epochs straight in this process, which equal the resumed
    ones and the worker's; the published model evaluates the same offline. A resume with another config
    is refused first, and leaves the run resumable; a worker cannot resume an in-process run."""
    from muxrec.errors import ConfigError

    storage = tmp_path / "ray"
    job = TrainJob(str(prepared.root), "deepfm", DEEPFM, replace(SMALL, epochs=2, num_workers=1))
    first, _, _ = fit(job, storage, "run")
    assert first["epoch"] == 1 and len(first["history"]) == 2
    assert first["streamed"] == []  # a split this small is held in memory
    three = replace(job, train=replace(job.train, epochs=3, num_workers=0))
    with pytest.raises(ConfigError, match="started with another spec / model / training config"):
        fit(replace(three, model_config=replace(DEEPFM, hidden_units=(8,))), storage, "run")

    registry = ArtifactRegistry(tmp_path / "registry")
    result = train(three, registry, "synthetic-deepfm", storage, run_name="run")  # resumes at epoch 3
    resumed = result.metrics["history"]
    assert [h["valid_auc"] for h in resumed[:2]] == [h["valid_auc"] for h in first["history"]]
    assert (storage / "run" / "muxrec-done.json").is_file()
    (storage / "run" / "left-by-the-first-run").write_text("")
    straight, straight_best, _ = fit(three, storage, "run")  # a done run is started over, not resumed
    assert not (storage / "run" / "left-by-the-first-run").exists()
    assert [h["valid_auc"] for h in straight["history"]] == [h["valid_auc"] for h in resumed]
    assert result.version.file("weights.safetensors").read_bytes() == straight_best.read_bytes()
    kept = sorted(p.name for p in (storage / "run").glob("checkpoint_*"))
    assert kept == ["checkpoint_in_process_000001", "checkpoint_in_process_000002"]  # the newest two
    with pytest.raises(ConfigError, match="started in this process"):
        fit(replace(three, train=replace(three.train, epochs=4, num_workers=1)), storage, "run")
    importance = json.loads(result.version.read_text("importance.json"))
    assert importance["rows"] == prepared.stats["splits"]["valid"]["rows"]  # under IMPORTANCE_ROWS: all of them

    assert result.metrics["valid"]["auc"] > 0.60  # the planted signal is being learned (chance: 0.5; LR ~0.61 at 30k rows)
    report = evaluate(result.version, "test")
    assert report["rows"] == prepared.stats["splits"]["test"]["rows"]
    assert report["tasks"]["click"]["auc"] == pytest.approx(result.metrics["test"]["auc"], abs=1e-6)
    assert report["tasks"]["click"]["calibration"]["bins"]


def test_two_workers_train_with_ddp(prepared, tmp_path):
    """DDP over two workers, the larger tables on sparse gradients (lazy Adam) that DDP sums over gloo."""
    job = TrainJob(str(prepared.root), "deepfm", DEEPFM, replace(SMALL, epochs=1, num_workers=2, sparse_table_rows=100))
    state, best, _ = fit(job, tmp_path / "ray", "ddp")
    assert state["world_size"] == 2
    assert "embedding.bags.embedding_bags.user_id" in state["lazy_tables"]
    total = prepared.stats["splits"]["train"]["rows"]
    assert abs(state["train_rows"] - total / 2) <= total * 0.1  # each rank saw about half
    assert state["best_valid_auc"] > 0.6 and best.stat().st_size > 0


def test_a_split_over_the_in_memory_threshold_is_streamed(prepared, tmp_path):
    """Train over the threshold streams through Ray Data; valid, at it, stays in memory; both learn."""
    valid_bytes = sum(f.stat().st_size for f in prepared.split_dir("valid").glob("*.parquet"))
    job = TrainJob(str(prepared.root), "deepfm", DEEPFM, replace(SMALL, epochs=2, sparse_table_rows=100, num_workers=1),
                   in_memory_bytes=valid_bytes)
    state, best, _ = fit(job, tmp_path / "ray", "streamed")
    assert state["streamed"] == ["train"]
    assert "embedding.bags.embedding_bags.user_id" in state["lazy_tables"]  # as at scale: large tables, streamed
    assert state["train_rows"] == prepared.stats["splits"]["train"]["rows"]  # every row came through the stream
    assert state["best_valid_auc"] > 0.6 and best.stat().st_size > 0


def test_search_then_retrain_publishes_the_chosen_architecture(prepared, tmp_path):
    """OptInter searches a method per field pair, then the argmax is retrained from scratch and published."""
    from muxrec.models.optinter import METHODS, categorical_pairs
    from muxrec.models.serialization import load_model

    cfg = make_config("optinter", {"embedding_dim": 4, "hidden_units": [16], "anneal_steps": 50, "cross_buckets": 5000})
    job = TrainJob(str(prepared.root), "optinter", cfg, replace(SMALL, epochs=2))
    result = train(job, ArtifactRegistry(tmp_path / "registry"), "synthetic-optinter", tmp_path / "ray")
    search = result.metrics["search"]
    pairs = [f"{a} x {b}" for a, b in categorical_pairs(prepared.inputs)]
    assert list(search["methods"]) == pairs and set(search["methods"].values()) <= set(METHODS)
    for weights in search["weights"].values():  # the architecture weights behind each choice
        assert sum(weights.values()) == pytest.approx(1, abs=1e-3)
    chosen = tuple(search["methods"].values())
    loaded = load_model(result.version)
    assert loaded.config.methods == chosen and loaded.model.chosen_methods() == chosen
    assert (tmp_path / "ray" / "synthetic-optinter-seed11-retrain" / "muxrec-done.json").is_file()
    assert result.metrics["train_seconds"] > search["train_seconds"]  # both runs are counted


def test_a_spec_with_its_own_table_dims_trains_and_publishes(ray_cluster, tmp_path):
    """user_id at dim 2, the item table (item_id and the history's positions) at 6, title at 3; the model at 8."""
    from muxrec.models.serialization import load_model

    prep = prepare(mixed_dim_spec(rows=16000, seed=3), tmp_path / "prepared")
    result = train(TrainJob(str(prep.root), "deepfm", DEEPFM, SMALL), ArtifactRegistry(tmp_path / "registry"), "mixed",
                   tmp_path / "ray")
    assert result.metrics["valid"]["auc"] > 0.62  # the planted signal is learned (chance: 0.5)
    loaded = load_model(result.version)
    weights = loaded.model.embedding.table_weights()
    assert (weights["user_id"].shape[1], weights["item"].shape[1], weights["title"].shape[1]) == (2, 6, 3)
    assert sorted(loaded.model.embedding.projections) == ["item", "title", "user_id"]


def test_every_embedding_method_trains_through_ray_and_publishes_as_served(every_method, tmp_path):
    """One spec using every table method (every_method_spec): Ray Train fits it, and the published version
    stores user_id int8, region's 2-value prefix and slot's kept values, with metrics measured on what is stored.
    Every split counts as large here (in_memory_bytes=0): the loop, in this process (num_workers 0, Ray Train's
    local mode), streams them and the published model is evaluated in a Ray task, on its served form rebuilt there."""
    from muxrec.models.layers.tables import MixedDimTable, PrefixTable, QRTable, QuantizedTable, SparseTable
    from muxrec.models.serialization import load_model

    result = train(TrainJob(str(every_method.root), "deepfm", DEEPFM, SMALL, in_memory_bytes=0),
                   ArtifactRegistry(tmp_path / "registry"), "methods", tmp_path / "ray")
    assert result.metrics["history"] and json.loads(result.version.read_text("importance.json"))["features"]
    assert result.metrics["valid"]["auc"] > 0.58  # learned (chance: 0.5), if less than dense tables in 3 epochs
    assert result.metrics["served_as"] == {"user_id": "int8", "region": "prefix:2", "slot": "prune:0.5"}
    emb = load_model(result.version).model.embedding
    kinds = {name: type(emb.table(name)) for name in ("user_id", "item", "site", "region", "slot")}
    assert kinds == {"user_id": QuantizedTable, "item": QRTable, "site": MixedDimTable, "region": PrefixTable,
                     "slot": SparseTable}
    assert emb.table("unified").rows == 65 and "unified" in emb.bags.embedding_bags
    rerun = evaluate(result.version, "test")
    assert rerun["tasks"]["click"]["auc"] == pytest.approx(result.metrics["test"]["click_auc"], abs=1e-6)  # as published


def test_row_wise_sharded_training_publishes_a_version_that_loads_unsharded(every_method, tmp_path):
    """2 Ray Train workers, TorchRec DMP row-wise over gloo, on the every-method spec: the D-wide tables of
    the collection are split by rows, the 1-wide first-order ones data-parallel, the compressed tables
    (outside the collection) replicated. The checkpoint is gathered unsharded, so the published version
    loads into the plain model and evaluates to the published figures."""
    from torchrec import EmbeddingBagCollection

    from muxrec.models.serialization import load_model

    job = TrainJob(str(every_method.root), "deepfm", DEEPFM, replace(SMALL, epochs=2, num_workers=2, sharding="row_wise"))
    result = train(job, ArtifactRegistry(tmp_path / "registry"), "sharded", tmp_path / "ray")
    in_collection = sum(len(c.embedding_bag_configs()) for c in load_model(result.version).model.modules()
                        if isinstance(c, EmbeddingBagCollection))
    assert result.metrics["sharding"] == {"tables": {"row_wise": in_collection // 2, "data_parallel": in_collection // 2},
                                          "optimizer": "rowwise_adagrad"}
    assert result.metrics["valid"]["auc"] > 0.58
    assert type(load_model(result.version).model.embedding.bags) is EmbeddingBagCollection  # plain TorchRec module
    rerun = evaluate(result.version, "test")
    assert rerun["tasks"]["click"]["auc"] == pytest.approx(result.metrics["test"]["click_auc"], abs=1e-6)


def test_ml100k_one_short_epoch(ray_cluster, ml100k_dir, tmp_path):
    spec = load_spec(CONFIGS / "ml-100k.yaml")
    prep = prepare(spec, tmp_path / "prepared")
    assert {s: v["rows"] for s, v in prep.stats["splits"].items()} == {"train": 80_004, "valid": 9_976, "test": 10_020}
    job = TrainJob(str(prep.root), "deepfm", DeepFMConfig(embedding_dim=8, hidden_units=(64,)),
                   TrainConfig(epochs=1, batch_size=2048, lr=3e-3))
    result = train(job, ArtifactRegistry(tmp_path / "registry"), "ml-100k-deepfm", tmp_path / "ray")
    assert result.metrics["epochs"] == 1
    assert 0.70 < result.metrics["test"]["auc"] < 0.80
    manifest = json.loads((result.version.path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"weights.safetensors", "spec.yaml", "vocabulary.json", "model.json",
                                      "metrics.json", "train.json", "importance.json"}
    importance = json.loads(result.version.read_text("importance.json"))
    assert importance["method"] == "permutation"
    assert {f["name"] for f in importance["features"]} == set(spec.feature(f.name).name for f in spec.features)
    assert importance["features"][0]["importance"] >= importance["features"][-1]["importance"]
    assert PreparedData.load(prep.root).spec == spec


def test_ml100k_graded_targets_train_through_ray_and_publish_a_click_model(ray_cluster, ml100k_dir, tmp_path):
    spec = load_spec(CONFIGS / "ml-100k-graded.yaml")
    prep = prepare(spec, tmp_path / "prepared")
    rates = prep.positive_rates("train")
    assert rates["click@2"] > rates["click@3"] > rates["click"] > rates["click@5"] > 0
    assert pq.read_table(prep.split_dir("test"), columns=["click", "click@5"]).num_rows == 10_020
    job = TrainJob(str(prep.root), "deepfm", DeepFMConfig(embedding_dim=8, hidden_units=(64,)),
                   TrainConfig(epochs=1, batch_size=2048, lr=3e-3, num_workers=0))
    result = train(job, ArtifactRegistry(tmp_path / "registry"), "graded", tmp_path / "ray")
    assert 0.70 < result.metrics["test"]["auc"] < 0.80
    report = evaluate(result.version, "valid")
    assert list(report["tasks"]) == ["click"]  # the grades trained the score; the model predicts the label
    assert report["tasks"]["click"]["auc"] == pytest.approx(result.metrics["valid"]["auc"], abs=1e-6)
