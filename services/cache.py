"""Embedding caches for the gateway: Redis (shared, with a circuit breaker) or an in-process LRU.

Keys carry the model version, `muxrec:emb:{version}:{entity}:{id}`, so a reload can never serve the
previous version's vectors. The version part is `<name>/<version>@<first 12 hex of the weights'
sha256>` (`version_tag`): two registries that both hold a `ranker/v0003` share a Redis without
reading each other's vectors. Values are raw little-endian float32 bytes; entries expire (TTL).
A read is one MGET, a write one pipeline of SETs with EX.

Redis trouble never fails a request: errors and timeouts are counted, the breaker opens for a
cool-down during which Redis is not called at all, and the caller computes the vectors instead.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

KEY_PREFIX = "muxrec:emb"


def version_tag(ref: str, weights_sha256: str) -> str:
    """The version part of a cache key: model/version plus the weights' hash prefix."""
    return f"{ref}@{weights_sha256[:12]}"


def cache_key(version: str, entity: str, entity_id: str) -> str:
    return f"{KEY_PREFIX}:{version}:{entity}:{entity_id}"


def encode_vector(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def decode_vector(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    skipped: int = 0  # lookups not sent because the breaker was open


class EmbeddingCache(Protocol):
    stats: CacheStats

    async def get_many(self, version: str, entity: str, ids: list[str]) -> list[np.ndarray | None]: ...

    async def put_many(self, version: str, entity: str, vectors: dict[str, np.ndarray]) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


@dataclass
class CircuitBreaker:
    """Closed until a failure; then open (calls skipped) for `cooldown_s`; then one trial call."""

    cooldown_s: float
    clock: Callable[[], float] = time.monotonic
    opened_at: float | None = None

    def allow(self) -> bool:
        return self.opened_at is None or self.clock() - self.opened_at >= self.cooldown_s

    def success(self) -> None:
        self.opened_at = None

    def failure(self) -> None:
        self.opened_at = self.clock()

    @property
    def is_open(self) -> bool:
        return not self.allow()


class RedisEmbeddingCache:
    def __init__(self, url: str, ttl_s: int, timeout_s: float, cooldown_s: float):
        self.ttl_s = ttl_s
        self.stats = CacheStats()
        self.breaker = CircuitBreaker(cooldown_s)
        # No retries: a slow or absent Redis must cost at most one timeout, then the breaker opens.
        self.client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                              retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
                                              health_check_interval=0)

    async def get_many(self, version: str, entity: str, ids: list[str]) -> list[np.ndarray | None]:
        if not ids:
            return []
        if not self.breaker.allow():
            self.stats.skipped += len(ids)
            return [None] * len(ids)
        try:
            raw = await self.client.mget([cache_key(version, entity, i) for i in ids])
        except (RedisError, OSError, asyncio.TimeoutError):
            self.stats.errors += 1
            self.breaker.failure()
            return [None] * len(ids)
        self.breaker.success()
        out = [decode_vector(r) if r is not None else None for r in raw]
        hits = sum(v is not None for v in out)
        self.stats.hits += hits
        self.stats.misses += len(ids) - hits
        return out

    async def put_many(self, version: str, entity: str, vectors: dict[str, np.ndarray]) -> None:
        if not vectors or not self.breaker.allow():
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for entity_id, vector in vectors.items():
                    pipe.set(cache_key(version, entity, entity_id), encode_vector(vector), ex=self.ttl_s)
                await pipe.execute()
        except (RedisError, OSError, asyncio.TimeoutError):
            self.stats.errors += 1
            self.breaker.failure()
            return
        self.breaker.success()

    async def ping(self) -> bool:
        try:
            ok = bool(await self.client.ping())
        except (RedisError, OSError, asyncio.TimeoutError):
            return False
        if ok:
            self.breaker.success()
        return ok

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class _Entry:
    vector: np.ndarray
    expires: float


@dataclass
class LocalLRUCache:
    """In-process cache with the same interface (REDIS_URL empty): no server needed."""

    capacity: int
    ttl_s: int
    clock: Callable[[], float] = time.monotonic
    stats: CacheStats = field(default_factory=CacheStats)
    _data: OrderedDict = field(default_factory=OrderedDict)

    async def get_many(self, version: str, entity: str, ids: list[str]) -> list[np.ndarray | None]:
        now, out = self.clock(), []
        for entity_id in ids:
            key = cache_key(version, entity, entity_id)
            entry = self._data.get(key)
            if entry is not None and entry.expires > now:
                self._data.move_to_end(key)
                out.append(entry.vector)
            else:
                self._data.pop(key, None)
                out.append(None)
        hits = sum(v is not None for v in out)
        self.stats.hits += hits
        self.stats.misses += len(ids) - hits
        return out

    async def put_many(self, version: str, entity: str, vectors: dict[str, np.ndarray]) -> None:
        expires = self.clock() + self.ttl_s
        for entity_id, vector in vectors.items():
            key = cache_key(version, entity, entity_id)
            self._data[key] = _Entry(np.asarray(vector, dtype=np.float32), expires)
            self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()
