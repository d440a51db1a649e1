"""Feature selection on the served app (issue 14), over real HTTP with the real Redis: every stored
ranking of a model version, a ranking published after the deploy showing up without a redeploy, and
a reload to a model trained on a subset of the features.

The request model stays the deploy-time spec's; the live model's spec decides which fields a request
must carry and which the Ranker gets. The session's first version is live again afterwards.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pyarrow as pa
import pytest
import torch

from muxrec.models import build_model
from muxrec.models.serialization import load_model, model_files
from muxrec.pipelines.evaluate import split_rows
from muxrec.pipelines.selection import outrank_table
from muxrec.selection import FeatureRanking, FeatureScore, publish_ranking, subset_spec
from muxrec.spec import ModelInputs, parse_spec, spec_from_yaml

from tests.conftest import MODEL
from tests.e2e.conftest import ADMIN_TOKEN
from tests.e2e.test_gateway import _names, _rows
from tests.helpers import fitted, small_model, synthetic_raw

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
KEEP = ["user_id", "item_id", "site", "tags", "score", "title", "history"]  # drops price (required), noise, ...


@pytest.fixture
def reload_back(served):
    yield
    httpx.post(f"{served.url}/v1/admin/reload", json={"version": served.v1.version}, headers=AUTH,
               timeout=60).raise_for_status()


@pytest.fixture(scope="module")
def subset_version(served):
    """A DeepFM on the served spec without 9 of its 16 features, published as a version of the served name."""
    spec = subset_spec(spec_from_yaml(served.spec_path.read_text()), KEEP, "synthetic-lean")
    vocab, _ = fitted(spec, synthetic_raw(spec))
    architecture, cfg = small_model("deepfm")
    torch.manual_seed(7)
    model = build_model(architecture, cfg, ModelInputs.from_spec(spec, vocab.num_embeddings())).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # away from the near-zero initialisation: scores differ by row
    return served.registry.publish(MODEL, model_files(model, architecture, cfg, spec, vocab), aliases=())


def test_a_model_on_a_subset_of_the_features_reloads_and_ranks_with_or_without_the_dropped_fields(
        served, subset_version, reload_back):
    rows = _rows(30)
    request_fields = {c.name for c in spec_from_yaml(served.spec_path.read_text()).request_columns()}
    live_fields = {c.name for c in subset_version.read_spec().request_columns()}
    dropped = request_fields - live_fields
    assert {"price", "noise_a", "noise_num"} <= dropped
    lean = [{k: v for k, v in r.items() if k not in dropped} for r in rows]
    with httpx.Client(base_url=served.url, timeout=60) as http:
        assert http.post("/v1/rank", json={"candidates": lean}).status_code == 422  # v0001 needs price
        swap = http.post("/v1/admin/reload", json={"version": subset_version.version}, headers=AUTH)
        assert swap.status_code == 200, swap.text
        assert swap.json() == {"previous": served.v1.ref, "live": subset_version.ref}
        without = http.post("/v1/rank", json={"candidates": lean})
        assert without.status_code == 200, without.text
        carrying = http.post("/v1/rank", json={"candidates": rows}).raise_for_status().json()
        # price (required by the deploy-time spec, unread by the live model) sent by one, omitted by another
        mixed = http.post("/v1/rank", json={"candidates": [rows[0], lean[1]]}).raise_for_status().json()
        missing = http.post("/v1/rank", json={"candidates": [lean[0], {k: v for k, v in lean[1].items() if k != "score"}]})
        unknown = http.post("/v1/rank", json={"candidates": [{**lean[0], "colour": "red"}]})
    without = without.json()
    assert without["model_version"] == carrying["model_version"] == subset_version.ref
    assert without["items"] == carrying["items"]  # the dropped fields are accepted and ignored
    assert [i["id"] for i in sorted(without["items"], key=lambda i: i["index"])] == [str(r["item_id"]) for r in rows]
    assert len(mixed["items"]) == 2
    # Equal to offline scoring of the same rows by the same version.
    loaded = load_model(subset_version)
    offline = loaded.predict_raw(pa.Table.from_pylist(lean))[:, 0]  # (30,)
    online = np.zeros(len(rows))
    for item in without["items"]:
        online[item["index"]] = item["score"]
    np.testing.assert_allclose(online, offline, atol=1e-5)
    assert offline.std() > 1e-4
    # A field the live model requires, missing: 422 naming the candidate and field.
    assert missing.status_code == 422, missing.text
    assert [d["loc"] for d in missing.json()["detail"]] == [["body", "candidates", 1, "score"]]
    assert unknown.status_code == 422 and _names(unknown, ["body", "candidates", 0, "colour"])  # still the deploy's model


@pytest.mark.parametrize("change, message", [
    ({"add": {"name": "colour", "kind": "categorical"}}, "'colour' (string) is not a field of the request model"),
    ({"retype": "site"}, "'site' is read as string_list, the request model has it as string"),
])
def test_a_reload_to_a_spec_with_another_request_field_is_409_naming_it(served, change, message):
    data = spec_from_yaml(served.spec_path.read_text()).model_dump(mode="json", exclude_defaults=True)
    if "add" in change:
        data["features"].append(change["add"])
    else:
        data["features"] = [{**f, "kind": "multi_categorical", "max_len": 3} if f["name"] == change["retype"] else f
                            for f in data["features"]]
    spec = parse_spec(data)
    # Refused on its spec alone, before anything loads it: the files need not be a real model.
    target = served.registry.publish(MODEL, {"spec.yaml": spec.to_yaml(), "weights.safetensors": b"never loaded"},
                                     aliases=())
    r = httpx.post(f"{served.url}/v1/admin/reload", json={"version": target.version}, headers=AUTH, timeout=60)
    assert r.status_code == 409, r.text
    assert message in r.json()["detail"] and target.ref in r.json()["detail"]
    assert httpx.get(f"{served.url}/v1/models", timeout=30).json()["live"] == served.v1.ref


def _methods(answer: dict) -> list[str]:
    return [r["method"] for r in answer["rankings"]]


def test_rankings_of_a_version_include_one_published_after_the_deploy(served, subset_version):
    with httpx.Client(base_url=served.url, timeout=30) as http:
        before = http.get("/v1/features/rankings").raise_for_status().json()
        assert before["model_version"] == served.v1.ref and _methods(before) == ["permutation"]
        permutation = before["rankings"][0]
        assert permutation["artifact"] == served.v1.ref and permutation["task"] == "click"
        assert permutation["features"] == 16 and permutation["created_at"]
        # The permutation ranking is the stored importance, as /v1/features/importance serves it.
        importance = http.get("/v1/features/importance").json()
        same = http.get("/v1/features/rankings/permutation", params={"top_k": 4}).raise_for_status().json()
        assert [(f["name"], f["score"]) for f in same["features"]] == \
            [(f["name"], f["importance"]) for f in importance["features"][:4]]

        # OutRank on the served model's train rows, published as `muxrec select` would, with Serve running.
        loaded = load_model(served.v1)
        outrank = outrank_table(split_rows(loaded, "train"), loaded.inputs, repeats=5)
        stored = publish_ranking(served.registry, outrank, loaded.spec)
        deadline = time.monotonic() + 30
        while "outrank" not in _methods(after := http.get("/v1/features/rankings").json()):
            assert time.monotonic() < deadline, after
            time.sleep(0.5)
        assert _methods(after) == ["permutation", "outrank"]
        listed = after["rankings"][1]
        assert listed["artifact"] == stored.ref and listed["features"] == len(outrank.features)

        got = http.get("/v1/features/rankings/outrank").raise_for_status().json()
        top = http.get("/v1/features/rankings/outrank", params={"top_k": 3, "version": "v0001"}).json()
        other = http.get("/v1/features/rankings", params={"version": served.v2.version}).json()
        lean = http.get("/v1/features/rankings", params={"version": subset_version.version}).json()
        lean_404 = http.get("/v1/features/rankings/outrank", params={"version": subset_version.version})
    assert got["model_version"] == served.v1.ref and got["artifact"] == stored.ref
    assert got["method"] == "outrank" and got["task"] == "click" and got["meta"]["rows"] > 1000
    assert [f["name"] for f in got["features"]] == list(outrank.names)
    assert FeatureRanking.from_json(stored.read_text("ranking.json")).score_of(got["features"][0]["name"]) == \
        FeatureScore(**got["features"][0])
    assert top["features"] == got["features"][:3]
    # Computed without a model on v0002's spec too, so it describes v0002; the subset model has another spec.
    assert other["model_version"] == served.v2.ref and _methods(other) == ["permutation", "outrank"]
    assert lean == {"model_version": subset_version.ref, "rankings": []}
    assert lean_404.status_code == 404 and "methods stored for it: []" in lean_404.json()["detail"]


@pytest.mark.parametrize("path, params, status, says", [
    ("/v1/features/rankings/optfs", {}, 404, "no stored 'optfs' ranking; methods stored for it: ['permutation'"),
    ("/v1/features/rankings/outrank", {"version": "v0999"}, 404, "has no version v0999"),
    ("/v1/features/rankings", {"version": "v0999"}, 404, "has no version v0999"),
    ("/v1/features/rankings", {"version": "nightly"}, 404, "has no alias 'nightly'"),
    ("/v1/features/rankings", {"version": "../etc"}, 422, "string_pattern_mismatch"),
    ("/v1/features/rankings/permutation", {"top_k": 0}, 422, "greater_than_equal"),
    ("/v1/features/rankings/permutation", {"top_k": "all"}, 422, "int_parsing"),
    ("/v1/features/rankings/" + "m" * 65, {}, 422, "string_too_long"),
])
def test_unknown_rankings_are_404_and_bad_parameters_422(served, path, params, status, says):
    r = httpx.get(f"{served.url}{path}", params=params, timeout=30)
    assert r.status_code == status, r.text
    assert says in r.text
