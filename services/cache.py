"""Embedding caches for the gateway: Redis (shared, behind a circuit breaker) or an in-process TTL cache.

Keys carry the model version, `muxrec:emb:{version}:{entity}:{id}`, so a reload can never serve the
previous version's vectors. The version part is `<name>/<version>@<first 12 hex of the weights'
sha256>` (`version_tag`): two registries that both hold a `ranker/v0003` share a Redis without
reading each other's vectors. A value is a small header (format magic, dimension) and little-endian
float32 bytes; a value that fails its checks (format, length, dimension, finite) is a miss, counted as
`invalid`, and the recomputed vector overwrites it. Entries expire (TTL). A read is one MGET, a write
one pipeline of SETs with EX.

Redis trouble never fails a request. redis-py retries a dropped connection once with backoff and
pings idle pooled connections before use (so a restarted Redis costs no failed call); repeated
failures open the breaker, which skips Redis for a cool-down, then lets exactly one trial call through
(half-open): its success closes the breaker, its failure re-opens it. Meanwhile the caller computes
the vectors itself. After a failed call no write is sent until a read succeeds again.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import redis.asyncio as aioredis
from cachetools import TTLCache
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.asyncio.retry import Retry  # the asyncio client needs the asyncio Retry (the sync one is not awaited)

KEY_PREFIX = "muxrec:emb"
_MAGIC = b"MXV1"  # value format version
_HEADER = struct.Struct("<4sI")  # magic, dimension


def version_tag(ref: str, weights_sha256: str) -> str:
    """The version part of a cache key: model/version plus the weights' hash prefix."""
    return f"{ref}@{weights_sha256[:12]}"


def cache_key(version: str, entity: str, entity_id: str) -> str:
    return f"{KEY_PREFIX}:{version}:{entity}:{entity_id}"


def encode_vector(vector: np.ndarray) -> bytes:
    data = np.asarray(vector, dtype="<f4").ravel()  # (D,)
    return _HEADER.pack(_MAGIC, data.size) + data.tobytes()


def decode_vector(data: bytes, dim: int | None = None) -> np.ndarray | None:
    """The vector in `data`, or None when it is not a well-formed value of `dim` finite float32s."""
    if not isinstance(data, bytes) or len(data) < _HEADER.size:
        return None
    magic, size = _HEADER.unpack_from(data)
    if magic != _MAGIC or size == 0 or len(data) != _HEADER.size + 4 * size or (dim is not None and size != dim):
        return None
    vector = np.frombuffer(data, dtype="<f4", offset=_HEADER.size)  # (D,)
    return vector if np.isfinite(vector).all() else None


def decode_vectors(values: list[bytes | None], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Many cached values at once: (N, dim) float32 and (N,) bool, True where the value is a well-formed
    vector of `dim` finite float32s (decode_vector's checks, as array operations over all N)."""
    size = _HEADER.size + 4 * dim
    ok = np.fromiter((isinstance(v, bytes) and len(v) == size for v in values), bool, len(values))  # (N,)
    raw = np.frombuffer(b"".join(v if good else bytes(size) for v, good in zip(values, ok)), np.uint8)
    raw = raw.reshape(len(values), size)  # (N, 8 + 4 dim)
    header = np.frombuffer(_HEADER.pack(_MAGIC, dim), np.uint8)
    vectors = raw[:, _HEADER.size:].view("<f4")  # (N, dim)
    ok &= (raw[:, :_HEADER.size] == header).all(axis=1) & np.isfinite(vectors).all(axis=1)
    return vectors, ok


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    invalid: int = 0  # values found but malformed (counted in misses too)
    errors: int = 0
    skipped: int = 0  # lookups not sent because the breaker was open

    def count(self, found: list[np.ndarray | None], invalid: int) -> None:
        hits = sum(v is not None for v in found)
        self.hits += hits
        self.misses += len(found) - hits
        self.invalid += invalid


class EmbeddingCache(Protocol):
    stats: CacheStats

    async def get_many(self, version: str, entity: str, ids: list[str], dim: int | None = None
                       ) -> list[np.ndarray | None]: ...

    async def put_many(self, version: str, entity: str, vectors: dict[str, np.ndarray]) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


@dataclass
class CircuitBreaker:
    """closed -> `failures` failures in a row -> open (calls skipped) for `cooldown_s` -> half-open:
    exactly one trial call; its success closes the breaker, its failure opens it again. A trial that
    never reports back (cancelled) frees its slot after another cool-down."""

    failures: int
    cooldown_s: float
    clock: Callable[[], float] = time.monotonic
    opened_at: float | None = None
    failed: int = 0
    trial_at: float | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and (self.trial_at is None or self.clock() - self.trial_at >= self.cooldown_s):
            self.trial_at = self.clock()
            return True
        return False

    def success(self) -> None:
        self.opened_at, self.failed, self.trial_at = None, 0, None

    def failure(self) -> None:
        self.failed += 1
        self.trial_at = None
        if self.opened_at is not None or self.failed >= self.failures:
            self.opened_at = self.clock()

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None


_REDIS_DOWN = (RedisError, OSError, asyncio.TimeoutError)


class RedisEmbeddingCache:
    def __init__(self, url: str, ttl_s: int, timeout_s: float, breaker: CircuitBreaker, retries: int = 1):
        self.ttl_s = ttl_s
        self.stats = CacheStats()
        self.breaker = breaker
        # A dropped connection is retried (backoff capped at the timeout); idle pooled connections are
        # pinged before use, so a restarted Redis is reconnected to instead of failing a call.
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(cap=timeout_s, base=timeout_s / 10), retries), health_check_interval=15)

    async def get_many(self, version: str, entity: str, ids: list[str], dim: int | None = None
                       ) -> list[np.ndarray | None]:
        if not ids:
            return []
        if not self.breaker.allow():
            self.stats.skipped += len(ids)
            return [None] * len(ids)
        try:
            raw = await self.client.mget([cache_key(version, entity, i) for i in ids])
        except _REDIS_DOWN:
            self.stats.errors += 1
            self.breaker.failure()
            return [None] * len(ids)
        self.breaker.success()
        if dim is None:
            out = [None if r is None else decode_vector(r) for r in raw]
        else:
            vectors, ok = decode_vectors(raw, dim)  # (N, D), (N,)
            out = [v if good else None for v, good in zip(vectors, ok)]
        self.stats.count(out, sum(r is not None and v is None for r, v in zip(raw, out)))
        return out

    async def put_many(self, version: str, entity: str, vectors: dict[str, np.ndarray]) -> None:
        # After a failed call, writes wait until a read succeeds: a stalled moment (a busy CPU missing the
        # timeout) then costs one failure, not a failed read and a failed write that together open the breaker.
        if not vectors or self.breaker.failed or not self.breaker.allow():
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for entity_id, vector in vectors.items():
                    pipe.set(cache_key(version, entity, entity_id), encode_vector(vector), ex=self.ttl_s)
                await pipe.execute()
        except _REDIS_DOWN:
            self.stats.errors += 1
            self.breaker.failure()
            return
        self.breaker.success()

    async def ping(self) -> bool:
        """Whether Redis answers now (a probe for /readyz; the breaker is left to real calls)."""
        try:
            return bool(await self.client.ping())
        except _REDIS_DOWN:
            return False

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class LocalTTLCache:
    """In-process cache with the same interface (REDIS_URL empty): no server needed. Least recently
    used entries go first when full; entries expire after `ttl_s`."""

    capacity: int
    ttl_s: int
    clock: Callable[[], float] = time.monotonic
    stats: CacheStats = field(default_factory=CacheStats)
    _data: TTLCache = field(init=False)

    def __post_init__(self) -> None:
        self._data = TTLCache(maxsize=self.capacity, ttl=self.ttl_s, timer=self.clock)

    async def get_many(self, version: str, entity: str, ids: list[str], dim: int | None = None
                       ) -> list[np.ndarray | None]:
        out = [self._data.get(cache_key(version, entity, entity_id)) for entity_id in ids]
        self.stats.count(out, 0)
        return out

    async def put_many(self, version: str, entity: str, vectors: dict[str, np.ndarray]) -> None:
        for entity_id, vector in vectors.items():
            self._data[cache_key(version, entity, entity_id)] = np.asarray(vector, dtype=np.float32)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()
