"""Content features served: item titles and images in rank requests, vectors through the Redis cache.

A second Serve application (route prefix /content, beside the session's) serves a small DeepFM over the
synthetic spec plus two content features: the item title through a text encoder (MiniLM + a PCA
projection fitted on the titles) and the item image through a vision tower, both pinned registry versions.
Online scores must equal offline ones, the second request for the same items must hit the cache under
the encoder's version, and bad images must be 422s naming the field.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np
import pyarrow.compute as pc
import pytest
import redis
import torch
from PIL import Image

from muxrec.artifacts import ArtifactRegistry, ModelVersion
from muxrec.encoding import SPLIT_COLUMN, Vocabulary, count_values, derive, moments, quantile_sketch
from muxrec.models import build_model, make_config
from muxrec.models.encoders.content import ContentVectors, publish_encoder
from muxrec.models.encoders.text import TextTowerConfig, build_text_tower
from muxrec.models.encoders.vision import VisionTowerConfig, build_vision_tower
from muxrec.models.serialization import load_model, model_files
from muxrec.pipelines.encoders import fit_text_projection
from muxrec.spec import ModelInputs, parse_spec

from tests.conftest import REPO
from tests.e2e.conftest import delete_app
from tests.helpers import synthetic_raw, synthetic_spec

pytestmark = pytest.mark.e2e

NAME = "content-ranker"
MAX_IMAGE_BYTES = 20_000


@dataclass(frozen=True)
class ContentApp:
    url: str
    version: ModelVersion
    raw: object  # the synthetic rows (pyarrow.Table), with titles and image paths
    redis_url: str


def _spec(image_dir: Path):
    data = synthetic_spec(rows=1500, labels=("click",)).model_dump(mode="json", exclude_defaults=True)
    data["source"]["options"] = {**data["source"]["options"], "items": 120, "image_dir": str(image_dir)}
    data["features"] += [
        {"name": "title_vec", "kind": "text", "source": "title", "encoder": "e2e-text@v0001", "dim": 16},
        {"name": "picture", "kind": "image", "source": "image", "encoder": "e2e-image@v0001", "dim": 8},
    ]
    return parse_spec(data)


@pytest.fixture(scope="module")
def content_app(served, redis_url, tmp_path_factory) -> ContentApp:
    from muxrec.apps.serving import wait_ready
    from muxrec.services.app import load_serve_config, start

    root = tmp_path_factory.mktemp("content")
    registry = ArtifactRegistry(root / "registry")
    spec = _spec(root / "images")
    raw = synthetic_raw(spec)
    text = build_text_tower(TextTowerConfig(max_len=16, dims=(8, 16)))
    fit_text_projection(text, sorted(set(raw["title"].to_pylist())))
    publish_encoder(registry, "e2e-text", text, "text")
    torch.manual_seed(0)
    publish_encoder(registry, "e2e-image", build_vision_tower(VisionTowerConfig(width_mult=0.25, dims=(4, 8))), "image")

    vectors = ContentVectors(spec, registry)
    derived = vectors.attach(derive(raw, spec))
    train = derived.filter(pc.equal(derived[SPLIT_COLUMN], "train"))
    vocab = Vocabulary.fit(spec, count_values(train, spec), moments(train, spec), quantile_sketch(train, spec))
    inputs = ModelInputs.from_spec(spec, vocab.num_embeddings())
    cfg = make_config("deepfm", {"embedding_dim": 8, "hidden_units": [16]})
    torch.manual_seed(1)
    model = build_model("deepfm", cfg, inputs)
    with torch.no_grad():  # off the initialisation, so that every field (the content ones too) moves the score
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    version = registry.publish(NAME, model_files(model, "deepfm", cfg, spec, vocab, vectors.digests))

    port = int(served.url.rsplit(":", 1)[1].split("/")[0])
    config = load_serve_config(REPO / "deploy" / "serve.yaml")
    light = {name: {**opts, "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.01}}
             for name, opts in config.deployments.items()}
    config = replace(config, port=port, app_name="content", route_prefix="/content", deployments=light)
    url = start(config, {"registry": str(registry.root), "model": NAME, "version": version.version,
                         "redis_url": redis_url, "max_image_bytes": MAX_IMAGE_BYTES})
    wait_ready(url)
    yield ContentApp(url, version, raw, redis_url)
    delete_app("content")


def _b64_file(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def _b64_image(image: Image.Image, fmt: str = "PNG") -> str:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return base64.b64encode(out.getvalue()).decode()


def _candidates(raw, rows: list[int]) -> list[dict]:
    out = []
    for i in rows:
        row = raw.slice(i, 1).to_pylist()[0]
        cand = {k: row[k] for k in ("user_id", "item_id", "site", "ad_type", "region", "device", "daypart", "slot",
                                    "noise_a", "noise_b", "tags", "price", "score", "noise_num", "title", "history")}
        cand["image"] = _b64_file(row["image"])
        out.append(cand)
    return out


def test_rank_with_titles_and_images_scores_as_offline_and_caches_by_encoder_version(content_app):
    rows = list(range(12))
    body = {"candidates": _candidates(content_app.raw, rows)}
    answer = httpx.post(f"{content_app.url}/v1/rank", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    online = np.zeros(len(rows))
    for item in answer.json()["items"]:
        online[item["index"]] = item["score"]
    offline = load_model(content_app.version).predict_raw(content_app.raw.take(rows))[:, 0]
    np.testing.assert_allclose(online, offline, atol=1e-5)
    assert offline.std() > 1e-4

    # The titles' vectors are now in Redis under the text encoder's version.
    titles = [c["title"] for c in body["candidates"]]
    embed = httpx.post(f"{content_app.url}/v1/embed/content", json={"feature": "title_vec", "values": titles},
                       timeout=60).json()
    assert embed["encoder"] == "e2e-text@v0001" and embed["dim"] == 16 and all(embed["cache_hits"])
    keys = redis.Redis.from_url(content_app.redis_url).keys("muxrec:emb:e2e-text@v0001@*:text16:*")
    assert len(keys) >= len(set(titles))


def test_served_content_vectors_equal_the_offline_ones(content_app):
    loaded = load_model(content_app.version)
    images = [content_app.raw["image"][i].as_py() for i in (20, 21, 22)]
    f = loaded.spec.feature("picture")
    offline = loaded.content.catalog(f, images)  # what prepare and batch scoring compute
    first = httpx.post(f"{content_app.url}/v1/embed/content",
                       json={"feature": "picture", "values": [_b64_file(p) for p in images]}, timeout=60).json()
    second = httpx.post(f"{content_app.url}/v1/embed/content",
                        json={"feature": "picture", "values": [_b64_file(p) for p in images]}, timeout=60).json()
    np.testing.assert_allclose(np.array(first["vectors"]), offline, atol=1e-5)
    np.testing.assert_allclose(np.array(second["vectors"]), offline, atol=1e-5)
    assert second["cache_hits"] == [True] * 3


@pytest.mark.parametrize("value, problem", [
    ("@@not base64@@", "not base64"),
    (base64.b64encode(b"plain text, no image").decode(), "not an image"),
    (None, "at most"),  # filled in below: a real PNG over max_image_bytes (bounded already as base64 text)
    (_b64_image(Image.new("RGB", (5000, 1))), "too large"),  # sides over the decoder's limit
])
def test_bad_images_are_422_naming_the_candidate_and_field(content_app, value, problem):
    if value is None:
        noise = np.random.default_rng(0).integers(0, 255, size=(120, 120, 3), dtype=np.uint8)
        value = _b64_image(Image.fromarray(noise))
        assert len(base64.b64decode(value)) > MAX_IMAGE_BYTES
    candidates = _candidates(content_app.raw, [0, 1])
    candidates[1]["image"] = value
    answer = httpx.post(f"{content_app.url}/v1/rank", json={"candidates": candidates}, timeout=60)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail[0]["loc"] == ["body", "candidates", 1, "image"] and problem in detail[0]["msg"]
    embed = httpx.post(f"{content_app.url}/v1/embed/content", json={"feature": "picture", "values": [value]},
                       timeout=60)
    assert embed.status_code == 422 and embed.json()["detail"][0]["loc"] == ["body", "values", 0]
