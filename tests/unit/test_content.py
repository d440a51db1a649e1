"""Content features: text and images read by pinned, versioned encoders into vectors that models read.

The text tower is the real all-MiniLM-L6-v2 (from its package) with a small PCA projection; the vision tower
is a small MobileNetV2 at random initialisation: what matters here is the plumbing (registry versions and
hashes, vectors per distinct value, the model's projection of them, refusing a different encoder).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from PIL import Image

from muxrec.artifacts import ArtifactRegistry
from muxrec.encoding import (SPLIT_COLUMN, Vocabulary, attach_content, count_values, derive, encode, moments,
                             quantile_sketch, split_of)
from muxrec.errors import ArtifactError, DataError, SpecError
from muxrec.models import EncodedRows, build_model, make_config
from muxrec.models.encoders.content import ContentVectors, load_encoder, publish_encoder
from muxrec.models.encoders.text import TextTowerConfig, build_text_tower
from muxrec.models.encoders.vision import VisionTowerConfig, build_vision_tower
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.serialization import load_model, model_files
from muxrec.pipelines.encoders import fit_text_projection
from muxrec.spec import ModelInputs, parse_spec

from tests.helpers import inputs_for, tiny_raw, tiny_spec

TEXTS = [f"{adj} {noun} sale" for adj in ("big", "small", "red", "blue", "new", "old") for noun in ("shoe", "hat", "bag")]
TEXT_DIMS = (4, 8)


def _text_tower(texts: list[str] = TEXTS):
    tower = build_text_tower(TextTowerConfig(max_len=16, dims=TEXT_DIMS))
    fit_text_projection(tower, texts)
    return tower


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> ArtifactRegistry:
    reg = ArtifactRegistry(tmp_path_factory.mktemp("registry"))
    publish_encoder(reg, "tiny-text", _text_tower(), "text")
    torch.manual_seed(0)
    publish_encoder(reg, "tiny-image", build_vision_tower(VisionTowerConfig(width_mult=0.25, image_size=32,
                                                                            dims=(4, 8))), "image")
    return reg


def _spec(**extra_feature):
    base = tiny_spec().model_dump(mode="json", exclude_defaults=True)
    feature = {"name": "title_vec", "kind": "text", "source": "title", "encoder": "tiny-text@v0001", "dim": 8,
               **extra_feature}
    return parse_spec({**base, "features": [*base["features"], feature]})


@pytest.mark.parametrize("feature, message", [
    ({"name": "pic", "kind": "image", "dim": 8}, "an image feature needs `encoder"),
    ({"name": "t", "kind": "text", "encoder": "tiny-text@v0001"}, "needs `dim`"),
    ({"name": "t", "kind": "text", "encoder": "tiny-text@v0001", "dim": 8, "hash_buckets": 16},
     "`hash_buckets` does not apply to a feature read by an encoder"),
    ({"name": "t", "kind": "categorical", "encoder": "tiny-text@v0001", "dim": 8}, "`encoder` applies to text and image"),
    ({"name": "t", "kind": "text", "encoder": "tiny-text@latest", "dim": 8}, "encoder"),  # pinned: a version
    ({"name": "t", "kind": "text", "max_len": 4, "hash_buckets": 16, "dim": 8}, "`dim` applies to features read by"),
])
def test_content_features_are_checked_at_load(feature, message):
    base = tiny_spec().model_dump(mode="json", exclude_defaults=True)
    with pytest.raises(SpecError, match=message):
        parse_spec({**base, "features": [*base["features"], feature]})


def test_content_features_have_no_table_and_are_one_field_of_their_width():
    spec = _spec()
    assert [f.name for f in spec.content] == ["title_vec"] and spec.feature("title_vec").table_name is None
    assert "title_vec" not in {t.name for t in spec.tables_list()}
    inputs = ModelInputs.from_spec(spec, {t.name: 10 for t in spec.tables_list()})
    assert inputs.content == {"title_vec": 8} and "title_vec" in inputs.fields and "title_vec" not in inputs.pooled
    image = parse_spec({**tiny_spec().model_dump(mode="json", exclude_defaults=True), "features": [
        *tiny_spec().model_dump(mode="json", exclude_defaults=True)["features"],
        {"name": "pic", "kind": "image", "encoder": "tiny-image@v0001", "dim": 4}]})
    assert {c.name: c.type for c in image.request_columns()}["pic"] == "image"


def test_vectors_are_the_encoders_per_distinct_value_and_models_read_them(registry):
    spec, raw = _spec(), tiny_raw(64)
    vectors = ContentVectors(spec, registry)
    derived = derive(raw, spec)
    got = vectors.vectors(derived)["title_vec"]  # (N, 8)
    tower = load_encoder(registry, "tiny-text@v0001")
    expected = tower.encode(raw["title"].to_pylist(), 8)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Prefix widths: the 4-wide vector is the normalised first 4 values of the 8-wide one.
    narrow = tower.encode(raw["title"].to_pylist(), 4)
    np.testing.assert_allclose(narrow, expected[:, :4] / np.linalg.norm(expected[:, :4], axis=1, keepdims=True),
                               atol=1e-5)

    attached = vectors.attach(derived)
    assert attached.schema.field("title_vec").type == pa.list_(pa.float32(), 8)
    train = attached.filter(pc.equal(attached[SPLIT_COLUMN], "train"))
    vocab = Vocabulary.fit(spec, count_values(train, spec), moments(train, spec), quantile_sketch(train, spec))
    inputs = inputs_for(spec, vocab)
    rows = EncodedRows(encode(attached, spec, vocab), inputs)
    batch = rows.take(torch.arange(8))
    assert batch.content.shape == (8, 8)
    emb = FeatureEmbedding(inputs, dim=6)
    fields = emb(batch)  # (B, F, D)
    position = inputs.fields.index("title_vec")
    torch.testing.assert_close(fields[:, position], emb.content["title_vec"](batch.content))
    batch.content = torch.zeros_like(batch.content)
    changed = emb(batch)
    assert not torch.allclose(changed[:, position], fields[:, position])
    assert torch.equal(changed[:, :position], fields[:, :position])  # the other fields do not read it

    torch.manual_seed(0)
    model = build_model("deepfm", make_config("deepfm", {"embedding_dim": 6, "hidden_units": [8]}), inputs)
    model(rows.take(torch.arange(16))).sum().backward()
    projection = next(m for m in model.modules() if isinstance(m, FeatureEmbedding)).content["title_vec"]
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0


def test_attach_content_rejects_wrong_shapes_and_nan():
    spec, raw = _spec(), tiny_raw(8)
    derived = derive(raw, spec)
    with pytest.raises(DataError, match=r"feature 'title_vec': vectors of shape \(8, 4\), expected \(8, 8\)"):
        attach_content(derived, spec, {"title_vec": np.zeros((8, 4))})
    bad = np.zeros((8, 8))
    bad[3, 1] = np.nan
    with pytest.raises(DataError, match="feature 'title_vec': NaN/inf in the vectors of row 3"):
        attach_content(derived, spec, {"title_vec": bad})
    vocab = Vocabulary.fit(spec, count_values(derived, spec), moments(derived, spec), quantile_sketch(derived, spec))
    with pytest.raises(DataError, match="content features are read by their encoder first"):
        encode(derived, spec, vocab)


def test_encoder_versions_are_hash_checked(registry, tmp_path):
    copy = ArtifactRegistry(tmp_path / "copy")
    shutil.copytree(registry.root / "tiny-text", copy.root / "tiny-text")
    weights = copy.root / "tiny-text" / "v0001" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="fails its manifest check"):
        load_encoder(copy, "tiny-text@v0001")
    copy.publish("plain", {"weights.safetensors": b"x"})  # a version that is not an encoder
    with pytest.raises(ArtifactError, match="plain/v0001 is not an encoder"):
        load_encoder(copy, "plain@v0001")


def test_a_model_refuses_an_encoder_other_than_the_one_it_was_trained_with(registry, tmp_path):
    spec, raw = _spec(), tiny_raw(64)
    vectors = ContentVectors(spec, registry)
    attached = vectors.attach(derive(raw, spec))
    vocab = Vocabulary.fit(spec, count_values(attached, spec), moments(attached, spec), quantile_sketch(attached, spec))
    inputs = inputs_for(spec, vocab)
    cfg = make_config("deepfm", {"embedding_dim": 6, "hidden_units": [8]})
    model = build_model("deepfm", cfg, inputs)
    with pytest.raises(ArtifactError, match="need their weight hashes"):
        model_files(model, "deepfm", cfg, spec, vocab)
    version = registry.publish("ranker", model_files(model, "deepfm", cfg, spec, vocab, vectors.digests))
    loaded = load_model(version)
    scores = loaded.predict_raw(raw.drop_columns(["y"]))  # vectors from the pinned encoder
    assert scores.shape == (64, 1)
    given = loaded.predict_raw(raw.drop_columns(["y"]), vectors=vectors.vectors(derive(raw, spec, labels=False)))
    np.testing.assert_allclose(scores, given, atol=1e-6)

    # Another registry whose tiny-text@v0001 is a different encoder (fitted on other texts).
    other = ArtifactRegistry(tmp_path / "other")
    publish_encoder(other, "tiny-text", _text_tower([t.upper() + " now" for t in TEXTS] + ["x y z"] * 3), "text")
    shutil.copytree(version.path, other.root / "ranker" / "v0001")
    with pytest.raises(ArtifactError, match="made with encoder tiny-text@v0001 whose weights .* refusing to mix"):
        load_model(other.open("ranker", "v0001"))


def _png(path: Path, color: tuple[int, int, int]) -> str:
    Image.new("RGB", (40, 40), color).save(path)
    return str(path)


def test_image_features_read_files_and_name_the_bad_row(registry, tmp_path):
    base = tiny_spec().model_dump(mode="json", exclude_defaults=True)
    spec = parse_spec({**base, "features": [*base["features"],
                                            {"name": "pic", "kind": "image", "source": "image",
                                             "encoder": "tiny-image@v0001", "dim": 8}]})
    raw = tiny_raw(6)
    paths = [_png(tmp_path / f"{i}.png", (40 * i, 0, 200)) for i in range(5)] + [None]
    table = raw.append_column("image", pa.array(paths, pa.string()))
    vectors = ContentVectors(spec, registry).vectors(derive(table, spec))["pic"]  # (6, 8)
    assert vectors.shape == (6, 8) and not np.allclose(vectors[0], vectors[4])
    np.testing.assert_allclose(np.linalg.norm(vectors[:5], axis=1), 1.0, atol=1e-5)

    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    for path, problem in ((str(tmp_path / "gone.png"), "missing"), (str(tmp_path / "bad.png"), "not an image")):
        broken = raw.append_column("image", pa.array(paths[:2] + [path] + paths[3:], pa.string()))
        with pytest.raises(DataError, match=rf"feature 'pic', row 2: .*{problem}"):
            ContentVectors(spec, registry).vectors(derive(broken, spec))


def test_cold_split_holds_whole_items_out_of_training():
    base = tiny_spec().model_dump(mode="json", exclude_defaults=True)
    spec = parse_spec({**base, "keys": {"item": "color"},
                       "split": {**base["split"], "cold": {"column": "color", "buckets": 4, "test": [0], "valid": [1]}}})
    raw = tiny_raw(400)
    split = split_of(raw, spec).to_numpy(zero_copy_only=False)
    colors = raw["color"].to_numpy(zero_copy_only=False)
    in_train = set(colors[split == "train"])
    held = set(colors) - in_train
    assert held, "some colour must be held out for this test to mean anything"
    for color in held:  # every row of a held-out item is in valid or test
        assert set(split[colors == color]) <= {"valid", "test"}
    with pytest.raises(SpecError, match="split.cold.column 'color' must be a key column"):
        parse_spec({**base, "split": {**base["split"], "cold": {"column": "color", "buckets": 4, "test": [0]}}})


def test_id_dropout_replaces_the_item_id_on_a_share_of_rows_only():
    from muxrec.config import TrainConfig
    from muxrec.pipelines.loop import drop_ids

    base = tiny_spec().model_dump(mode="json", exclude_defaults=True)
    spec = parse_spec({**base, "keys": {"item": "color"}})
    raw = tiny_raw(400)
    derived = derive(raw, spec)
    vocab = Vocabulary.fit(spec, count_values(derived, spec), moments(derived, spec), quantile_sketch(derived, spec))
    inputs = inputs_for(spec, vocab)
    assert inputs.item_feature == "color"
    batch = EncodedRows(encode(derived, spec, vocab), inputs).take(torch.arange(400))
    torch.manual_seed(0)
    dropped = drop_ids(batch, "color", 0.3)
    before, after = batch.sparse["color"].values(), dropped.sparse["color"].values()
    changed = before != after
    assert (after[changed] == 0).all() and 0.2 < changed.float().mean() < 0.4
    for other in ("tags", "title"):  # other features untouched, lengths too
        assert torch.equal(batch.sparse[other].values(), dropped.sparse[other].values())
    assert torch.equal(batch.sparse.lengths(), dropped.sparse.lengths())
    with pytest.raises(ValueError, match=r"id_dropout must be in \[0, 1\)"):
        TrainConfig(id_dropout=1.0)
