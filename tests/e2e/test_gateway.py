"""The Serve app over real HTTP, with the real Redis: every route, offline/online agreement, the
embedding cache, bad input, admin auth and a reload under a stream of requests."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis

from muxrec.encoding import split_of
from muxrec.models import EncodedRows
from muxrec.models.serialization import load_model
from muxrec.pipelines.evaluate import split_rows
from muxrec.services.cache import cache_key, decode_vector, version_tag

from tests.e2e.conftest import ADMIN_TOKEN
from tests.helpers import synthetic_raw, synthetic_spec

pytestmark = pytest.mark.e2e


def _rows(n: int = 40, split: str = "test") -> list[dict]:
    """Raw rows of the model's dataset, as a client would send them (request columns only)."""
    spec = synthetic_spec(rows=6000, seed=21)
    raw = synthetic_raw(spec)
    raw = raw.filter(pc.equal(split_of(raw, spec), split))
    columns = [c.name for c in spec.request_columns()]
    return raw.select(columns).slice(0, n).to_pylist()


def test_health_readiness_models_and_importance(served):
    with httpx.Client(base_url=served.url, timeout=30) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz").json()
        assert ready["status"] == "ready" and ready["redis"] == "ok"
        assert ready["model_version"] == served.v1.ref
        models = http.get("/v1/models").json()
        assert models["live"] == served.v1.ref
        assert [v["version"] for v in models["versions"]][:2] == ["v0001", "v0002"]  # the zoo test adds more
        full = http.get("/v1/features/importance").json()
        top = http.get("/v1/features/importance", params={"top_k": 3}).json()
        assert full["method"] == "permutation" and len(top["features"]) == 3
        assert top["features"] == full["features"][:3]
        assert http.get("/v1/features/importance", params={"top_k": 0}).status_code == 422


def test_rank_scores_equal_offline_predictions(served):
    rows = _rows(40)
    body = {"candidates": rows}
    with httpx.Client(base_url=served.url, timeout=30) as http:
        answer = http.post("/v1/rank", json=body).raise_for_status().json()
        top = http.post("/v1/rank", json={**body, "top_k": 5}).json()
    assert answer["model_version"] == served.v1.ref
    scores = [item["score"] for item in answer["items"]]
    assert scores == sorted(scores, reverse=True)
    assert top["items"] == answer["items"][:5]
    assert sorted(item["index"] for item in answer["items"]) == list(range(40))
    # The offline evaluation path: the test split re-derived and encoded with the model's vocabulary.
    loaded = load_model(served.v1)
    offline = loaded.predict(EncodedRows(split_rows(loaded, "test"), loaded.inputs))[:40, 0]
    online = np.zeros(40)
    for item in answer["items"]:
        online[item["index"]] = item["score"]
    np.testing.assert_allclose(online, offline, atol=1e-5)
    assert [item["id"] for item in sorted(answer["items"], key=lambda i: i["index"])] == \
        [str(r["item_id"]) for r in rows]


def test_a_request_blend_reorders_by_its_weighted_task_scores(served):
    rows = _rows(30)
    with httpx.Client(base_url=served.url, timeout=30) as http:
        default = http.post("/v1/rank", json={"candidates": rows}).raise_for_status().json()
        conversion = http.post("/v1/rank", json={"candidates": rows, "blend": {"conversion": 2}}).raise_for_status().json()
        mixed = http.post("/v1/rank", json={"candidates": rows, "blend": {"click": 1, "conversion": 3}}).raise_for_status().json()
    # The served DeepFM predicts both tasks of its spec; the spec's blend is click alone.
    assert default["blend"] == {"click": 1.0}
    assert all(item["score"] == item["task_scores"]["click"] for item in default["items"])
    assert conversion["blend"] == {"conversion": 1.0}
    assert all(item["score"] == item["task_scores"]["conversion"] for item in conversion["items"])
    assert mixed["blend"] == {"click": 0.25, "conversion": 0.75}
    for item in mixed["items"]:
        s = item["task_scores"]
        assert item["score"] == pytest.approx(0.25 * s["click"] + 0.75 * s["conversion"], abs=1e-6)
    for answer in (conversion, mixed):
        scores = [item["score"] for item in answer["items"]]
        assert scores == sorted(scores, reverse=True)
    assert [i["index"] for i in conversion["items"]] != [i["index"] for i in default["items"]]


@pytest.mark.parametrize("blend, where, message", [
    ({"purchase": 1.0}, ["body", "blend", "purchase"], "does not predict task 'purchase'"),
    ({"click": -1}, ["body", "blend", "click"], "greater than or equal to 0"),
    ({"click": 0, "conversion": 0}, ["body", "blend"], "at least one weight must be > 0"),
    ({"click": "high"}, ["body", "blend", "click"], ""),
])
def test_a_bad_blend_is_422_naming_it(served, blend, where, message):
    r = httpx.post(f"{served.url}/v1/rank", json={"candidates": _rows(3), "blend": blend}, timeout=30)
    assert r.status_code == 422, r.text
    assert _names(r, where), r.json()["detail"][:3]
    assert message in r.text


def test_context_fields_are_shared_by_candidates(served):
    rows = _rows(5)
    user_cols = ["user_id", "history"]
    context = {c: rows[0][c] for c in user_cols}
    candidates = [{k: v for k, v in r.items() if k not in user_cols} for r in rows]
    with httpx.Client(base_url=served.url, timeout=30) as http:
        split = http.post("/v1/rank", json={"context": context, "candidates": candidates}).json()
        whole = http.post("/v1/rank", json={"candidates": [{**c, **context} for c in candidates]}).json()
    assert split == whole


def _tag(version) -> str:
    return version_tag(version.ref, version.manifest["files"]["weights.safetensors"])


def test_embed_misses_then_hits_and_keys_live_in_redis_with_ttl(served, redis_url):
    client = redis.Redis.from_url(redis_url)
    ids = ["u-none", *[str(r["user_id"]) for r in _rows(6, "train")]]
    ids = list(dict.fromkeys(ids))
    for i in ids:
        client.delete(cache_key(_tag(served.v1), "user", i))
    with httpx.Client(base_url=served.url, timeout=30) as http:
        first = http.post("/v1/embed", json={"entity": "user", "ids": ids}).raise_for_status().json()
        second = http.post("/v1/embed", json={"entity": "user", "ids": ids}).json()
    assert first["cache_hits"] == [False] * len(ids)
    assert first["known"] == [False] + [True] * (len(ids) - 1)  # an unknown id gets the OOV row
    assert second["cache_hits"] == [False] + [True] * (len(ids) - 1)  # unknown ids are not cached
    assert second["vectors"] == first["vectors"] and first["dim"] == 8
    for i, vector in zip(ids[1:], first["vectors"][1:]):
        key = cache_key(_tag(served.v1), "user", i)
        assert 0 < client.ttl(key) <= 3600
        np.testing.assert_array_equal(decode_vector(client.get(key)), np.asarray(vector, np.float32))
    assert client.get(cache_key(_tag(served.v1), "user", "u-none")) is None


def _names(response: httpx.Response, where: list) -> bool:
    """Whether a 422 detail points at `where` (union types append the branch to the location)."""
    return any(d["loc"][:len(where)] == where for d in response.json()["detail"])


def _json(body) -> dict:
    return {"content": json.dumps(body), "headers": {"content-type": "application/json"}}


@pytest.mark.parametrize("body, status, where", [
    ({"candidates": [{"item_id": 1, "colour": "red"}]}, 422, ["body", "candidates", 0, "colour"]),
    ({"candidates": [{"item_id": [1, 2]}]}, 422, ["body", "candidates", 0, "item_id"]),
    ({"candidates": [{"price": "cheap"}]}, 422, ["body", "candidates", 0, "price"]),
    ({"candidates": [{"item_id": 1}]}, 422, ["body", "candidates", 0, "price"]),  # required (numeric), missing
    ({"candidates": []}, 422, ["body", "candidates"]),
    ({"candidates": [{}] * 1001}, 422, ["body", "candidates"]),
    ({"candidates": [{"item_id": 1}], "top_k": 0}, 422, ["body", "top_k"]),
    ({"context": {"user_id": 1}, "candidates": [{"user_id": 2}]}, 422, ["body", "candidates", 0, "user_id"]),
    ({"entity": "user"}, 422, ["body", "candidates"]),
])
def test_bad_rank_requests_name_the_field(served, body, status, where):
    r = httpx.post(f"{served.url}/v1/rank", timeout=30, **_json(body))
    assert r.status_code == status, r.text
    assert _names(r, where), r.json()["detail"][:3]


def test_nan_and_inf_are_422_not_500(served):
    row = _rows(1)[0]
    for token in ("NaN", "Infinity", "-Infinity"):
        text = json.dumps({"candidates": [{**row, "price": 1.5}]}).replace("1.5", token)
        r = httpx.post(f"{served.url}/v1/rank", content=text, headers={"content-type": "application/json"})
        assert r.status_code == 422, (token, r.text)
        assert _names(r, ["body", "candidates", 0, "price"])


def test_omitted_fields_score_as_the_same_fields_null_in_the_data(served):
    """A categorical, text or list field left out of a request (or sent as null) is scored as the
    same row with that field null in the source data: the missing id / an empty list in both."""
    rows = _rows(6)
    dropped = ("site", "title", "tags", "user_id")
    offline_rows = [{**r, **{k: None for k in dropped}} for r in rows]
    raw = pa.Table.from_pylist(offline_rows, schema=pa.Table.from_pylist(rows).schema)
    offline = load_model(served.v1).predict_raw(raw)[:, 0]
    body = [{k: v for k, v in r.items() if k not in dropped} if i % 2 else {**r, **{k: None for k in dropped}}
            for i, r in enumerate(rows)]
    with httpx.Client(base_url=served.url, timeout=30) as http:
        answer = http.post("/v1/rank", json={"candidates": body}).raise_for_status().json()
        full = http.post("/v1/rank", json={"candidates": rows}).raise_for_status().json()
    online = np.zeros(len(rows))
    for item in answer["items"]:
        online[item["index"]] = item["score"]
    np.testing.assert_allclose(online, offline, atol=1e-5)
    assert sorted(i["score"] for i in full["items"]) != sorted(online.tolist())  # the fields did matter


def test_unknown_categories_are_not_errors(served):
    row = {**_rows(1)[0], "site": "never-seen-site", "item_id": 987654321, "tags": ["brand-new-tag"]}
    r = httpx.post(f"{served.url}/v1/rank", json={"candidates": [row]}, timeout=30)
    assert r.status_code == 200 and 0 < r.json()["items"][0]["score"] < 1


def test_oversized_body_is_413(served):
    big = "x" * (1 << 20)
    r = httpx.post(f"{served.url}/v1/rank", **_json({"candidates": [{"site": big}]}))
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    r = httpx.post(f"{served.url}/v1/embed", **_json({"entity": "user", "ids": ["1"] * 2000}))
    assert r.status_code == 422  # within the body limit, over max_embed_ids


def test_malformed_json_and_wrong_method(served):
    r = httpx.post(f"{served.url}/v1/rank", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert httpx.get(f"{served.url}/v1/rank").status_code == 405


def test_admin_reload_needs_the_bearer_token(served):
    url = f"{served.url}/v1/admin/reload"
    assert httpx.post(url, json={"version": "v0002"}).status_code == 401
    assert httpx.post(url, json={"version": "v0002"}, headers={"authorization": "Bearer wrong"}).status_code == 401
    ok = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    assert httpx.post(url, json={"version": "v0099"}, headers=ok, timeout=30).status_code == 404
    assert httpx.get(f"{served.url}/v1/models").json()["live"] == served.v1.ref


def test_reload_under_a_stream_of_requests_fails_none(served, redis_url):
    rows = _rows(20)
    statuses, versions, stop = [], [], threading.Event()

    def stream():
        with httpx.Client(base_url=served.url, timeout=30) as http:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline and len(statuses) < 2000:
                r = http.post("/v1/rank", json={"candidates": rows})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["model_version"])

    ids = [str(r["user_id"]) for r in rows[:3]]
    client = redis.Redis.from_url(redis_url)
    client.delete(*[cache_key(_tag(v), "user", i) for v in (served.v1, served.v2) for i in ids])
    with httpx.Client(base_url=served.url, timeout=30) as http:
        http.post("/v1/embed", json={"entity": "user", "ids": ids})  # cache them under v0001
    workers = [threading.Thread(target=stream) for _ in range(3)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        r = httpx.post(f"{served.url}/v1/admin/reload", json={"version": "v0002"}, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json() == {"previous": served.v1.ref, "live": served.v2.ref}
        time.sleep(1.0)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=60)
    try:
        assert statuses and all(s == 200 for s in statuses), {s: statuses.count(s) for s in set(statuses)}
        assert versions[-1] == served.v2.ref and served.v1.ref in versions
        with httpx.Client(base_url=served.url, timeout=30) as http:
            after = http.post("/v1/embed", json={"entity": "user", "ids": ids}).json()
            assert after["model_version"] == served.v2.ref
            assert after["cache_hits"] == [False] * 3  # v0001's vectors are never served for v0002
            metrics = http.get("/metrics").text
            assert f'muxrec_model_info{{version="{served.v2.ref}"}} 1.0' in metrics
    finally:
        httpx.post(f"{served.url}/v1/admin/reload", json={"version": "v0001"}, headers=auth, timeout=60)


def test_metrics_report_routes_batches_and_cache(served):
    with httpx.Client(base_url=served.url, timeout=30) as http:
        http.post("/v1/rank", json={"candidates": _rows(3)})
        assert http.post("/v1/rank", json={}).status_code == 422  # so the test does not rely on an earlier one's
        text = http.get("/metrics").text
    assert 'muxrec_requests_total{route="/v1/rank",status="200"}' in text
    assert 'muxrec_requests_total{route="/v1/rank",status="422"}' in text
    assert "muxrec_request_latency_seconds_bucket" in text and "muxrec_ranker_batch_rows_bucket" in text
    assert 'muxrec_embedding_cache_total{result="hits"}' in text and "muxrec_redis_up 1.0" in text
    assert f'muxrec_model_info{{version="{served.v1.ref}"}} 1.0' in text
    # The Ranker's own encode + forward, as each scored request saw it: part of, and less than, its latency.
    compute = _metric(text, "muxrec_ranker_compute_seconds_sum")
    assert _metric(text, "muxrec_ranker_compute_seconds_count") >= 1 and compute > 0
    assert compute < sum(_metric(text, f'muxrec_request_latency_seconds_sum{{route="/v1/rank",status="{status}"}}')
                         for status in _statuses(text, "/v1/rank"))


def _statuses(text: str, route: str) -> set[str]:
    return set(re.findall(rf'muxrec_request_latency_seconds_sum{{route="{re.escape(route)}",status="(\d+)"}}', text))


def _metric(text: str, sample: str) -> float:
    """The value of one sample line (name and labels exactly as written) of a Prometheus text page."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.rsplit(" ", 1)[0] == sample]
    assert len(values) == 1, sample
    return values[0]
