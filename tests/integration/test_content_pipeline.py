"""Content features through the Ray pipelines: prepare encodes the catalog with a Ray Data actor pool, Ray
Train publishes a model pinned to the encoder, batch scoring loads the encoder per actor, and the catalog
job's vectors are the encoder's own."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from muxrec.artifacts import ArtifactRegistry
from muxrec.config import TrainConfig
from muxrec.encoding import split_of
from muxrec.models.deepfm import DeepFMConfig
from muxrec.models.encoders.content import ContentVectors, publish_encoder
from muxrec.models.encoders.text import TextTowerConfig, build_text_tower
from muxrec.models.serialization import load_model
from muxrec.pipelines.content import write_catalog
from muxrec.pipelines.encoders import fit_text_projection
from muxrec.pipelines.prepare import prepare
from muxrec.pipelines.score import score
from muxrec.pipelines.train import TrainJob, train
from muxrec.spec import parse_spec

from tests.helpers import no_idle_actor_warning, synthetic_raw, synthetic_spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def content(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("content-pipeline")
    data = synthetic_spec(rows=3000, seed=5, labels=("click",)).model_dump(mode="json", exclude_defaults=True)
    data["name"] = "synthetic-text"
    data["features"].append({"name": "title_vec", "kind": "text", "source": "title", "encoder": "titles@v0001",
                             "dim": 16})
    spec = parse_spec(data)
    raw = synthetic_raw(spec)
    registry = ArtifactRegistry(root / "registry")
    tower = build_text_tower(TextTowerConfig(max_len=16, dims=(8, 16)))
    fit_text_projection(tower, sorted(set(raw["title"].to_pylist())))
    publish_encoder(registry, "titles", tower, "text")
    return root, spec, raw, registry


def test_prepare_train_and_score_with_a_pinned_text_encoder(content):
    root, spec, raw, registry = content
    prepared = prepare(spec, root / "prepared", registry=registry.root)
    vectors = ContentVectors(spec, registry)
    assert prepared.stats["encoders"] == vectors.digests
    assert prepared.inputs.content == {"title_vec": 16}

    # The prepared rows hold the encoder's vector of each row's title (rows keep the source order).
    test_raw = raw.filter(pc.equal(split_of(raw, spec), "test"))
    stored = np.stack(prepared.read("test")["title_vec"].to_numpy(zero_copy_only=False))  # (N, 16)
    expected = vectors.catalog(spec.feature("title_vec"), test_raw["title"].to_pylist())
    np.testing.assert_allclose(stored, expected, atol=1e-5)

    job = TrainJob(str(prepared.root), "deepfm", DeepFMConfig(embedding_dim=8, hidden_units=(16,)),
                   TrainConfig(epochs=1, batch_size=256, lr=3e-3, num_workers=0))
    version = train(job, registry, "text-ranker", root / "ray").version
    loaded = load_model(version)
    assert loaded.content is not None and version.read_json("model.json")["encoders"] == vectors.digests

    rows = root / "rows"
    rows.mkdir()
    pq.write_table(test_raw, rows / "part.parquet")
    with no_idle_actor_warning():  # one small file is one block: one actor scores it
        score(registry, "text-ranker", version.version, rows, root / "scored", batch_size=128)
    scored = pq.read_table(root / "scored")
    np.testing.assert_allclose(scored["score"].to_numpy(), loaded.predict_raw(test_raw)[:, 0], atol=1e-5)


def test_the_catalog_job_writes_the_encoders_vectors(content):
    root, spec, raw, registry = content
    report = write_catalog(spec, "title_vec", registry, root / "catalog.parquet")
    table = pq.read_table(root / "catalog.parquet")
    titles = set(raw["title"].to_pylist())
    assert report["values"] == table.num_rows == len(titles) and set(table["value"].to_pylist()) == titles
    expected = ContentVectors(spec, registry).catalog(spec.feature("title_vec"), table["value"].to_pylist())
    np.testing.assert_allclose(np.stack(table["vector"].to_numpy(zero_copy_only=False)), expected, atol=1e-5)
