"""The gateway: the only public entry, a FastAPI app served as the Ray Serve ingress.

It validates requests against the feature spec of the live model, calls the Ranker, Embedder and
FeatureSelector deployments through the handles it is given, keeps the embedding cache (Redis or an
in-process LRU), and exports Prometheus metrics. The FastAPI app is built per replica after the
constructor has read the spec (`__serve_build_asgi_app__`), so the request schema in the OpenAPI
document is the spec's.

Request path of /v1/rank: HTTP proxy -> Gateway (validate, to Arrow) -> Ranker (batched forward).
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at build time and
# the request models are local to build_api().
import asyncio
import json
import secrets
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from muxrec.artifacts import ArtifactRegistry
from muxrec.errors import ArtifactError, MuxrecError, find_muxrec_error
from muxrec.services.cache import LocalLRUCache, RedisEmbeddingCache, version_tag
from muxrec.services.embedder import EmbedRequest as EmbedCall
from muxrec.services.metrics import GatewayMetrics
from muxrec.services.ranker import ScoreRequest
from muxrec.services.schema import (EmbedResponse, RankedItem, RankResponse, ReloadRequest, RequestSchema)
from muxrec.services.settings import ServeSettings
from muxrec.services.versions import LiveVersion
from muxrec.spec import spec_from_yaml

API_VERSION = "1"


class _CacheCollector:
    """Cache counters and Redis health read from the cache at scrape time."""

    def __init__(self, gateway: "Gateway"):
        self.gateway = gateway

    def collect(self):
        stats = self.gateway.cache.stats
        counter = CounterMetricFamily("muxrec_embedding_cache", "Embedding cache lookups by result", labels=["result"])
        for result in ("hits", "misses", "errors", "skipped"):
            counter.add_metric([result], getattr(stats, result))
        yield counter
        if isinstance(self.gateway.cache, RedisEmbeddingCache):
            up = GaugeMetricFamily("muxrec_redis_up", "1 while Redis is used, 0 while the breaker is open")
            up.add_metric([], 0.0 if self.gateway.cache.breaker.is_open else 1.0)
            yield up


class BodyLimit:
    """ASGI middleware: 413 for bodies over `limit` bytes, by header or while streaming."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _too_large(send, self.limit)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send, limit: int) -> None:
    body = f'{{"detail":"request body larger than {limit} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """ASGI middleware: count and time every request by route template and status."""

    def __init__(self, app, metrics: GatewayMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route, str(status)).observe(time.perf_counter() - start)


def _safe_error(error: dict) -> dict:
    """A validation error as JSON: the default handler echoes the input, which fails to render for
    NaN / inf (a 500) and can be megabytes long; keep it only when it is small, finite JSON."""
    out = {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")), "type": error.get("type")}
    value = error.get("input")
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        text = None
    if text is not None and len(text) <= 200:
        out["input"] = value
    return out


def _error(status: int, detail: Any, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


@serve.deployment(name="Gateway")
@serve.ingress()
class Gateway:
    def __init__(self, ranker: DeploymentHandle, embedder: DeploymentHandle, selector: DeploymentHandle,
                 settings: ServeSettings):
        self.settings = settings
        self.ranker, self.embedder, self.selector = ranker, embedder, selector
        self.registry = ArtifactRegistry(settings.registry)
        self.live = LiveVersion(self.registry, settings.model, settings.serving_alias)
        version = self.registry.open(settings.model, settings.version)  # hash-verified
        self.live.set(version.version)
        self.spec = spec_from_yaml(version.read_text("spec.yaml"), origin=f"{version.ref}/spec.yaml")
        self.schema = RequestSchema(self.spec, settings)
        if settings.use_redis:
            self.cache = RedisEmbeddingCache(settings.redis_url, settings.cache_ttl_s, settings.redis_timeout_s,
                                             settings.breaker_cooldown_s)
        else:
            self.cache = LocalLRUCache(settings.lru_capacity, settings.cache_ttl_s)
        self._cache_tags: dict[str, str] = {}
        self.metrics = GatewayMetrics()
        self.metrics.registry.register(_CacheCollector(self))
        self.metrics.model.info({"version": version.ref})

    def __serve_build_asgi_app__(self) -> Any:
        return build_api(self)

    @property
    def model_ref(self) -> str:
        return f"{self.settings.model}/{self.live.get()}"

    def cache_tag(self, version: str) -> str:
        """The cache-key version of `version` (its manifest's weights hash; read once per version)."""
        tag = self._cache_tags.get(version)
        if tag is None:
            manifest = json.loads((self.registry.root / self.settings.model / version / "manifest.json").read_text())
            tag = version_tag(f"{self.settings.model}/{version}", manifest["files"]["weights.safetensors"])
            self._cache_tags[version] = tag
        return tag


def build_api(gw: Gateway) -> Any:
    """The FastAPI app of one gateway replica (routes close over `gw`)."""
    schema = gw.schema
    RankRequestModel = schema.Request
    EmbedRequestModel = schema.EmbedRequest
    app = FastAPI(title="muxrec", version=API_VERSION,
                  description=f"Ranking, embeddings and feature importance for model `{gw.settings.model}` "
                              f"(feature spec `{gw.spec.name}`).")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [_safe_error(e) for e in err.errors()[:50]]}, status_code=422)

    @app.exception_handler(MuxrecError)
    async def muxrec_error(request: Request, err: MuxrecError) -> JSONResponse:
        return _error(404 if isinstance(err, ArtifactError) else 422, str(err))

    @app.exception_handler(_Unavailable)
    async def unavailable(request: Request, err: Exception) -> JSONResponse:
        return _error(503, str(err), {"Retry-After": "1"})

    async def call(response_awaitable):
        """Await a deployment call; overload becomes 503 and a user error its own 4xx, never 500."""
        try:
            return await response_awaitable
        except BackPressureError:
            raise _Unavailable("the model is overloaded; retry shortly") from None
        except Exception as err:
            ours = find_muxrec_error(err)
            if ours is not None:
                raise ours from None  # without Ray's wrapper and its remote traceback
            raise

    @app.post("/v1/rank", response_model=RankResponse, tags=["ranking"],
              summary="Score candidates for one context and return them best first")
    async def rank(body: RankRequestModel) -> RankResponse:
        table, ids = schema.to_table(body)
        version = gw.live.get()
        result = await call(gw.ranker.score.remote(ScoreRequest(version, table)))
        gw.metrics.batch_size.observe(result.batch_rows)
        gw.metrics.batch_requests.observe(result.batch_requests)
        gw.metrics.candidates.observe(len(ids))
        scores = result.scores  # (N, T)
        order = np.argsort(-scores[:, 0], kind="stable")[:body.top_k]
        multi = scores.shape[1] > 1
        items = [RankedItem(id=ids[i], index=int(i), score=float(scores[i, 0]),
                            task_scores={t: float(scores[i, k]) for k, t in enumerate(result.tasks)} if multi else None)
                 for i in order]
        return RankResponse(model_version=result.version, items=items)

    @app.post("/v1/embed", response_model=EmbedResponse, tags=["embeddings"],
              summary="User or item vectors from the live model, through the embedding cache")
    async def embed(body: EmbedRequestModel) -> EmbedResponse:
        ids = [str(i) for i in body.ids]
        version = gw.live.get()
        ref, tag = f"{gw.settings.model}/{version}", gw.cache_tag(version)
        cached = await gw.cache.get_many(tag, body.entity, ids)
        missing = sorted({i for i, v in zip(ids, cached) if v is None})
        fresh: dict[str, tuple[np.ndarray, bool]] = {}
        if missing:
            result = await call(gw.embedder.embed.remote(EmbedCall(version, body.entity, tuple(missing))))
            fresh = {i: (v, bool(k)) for i, v, k in zip(missing, result.vectors, result.known)}
            await gw.cache.put_many(tag, body.entity, {i: v for i, (v, k) in fresh.items() if k})
        vectors, known = [], []
        for i, v in zip(ids, cached):
            if v is None:
                v, k = fresh[i]
            else:
                k = True  # only known ids are cached
            vectors.append(v.tolist())
            known.append(k)
        return EmbedResponse(model_version=ref, entity=body.entity, dim=len(vectors[0]), ids=ids, vectors=vectors,
                             known=known, cache_hits=[v is not None for v in cached])

    @app.get("/v1/features/importance", tags=["features"],
             summary="Feature-importance ranking stored with the live model version")
    async def importance(top_k: int | None = Query(None, ge=1, le=10_000)) -> dict:
        return await call(gw.selector.ranking.remote(gw.live.get(), top_k))

    @app.get("/v1/models", tags=["models"], summary="Versions in the registry and which one is live")
    async def models() -> dict:
        return await asyncio.to_thread(_list_models, gw)

    @app.post("/v1/admin/reload", tags=["admin"],
              summary="Swap the live version (bearer token from MUXREC_ADMIN_TOKEN)")
    async def reload(body: ReloadRequest, request: Request) -> Any:
        token = gw.settings.admin_token
        if token is None:
            return _error(403, "the admin API is disabled: set MUXREC_ADMIN_TOKEN to enable it")
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and secrets.compare_digest(given[7:].encode(),
                                                                       token.get_secret_value().encode())):
            return _error(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
        previous = gw.live.get()
        target = await asyncio.to_thread(gw.registry.open, gw.settings.model, body.version)  # verifies hashes
        spec = spec_from_yaml(target.read_text("spec.yaml"))
        if spec.request_columns() != gw.spec.request_columns():
            return _error(409, f"{target.ref} expects other request fields than the live model; redeploy instead")
        # Load everywhere first, then flip the alias: no request ever waits on a cold model.
        await asyncio.gather(call(gw.ranker.prepare.remote(target.version)),
                             call(gw.embedder.prepare.remote(target.version)),
                             call(gw.selector.prepare.remote(target.version)))
        await asyncio.to_thread(gw.live.set, target.version)
        gw.metrics.model.info({"version": target.ref})
        return {"previous": f"{gw.settings.model}/{previous}", "live": target.ref}

    @app.get("/healthz", tags=["ops"], summary="The process is alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Model loaded; Redis reachable (else degraded)")
    async def readyz() -> Any:
        try:
            loaded = await asyncio.wait_for(gw.ranker.loaded.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - any failure here means "not ready"
            return _error(503, {"status": "unavailable", "reason": "the Ranker does not answer"})
        redis = "disabled"
        if isinstance(gw.cache, RedisEmbeddingCache):
            redis = "ok" if await gw.cache.ping() else "down"
        return {"status": "ready" if redis != "down" else "degraded", "model_version": gw.model_ref,
                "ranker_versions": loaded, "redis": redis}

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return RequestMetrics(BodyLimit(app, gw.settings.max_body_bytes), gw.metrics)


class _Unavailable(Exception):
    pass


def _list_models(gw: Gateway) -> dict:
    name = gw.settings.model
    aliases = gw.registry.aliases(name)
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    versions = []
    for v in gw.registry.versions(name):
        manifest = (gw.registry.root / name / v / "manifest.json")
        meta = {}
        try:
            meta = json.loads(manifest.read_text())
        except (OSError, ValueError):
            pass
        versions.append({"version": v, "aliases": sorted(by_version.get(v, [])),
                         "created_at": meta.get("created_at"), "metadata": meta.get("metadata", {})})
    return {"model": name, "live": f"{name}/{gw.live.get()}", "versions": versions}
