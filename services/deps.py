"""What the gateway's routes depend on, each named once as an `Annotated` alias.

    async def embed(body: ..., context: Context, cache: Cache, version: LiveVersionDep) -> ...
    async def reload(body: ..., context: Context, _: Admin) -> ...

`GatewayContext` is one gateway replica's state (settings, registry, live version, request schema,
cache, metrics and the handles to the model deployments); the app keeps it in `app.state.context`.

The request model is built once, from the deploy-time spec; the live model may read a subset of its
fields (a reload to a model trained on fewer features), so each request is checked and converted
with the live version's columns (`GatewayContext.model_columns`, read once per version).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any

from cachetools import LRUCache
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle

from muxrec.artifacts import WEIGHTS, ArtifactRegistry, ModelVersion
from muxrec.errors import ArtifactError, ConfigError, find_muxrec_error
from muxrec.services.content import ContentVectorsClient
from muxrec.services.cache import CircuitBreaker, EmbeddingCache, LocalTTLCache, RedisEmbeddingCache, version_tag
from muxrec.services.metrics import CacheCollector, GatewayMetrics
from muxrec.services.schema import ModelColumns, RequestSchema, column_changes
from muxrec.services.settings import ServeSettings
from muxrec.services.versions import LiveVersion
from muxrec.spec import FeatureSpec, check_blend


def make_cache(settings: ServeSettings) -> EmbeddingCache:
    """Redis when REDIS_URL is set, else the in-process TTL cache."""
    if settings.use_redis:
        breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s)
        return RedisEmbeddingCache(settings.redis_url, settings.cache_ttl_s, settings.redis_timeout_s, breaker,
                                   settings.redis_retries)
    return LocalTTLCache(settings.lru_capacity, settings.cache_ttl_s)


@dataclass
class GatewayContext:
    """One gateway replica's state, shared by its routes."""

    settings: ServeSettings
    registry: ArtifactRegistry
    live: LiveVersion
    spec: FeatureSpec
    schema: RequestSchema
    cache: EmbeddingCache
    metrics: GatewayMetrics
    ranker: DeploymentHandle
    embedder: DeploymentHandle
    selector: DeploymentHandle
    dims: dict[tuple[str, str], int] = field(default_factory=dict)  # (cache tag, entity) -> vector length
    _tags: dict[str, str] = field(default_factory=dict)
    _columns: LRUCache = field(default_factory=lambda: LRUCache(16))  # version -> ModelColumns
    content: ContentVectorsClient = field(init=False)  # item texts / images -> vectors, cached

    def __post_init__(self) -> None:
        self.content = ContentVectorsClient(self)

    @classmethod
    def start(cls, settings: ServeSettings, ranker: DeploymentHandle, embedder: DeploymentHandle,
              selector: DeploymentHandle) -> GatewayContext:
        """Read the live version's spec (hash-verified), choose the request model's spec
        (`request_spec`) and build the cache and metrics."""
        registry = ArtifactRegistry(settings.registry)
        live = LiveVersion(registry, settings)
        version = registry.open(settings.model, live.get())
        live_spec = version.read_spec()
        try:
            check_blend(settings.rank_blend, live_spec.label_names, "rank_blend")
        except ValueError as err:
            raise ConfigError(f"serve settings: {err}") from None
        spec = request_spec(registry, settings, version, live_spec)
        cache = make_cache(settings)
        metrics = GatewayMetrics()
        metrics.registry.register(CacheCollector(cache))
        metrics.model.info({"version": version.ref})
        context = cls(settings, registry, live, spec, RequestSchema(spec, settings), cache, metrics,
                      ranker, embedder, selector)
        context.remember(version.version, live_spec)
        return context

    async def model_columns(self, version: str) -> ModelColumns:
        """The spec and request columns of model `version`: from memory, read (hash-verified, off the
        event loop) the first time a version is asked for."""
        found = self._columns.get(version)
        if found is None:
            model = await asyncio.to_thread(self.registry.open, self.settings.model, version)
            found = self.remember(version, await asyncio.to_thread(model.read_spec))
        return found

    def remember(self, version: str, spec: FeatureSpec) -> ModelColumns:
        found = self._columns[version] = ModelColumns.of(spec)
        return found

    def ref(self, version: str) -> str:
        return f"{self.settings.model}/{version}"

    def cache_tag(self, version: str) -> str:
        """The cache-key version of the served model's `version` (its weights' hash)."""
        return self.weights_tag(self.settings.model, version, self.ref(version))

    def weights_tag(self, name: str, version: str, label: str) -> str:
        """`label` plus the first hex of the weights' hash of registry entry name/version (a model, or an
        encoder: services/content.py), read from its manifest once per entry."""
        key = f"{name}/{version}"
        tag = self._tags.get(key)
        if tag is None:
            files = self.registry.manifest(name, version).get("files", {})
            if WEIGHTS not in files:
                raise ConfigError(f"{key} has no weights in the registry")
            tag = self._tags[key] = version_tag(label, files[WEIGHTS])
        return tag


def request_spec(registry: ArtifactRegistry, settings: ServeSettings, live: ModelVersion,
                 live_spec: FeatureSpec) -> FeatureSpec:
    """The spec the request model is built from: the configured version's (`settings.version`) when
    the live version reads a subset of its fields, else the live version's own.

    After a reload to a model that reads fewer features, a restarted or added gateway replica keeps
    the request model of the deploy (clients may go on sending the dropped fields), as long as
    `version:` still names the deployed version (pin it rather than `latest`).
    """
    try:
        configured = registry.resolve(settings.model, settings.version)
    except ArtifactError:
        return live_spec
    if configured == live.version:
        return live_spec
    spec = registry.open(settings.model, configured).read_spec()
    return spec if not column_changes(spec.request_columns(), live_spec.request_columns()) else live_spec


class Unavailable(Exception):
    """A dependency cannot answer now: 503 with Retry-After."""


# A replica that died or cannot be reached: the call never ran to completion there, and every call
# the gateway makes is idempotent (scoring, embedding, reading), so it is sent again; Serve's router
# has by then marked that replica dead and picks another one.
_REPLICA_LOST = (ActorDiedError, ActorUnavailableError)
RETRIES = 2  # after the first attempt; bounded so that a deployment with no live replica fails fast
RETRY_BACKOFF_S = 0.05  # doubled per retry


async def result_of(method: Any, *args: Any, timeout_s: float | None = None) -> Any:
    """`method.remote(*args)` on a deployment handle, awaited: never a 500 for a fault of the platform.

    A lost replica is retried on another one (RETRIES times); still lost, or overloaded (the
    handle's queue is full), or no answer within `timeout_s` (no replica running) is `Unavailable`,
    a 503 with Retry-After. A user error raised in the deployment is its own 4xx and never retried.
    """
    delay = RETRY_BACKOFF_S
    for attempt in range(RETRIES + 1):
        response = method.remote(*args)
        try:
            return await asyncio.wait_for(response, timeout_s) if timeout_s else await response
        except BackPressureError:
            raise Unavailable("the model is overloaded; retry shortly") from None
        except asyncio.TimeoutError:
            response.cancel()
            raise Unavailable("the model did not answer in time; retry shortly") from None
        except _REPLICA_LOST:
            if attempt == RETRIES:
                raise Unavailable("no model replica could answer; retry shortly") from None
        except Exception as err:
            ours = find_muxrec_error(err)
            if ours is not None:
                raise ours from None  # without Ray's wrapper and its remote traceback
            if isinstance(err, RayServeException) and isinstance(getattr(err, "__cause__", None), _REPLICA_LOST):
                raise Unavailable("a model replica failed; retry shortly") from None
            raise
        await asyncio.sleep(delay)
        delay *= 2


# The dependencies are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread
# hand-off per dependency per request (the largest cost of an embed cache hit when measured).
async def _context(request: Request) -> GatewayContext:
    return request.app.state.context


Context = Annotated[GatewayContext, Depends(_context)]


async def _cache(context: Context) -> EmbeddingCache:
    return context.cache


Cache = Annotated[EmbeddingCache, Depends(_cache)]


async def _live_version(context: Context) -> str:
    return context.live.get()


LiveVersionDep = Annotated[str, Depends(_live_version)]

_bearer = HTTPBearer(auto_error=False, description="MUXREC_ADMIN_TOKEN")


async def _require_admin(context: Context,
                         credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
    """Bearer token check (scheme case-insensitive, constant-time compare); 403 while admin is off."""
    token = context.settings.admin_token
    if token is None:
        raise HTTPException(403, "the admin API is disabled: set MUXREC_ADMIN_TOKEN to enable it")
    given = credentials.credentials.encode() if credentials else b""
    if not secrets.compare_digest(given, token.get_secret_value().encode()):
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})


Admin = Annotated[None, Depends(_require_admin)]
