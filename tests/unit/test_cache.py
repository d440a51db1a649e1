"""Cache pieces that need no server: the in-process LRU, the circuit breaker, key layout."""

from __future__ import annotations

import asyncio

import numpy as np

from muxrec.services.cache import (CircuitBreaker, LocalLRUCache, cache_key, decode_vector, encode_vector,
                                   version_tag)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lru_expires_and_evicts():
    clock = Clock()
    cache = LocalLRUCache(capacity=2, ttl_s=10, clock=clock)
    run = asyncio.run
    run(cache.put_many("m/v1@abc", "user", {"a": np.ones(3), "b": np.zeros(3)}))
    assert [v is not None for v in run(cache.get_many("m/v1@abc", "user", ["a", "b", "c"]))] == [True, True, False]
    run(cache.get_many("m/v1@abc", "user", ["a"]))  # a is now the most recent
    run(cache.put_many("m/v1@abc", "user", {"c": np.ones(3)}))  # evicts b, the least recent
    assert [v is not None for v in run(cache.get_many("m/v1@abc", "user", ["a", "b", "c"]))] == [True, False, True]
    assert run(cache.get_many("m/v2@def", "user", ["a"])) == [None]  # another version never hits
    clock.now = 11
    assert run(cache.get_many("m/v1@abc", "user", ["a", "c"])) == [None, None]
    assert (cache.stats.hits, cache.stats.misses) == (5, 5)


def test_breaker_opens_for_the_cooldown_then_allows_a_trial():
    clock = Clock()
    breaker = CircuitBreaker(cooldown_s=5, clock=clock)
    assert breaker.allow() and not breaker.is_open
    breaker.failure()
    assert breaker.is_open
    clock.now = 4.9
    assert not breaker.allow()
    clock.now = 5.0
    assert breaker.allow()  # one trial call may go through
    breaker.success()
    assert breaker.opened_at is None


def test_keys_and_values():
    assert cache_key(version_tag("m/v0003", "0123456789abcdef"), "item", "42") == "muxrec:emb:m/v0003@0123456789ab:item:42"
    assert version_tag("m/v0003", "aa" * 32) != version_tag("m/v0003", "bb" * 32)  # same name/version, other weights
    v = np.arange(4, dtype=np.float32)
    assert len(encode_vector(v)) == 16
    np.testing.assert_array_equal(decode_vector(encode_vector(v)), v)
