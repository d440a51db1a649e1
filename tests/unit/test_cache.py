"""Cache pieces that need no server: the in-process TTL cache, the circuit breaker, key and value layout."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from muxrec.services.cache import (CircuitBreaker, LocalTTLCache, cache_key, decode_vector, encode_vector,
                                   version_tag)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lru_expires_and_evicts():
    clock = Clock()
    cache = LocalTTLCache(capacity=2, ttl_s=10, clock=clock)
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


def test_breaker_opens_after_the_threshold_then_lets_exactly_one_trial_through():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown_s=5, clock=clock)
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed" and breaker.allow()  # two slow calls in a row do not open it
    breaker.success()
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed"  # a success in between resets the count
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now = 5.0
    assert breaker.state == "half-open"
    trials = [breaker.allow() for _ in range(10)]
    print(f"half-open: {sum(trials)} of {len(trials)} concurrent calls let through")
    assert trials == [True] + [False] * 9
    breaker.failure()  # the trial failed: open again for a full cool-down
    assert breaker.state == "open" and not breaker.allow()
    clock.now = 10.0
    assert breaker.allow() and not breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and all(breaker.allow() for _ in range(3))
    clock.now = 20.0  # a trial that never reported back frees its slot after another cool-down
    for _ in range(3):
        breaker.failure()
    clock.now = 25.0
    assert breaker.allow() and not breaker.allow()
    clock.now = 30.0
    assert breaker.allow()


def test_keys_and_values():
    assert cache_key(version_tag("m/v0003", "0123456789abcdef"), "item", "42") == "muxrec:emb:m/v0003@0123456789ab:item:42"
    assert version_tag("m/v0003", "aa" * 32) != version_tag("m/v0003", "bb" * 32)  # same name/version, other weights
    v = np.arange(4, dtype=np.float32)
    assert len(encode_vector(v)) == 8 + 16  # header (format, dimension) + float32s
    np.testing.assert_array_equal(decode_vector(encode_vector(v)), v)
    np.testing.assert_array_equal(decode_vector(encode_vector(v), dim=4), v)


@pytest.mark.parametrize("label, value", [
    ("raw floats without header", np.arange(4, dtype="<f4").tobytes()),
    ("truncated", encode_vector(np.arange(4))[:-2]),
    ("other dimension", encode_vector(np.arange(3))),
    ("float64 payload", encode_vector(np.arange(4))[:8] + np.arange(4, dtype="<f8").tobytes()),
    ("not finite", encode_vector(np.array([1, np.nan, 2, 3]))),
    ("empty", b""),
    ("text", b"hello world, not a vector"),
])
def test_malformed_values_decode_to_a_miss(label, value):
    assert decode_vector(value, dim=4) is None, label


def test_after_a_failed_read_writes_wait_for_a_successful_read(redis_url):
    """A stalled moment must cost the breaker one failure, not a failed read plus a failed write (two in a
    row opened the breaker of a healthy but CPU-starved gateway). Real Redis: one client points at a port
    nobody listens on, the other at the shared server; both report to the same breaker."""
    import socket
    import uuid

    from muxrec.services.cache import RedisEmbeddingCache

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    breaker = CircuitBreaker(failures=2, cooldown_s=60)
    tag = f"test/{uuid.uuid4().hex}@000000000000"
    vector = {"u1": np.arange(4, dtype=np.float32)}

    async def scenario() -> tuple:
        down = RedisEmbeddingCache(f"redis://127.0.0.1:{dead_port}/0", 60, 0.05, breaker, retries=0)
        up = RedisEmbeddingCache(redis_url, 60, 1.0, breaker)
        try:
            assert await down.get_many(tag, "user", ["u1"]) == [None]
            await down.put_many(tag, "user", vector)  # not sent: the read before it failed
            after_failure = (down.stats.errors, breaker.failed, breaker.state)
            await up.put_many(tag, "user", vector)  # still waiting for a read to succeed
            missed = await up.get_many(tag, "user", ["u1"])  # succeeds (a miss): writes resume
            await up.put_many(tag, "user", vector)
            hit = await up.get_many(tag, "user", ["u1"])
            return after_failure, missed, hit
        finally:
            await up.client.delete(f"muxrec:emb:{tag}:user:u1")
            await up.close()
            await down.close()

    after_failure, missed, hit = asyncio.run(scenario())
    assert after_failure == (1, 1, "closed")
    assert missed == [None] and breaker.failed == 0
    np.testing.assert_array_equal(hit[0], vector["u1"])
