"""Faults that must be non-events (issue 10), over real HTTP against the real Serve app and Redis:
the live version survives a redeploy, lone surrogates are 4xx, malformed cached vectors are misses and
get overwritten, chunked bodies over the limit are 413, fields are strict, the Bearer scheme is
case-insensitive and aliases cannot leave the registry. Each test prints its figure."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import redis

from muxrec.services.cache import cache_key, decode_vector, encode_vector

from tests.conftest import REPO
from tests.e2e.conftest import ADMIN_TOKEN, delete_app, extra_app
from tests.e2e.test_gateway import _json, _rows, _tag

pytestmark = pytest.mark.e2e
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _ok_or_client_error(status: int) -> bool:
    return 200 <= status < 300 or 400 <= status < 500


def test_live_version_survives_a_gateway_and_ranker_redeploy(served):
    from ray import serve

    from muxrec.services.app import build_app, load_serve_config, make_settings

    # `latest` is v0001; the app starts on it, is reloaded to v0002, then every deployment is redeployed
    # (new actor options restart every replica, two Gateway replicas instead of one) with the same
    # settings: the live version must stay v0002 and the restarted Ranker must load it, not `latest`.
    name = "alias"
    url = extra_app(served, name, {"version": "latest", "admin_token": ADMIN_TOKEN})
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.get("/v1/models").json()["live"] == served.v1.ref
            r = http.post("/v1/admin/reload", json={"version": served.v2.version}, headers=AUTH)
            assert r.status_code == 200, r.text
        config = load_serve_config(REPO / "deploy" / "serve.yaml")
        moved = {n: {**opts, "ray_actor_options": {"num_cpus": 0.04}} for n, opts in config.deployments.items()}
        moved["Gateway"]["num_replicas"] = 2
        settings = make_settings({"registry": str(served.registry.root), "model": served.v1.name,
                                  "version": "latest", "serving_alias": f"serving-{name}"})
        serve.run(build_app(settings, moved), name=name, route_prefix=f"/{name}")
        with httpx.Client(base_url=url, timeout=60) as http:
            versions = [http.post("/v1/rank", json={"candidates": _rows(3)}).json()["model_version"]
                        for _ in range(40)]
            ready = http.get("/readyz").json()
            live = http.get("/v1/models").json()["live"]
        served_by_v2 = sum(v == served.v2.ref for v in versions)
        print(f"after a redeploy of every replica: {served_by_v2}/{len(versions)} requests served by the "
              f"reloaded {served.v2.ref}; live {live}; Ranker loaded {ready['ranker_versions']}")
        assert served_by_v2 == len(versions) and live == served.v2.ref
        assert ready["ranker_versions"] == [served.v2.version]  # the serving version, not `latest`
    finally:
        delete_app(name)


def _surrogate_bodies() -> list[tuple[str, str, str]]:
    """(route, field, raw JSON body) with a lone surrogate in each string field the routes take."""
    row = _rows(1)[0]
    out = []
    for column, value in row.items():
        if isinstance(value, str) or isinstance(value, list) or column in ("user_id", "item_id"):
            bad = ["\ud800"] if isinstance(value, list) else "\ud800"
            out.append(("/v1/rank", f"candidates[0].{column}", json.dumps({"candidates": [{**row, column: bad}]})))
            context = {column: bad}
            candidate = {k: v for k, v in row.items() if k != column}
            out.append(("/v1/rank", f"context.{column}", json.dumps({"context": context, "candidates": [candidate]})))
    out.append(("/v1/rank", "candidates[0] key", json.dumps({"candidates": [{**row, "\ud800": 1}]})))
    out.append(("/v1/rank", "body key", json.dumps({"candidates": [row], "\udfff": 1})))
    out.append(("/v1/embed", "ids", json.dumps({"entity": "user", "ids": ["1", "\ud800"]})))
    out.append(("/v1/embed", "entity", json.dumps({"entity": "\ud800", "ids": ["1"]})))
    out.append(("/v1/admin/reload", "version", json.dumps({"version": "\ud800"})))
    return out


def test_lone_surrogates_in_any_string_field_are_4xx(served):
    bodies = _surrogate_bodies()
    statuses = {}
    with httpx.Client(base_url=served.url, timeout=30) as http:
        for route, where, text in bodies:
            r = http.post(route, content=text, headers={"content-type": "application/json", **AUTH})
            statuses[f"{route} {where}"] = r.status_code
            r.json()  # a well-formed JSON answer, not a reset connection
    bad = {k: s for k, s in statuses.items() if not _ok_or_client_error(s)}
    print(f"lone surrogates: {len(statuses)} requests, statuses {sorted(set(statuses.values()))}, "
          f"{len(bad)} server errors")
    assert not bad, bad
    assert statuses["/v1/embed ids"] == 422


def test_malformed_cached_vectors_are_misses_and_are_overwritten(served, redis_url):
    client = redis.Redis.from_url(redis_url)
    ids = list(dict.fromkeys(str(r["user_id"]) for r in _rows(8, "train")))[:6]
    with httpx.Client(base_url=served.url, timeout=30) as http:
        live = http.get("/v1/models").json()["live"]
        version = served.v1 if live == served.v1.ref else served.v2
        good = http.post("/v1/embed", json={"entity": "user", "ids": ids}).raise_for_status().json()
        dim = good["dim"]
        keys = [cache_key(_tag(version), "user", i) for i in ids]
        bad_values = [np.arange(dim, dtype="<f4").tobytes(),  # the old raw format: no header
                      encode_vector(np.arange(dim + 3)),  # wrong length
                      encode_vector(np.arange(dim))[:-1],  # truncated
                      encode_vector(np.full(dim, np.nan)),  # not finite
                      b"\x00garbage",
                      encode_vector(np.arange(dim))[:8] + np.arange(dim, dtype="<f8").tobytes()]  # float64
        for key, value in zip(keys, bad_values):
            client.set(key, value, ex=60)
        first = http.post("/v1/embed", json={"entity": "user", "ids": ids})
        second = http.post("/v1/embed", json={"entity": "user", "ids": ids}).json()
    assert first.status_code == 200, first.text
    first = first.json()
    repaired = [decode_vector(client.get(k), dim) is not None for k in keys]
    print(f"malformed cached vectors: {len(bad_values)} planted, {first['cache_hits'].count(False)} treated as "
          f"misses, {sum(repaired)} overwritten with valid vectors, {second['cache_hits'].count(True)} hits after")
    assert first["cache_hits"] == [False] * len(ids) and first["vectors"] == good["vectors"]
    assert all(repaired) and second["cache_hits"] == [True] * len(ids)
    np.testing.assert_allclose(second["vectors"], good["vectors"])


def test_chunked_body_over_the_limit_is_413(served):
    def chunks():
        yield b'{"candidates": [{"site": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}]}'

    r = httpx.post(f"{served.url}/v1/rank", content=chunks(), headers={"content-type": "application/json"},
                   timeout=30)
    print(f"chunked body of {40 * 65536 + 30} bytes (no Content-Length): {r.status_code}")
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    small = httpx.post(f"{served.url}/v1/rank", content=iter([json.dumps({"candidates": _rows(2)}).encode()]),
                       headers={"content-type": "application/json"}, timeout=30)
    assert small.status_code == 200  # a chunked body within the limit is read as usual


@pytest.mark.parametrize("top_k", ["5", 5.0, True, "five", -1, 0, 10_000_000])
def test_top_k_is_strict(served, top_k):
    r = httpx.post(f"{served.url}/v1/rank", timeout=30, **_json({"candidates": _rows(3), "top_k": top_k}))
    assert r.status_code == 422 and any(d["loc"][:2] == ["body", "top_k"] for d in r.json()["detail"]), r.text


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(served, scheme):
    live = httpx.get(f"{served.url}/v1/models").json()["live"].split("/")[1]
    r = httpx.post(f"{served.url}/v1/admin/reload", json={"version": live},
                   headers={"authorization": f"{scheme} {ADMIN_TOKEN}"}, timeout=60)
    assert r.status_code == 200, r.text
    wrong = httpx.post(f"{served.url}/v1/admin/reload", json={"version": live},
                       headers={"authorization": f"{scheme} {ADMIN_TOKEN}x"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("version", ["..", "../v0001", "../../etc/passwd", "/tmp", ".hidden", "a/b", "v0001/..",
                                     "x" * 200, 1])
def test_reload_targets_cannot_leave_the_registry(served, version):
    r = httpx.post(f"{served.url}/v1/admin/reload", json={"version": version}, headers=AUTH, timeout=30)
    assert r.status_code == 422, r.text
