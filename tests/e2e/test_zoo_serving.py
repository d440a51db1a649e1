"""Every model of the zoo round-trips through the registry and scores through the Ranker over HTTP
exactly as offline evaluation does.

Each model is built small on the served model's spec and vocabulary, published as a new version of
the served name, made live with the admin reload, and asked to rank test rows; the scores must equal
the offline predictions of the same version. The session's first version is live again afterwards.
"""

from __future__ import annotations

import httpx
import numpy as np
import pyarrow as pa
import pytest
import torch

from muxrec.config import TrainConfig
from muxrec.models import EncodedRows, build_model, make_config
from muxrec.models.layers.tables import QRTable, QuantizedTable, SparseTable
from muxrec.models.serialization import load_model, model_files
from muxrec.pipelines.evaluate import split_rows
from muxrec.pipelines.loop import Objective, evaluate_rows, make_optimizer, train_epoch
from muxrec.spec import ModelInputs, spec_from_yaml

from tests.conftest import MODEL
from tests.e2e.conftest import ADMIN_TOKEN
from tests.e2e.test_gateway import _rows
from tests.helpers import every_method_spec, fitted, model_config_files, small_model, synthetic_raw, unified_spec

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _assert_online_is_offline(answer: dict, offline: np.ndarray) -> None:
    """The /v1/rank answer's scores, put back in request order, equal `offline` (one per row), which
    must differ between rows for the comparison to mean anything."""
    online = np.zeros(len(offline))
    for item in answer["items"]:
        online[item["index"]] = item["score"]
    np.testing.assert_allclose(online, offline, atol=1e-5)
    assert offline.std() > 1e-4, "scores must differ between rows for the comparison to mean anything"


@pytest.fixture
def reload_back(served):
    yield
    httpx.post(f"{served.url}/v1/admin/reload", json={"version": served.v1.version}, headers=AUTH,
               timeout=60).raise_for_status()


@pytest.mark.parametrize("name", model_config_files())
def test_model_scores_the_same_online_and_offline(name, served, reload_back):
    base = load_model(served.v1)
    architecture, cfg = small_model(name)
    torch.manual_seed(7)
    model = build_model(architecture, cfg, base.inputs).eval()
    # Move every weight off its init (LR starts at zero, BatchNorm at identity). Multi-task models stack
    # a bottom, experts and towers, which shrink a small nudge: at 0.05 PLE's scores differed by 5e-5.
    scale = 0.1 if hasattr(model, "funnel") else 0.05
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    files = model_files(model, architecture, cfg, base.spec, base.vocab)
    files["importance.json"] = served.v1.read_text("importance.json")
    version = served.registry.publish(MODEL, files, aliases=())

    rows = _rows(40)
    with httpx.Client(base_url=served.url, timeout=60) as http:
        swap = http.post("/v1/admin/reload", json={"version": version.version}, headers=AUTH)
        assert swap.status_code == 200, swap.text
        answer = http.post("/v1/rank", json={"candidates": rows}).raise_for_status().json()
    assert answer["model_version"] == version.ref

    loaded = load_model(version)
    assert loaded.name == architecture and loaded.config == cfg
    offline = loaded.predict(EncodedRows(split_rows(loaded, "test"), loaded.inputs))[:40]  # (40, T)
    _assert_online_is_offline(answer, offline[:, 0])  # the spec's blend: click alone
    for t, task in enumerate(loaded.inputs.tasks[:offline.shape[1]] if offline.shape[1] > 1 else ()):
        online = np.zeros(40)
        for item in answer["items"]:
            online[item["index"]] = item["task_scores"][task]
        np.testing.assert_allclose(online, offline[:, t], atol=1e-5)  # every task's score, multi-task models too


def test_a_unified_quantized_model_scores_and_embeds_the_same_online_and_offline(served, reload_back):
    """A version whose spec multiplexes its categorical features into one hashed table (user_id on two
    rows of it), stored row-wise int8: the Ranker encodes requests by the same per-feature seeds as
    offline encoding and scores with the quantized table, and the Embedder serves a user's two
    dequantized rows summed."""
    spec = unified_spec(rows=6000, seed=21, buckets=256, slots=2, quantize="int8")  # the served data, re-specified
    vocab, encoded = fitted(spec, synthetic_raw(spec))
    architecture, cfg = small_model("deepfm")
    torch.manual_seed(7)
    inputs = ModelInputs.from_spec(spec, vocab.num_embeddings())
    model = build_model(architecture, cfg, inputs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    files = model_files(model, architecture, cfg, spec, vocab)
    files["importance.json"] = served.v1.read_text("importance.json")
    version = served.registry.publish(MODEL, files, aliases=())

    rows = _rows(40)
    users = sorted({str(r["user_id"]) for r in rows})[:5] + ["never-seen"]
    with httpx.Client(base_url=served.url, timeout=60) as http:
        http.post("/v1/admin/reload", json={"version": version.version}, headers=AUTH).raise_for_status()
        answer = http.post("/v1/rank", json={"candidates": rows}).raise_for_status().json()
        embedded = http.post("/v1/embed", json={"entity": "user", "ids": users}).raise_for_status().json()
    assert answer["model_version"] == embedded["model_version"] == version.ref

    loaded = load_model(version)
    _assert_online_is_offline(answer, loaded.predict(EncodedRows(encoded["test"], loaded.inputs))[:40, 0])

    assert version.read_json("model.json")["served_as"] == {"unified": "int8"}
    table = loaded.model.embedding.table("unified")
    assert isinstance(table, QuantizedTable)
    ids = torch.from_numpy(vocab.tables["unified"].ids(pa.array(users), "user_id", 2))  # (N, 2)
    np.testing.assert_allclose(np.array(embedded["vectors"]), table(ids).sum(dim=1).numpy(), atol=1e-6)
    assert embedded["known"] == [True] * len(users)  # hashed: every non-missing id has rows


def test_every_table_method_scores_and_embeds_the_same_online_and_offline(served, reload_back):
    """A version with a table of every method (every_method_spec: user_id int8, the item table QR, site
    mixed dims, region a Matryoshka prefix, slot pruned to sparse rows, three features multiplexed): the
    Ranker's scores over HTTP equal offline scores, and the Embedder serves the int8 user rows and the
    QR item rows as the loaded tables give them."""
    spec = every_method_spec(rows=6000, seed=21)
    vocab, encoded = fitted(spec, synthetic_raw(spec))
    architecture, cfg = small_model("deepfm")
    torch.manual_seed(7)
    model = build_model(architecture, cfg, ModelInputs.from_spec(spec, vocab.num_embeddings()))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # away from the near-zero initialisation: scores differ by row
    batch = EncodedRows(encoded["train"], model.embedding.inputs).take(torch.arange(512))
    for _ in range(60):
        model(batch)  # training-mode calls: the pruned table's schedule reaches keep (ramp 50 steps)
    model.eval()
    files = model_files(model, architecture, cfg, spec, vocab)
    files["importance.json"] = served.v1.read_text("importance.json")
    version = served.registry.publish(MODEL, files, aliases=())
    assert version.read_json("model.json")["served_as"] == {"user_id": "int8", "region": "prefix:2", "slot": "prune:0.5"}

    rows = _rows(40)
    users = sorted({str(r["user_id"]) for r in rows})[:5] + ["never-seen"]
    items = sorted({str(r["item_id"]) for r in rows})[:5]
    with httpx.Client(base_url=served.url, timeout=60) as http:
        http.post("/v1/admin/reload", json={"version": version.version}, headers=AUTH).raise_for_status()
        answer = http.post("/v1/rank", json={"candidates": rows}).raise_for_status().json()
        user_vectors = http.post("/v1/embed", json={"entity": "user", "ids": users}).raise_for_status().json()
        item_vectors = http.post("/v1/embed", json={"entity": "item", "ids": items}).raise_for_status().json()
    assert answer["model_version"] == user_vectors["model_version"] == version.ref

    loaded = load_model(version)
    _assert_online_is_offline(answer, loaded.predict(EncodedRows(encoded["test"], loaded.inputs))[:40, 0])

    emb = loaded.model.embedding
    assert isinstance(emb.table("user_id"), QuantizedTable) and isinstance(emb.table("item"), QRTable)
    assert isinstance(emb.table("slot"), SparseTable)
    for entity, values, feature, table in [("user", users, "user_id", "user_id"), ("item", items, "item_id", "item")]:
        ids = torch.from_numpy(vocab.tables[table].ids(pa.array(values)))
        got = np.array((user_vectors if entity == "user" else item_vectors)["vectors"])
        np.testing.assert_allclose(got, emb.lookup(feature, ids).detach().numpy(), atol=1e-6)
    assert user_vectors["known"] == [True] * 5 + [False]


def test_a_task_added_by_yaml_alone_trains_publishes_and_serves(served, reload_back):
    """The served spec plus one label written in YAML (a third task, `pricey`): an
    MMoE trains on it with the training loop, publishes, goes live by the admin reload and ranks by a
    request blend naming the new task, every task's score equal to offline."""
    text = served.spec_path.read_text()
    assert "\nsplit:" in text and "pricey" not in text
    text = text.replace("\nsplit:", "\n- {name: pricey, source: price, when: '> 25'}\nsplit:", 1)  # one YAML line
    spec = spec_from_yaml(text)
    assert spec.label_names == ["click", "conversion", "pricey"]
    vocab, encoded = fitted(spec, synthetic_raw(spec))
    inputs = ModelInputs.from_spec(spec, vocab.num_embeddings())
    rows = EncodedRows(encoded["train"], inputs)
    cfg = make_config("mmoe", {"embedding_dim": 8, "funnel": "masked"})
    torch.manual_seed(7)
    model = build_model("mmoe", cfg, inputs)
    train_cfg = TrainConfig(epochs=1, batch_size=256, lr=3e-3)
    optimizer = make_optimizer(model, train_cfg)
    train_epoch(model, model, rows, train_cfg, 0, optimizer, objective=Objective.fit(rows, masked=True))
    metrics = evaluate_rows(model, EncodedRows(encoded["valid"], inputs), inputs, 1024)
    assert metrics["pricey_auc"] > 0.7 and "conversion_given_click_auc" in metrics  # it learned the new task
    model.eval()
    files = model_files(model, "mmoe", cfg, spec, vocab)
    files["importance.json"] = served.v1.read_text("importance.json")
    version = served.registry.publish(MODEL, files, aliases=())

    request = _rows(40)
    with httpx.Client(base_url=served.url, timeout=60) as http:
        http.post("/v1/admin/reload", json={"version": version.version}, headers=AUTH).raise_for_status()
        answer = http.post("/v1/rank", json={"candidates": request, "blend": {"pricey": 1}}).raise_for_status().json()
    assert answer["model_version"] == version.ref and answer["blend"] == {"pricey": 1.0}
    loaded = load_model(version)
    offline = loaded.predict(EncodedRows(split_rows(loaded, "test"), loaded.inputs))[:40]  # (40, 3)
    assert offline.shape == (40, 3)
    _assert_online_is_offline(answer, offline[:, 2])
    for item in answer["items"]:  # and P(conversion) <= P(click): the masked funnel is chained
        assert item["task_scores"]["conversion"] <= item["task_scores"]["click"] + 1e-6
