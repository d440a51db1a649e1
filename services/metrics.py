"""Prometheus metrics of the gateway, in a registry of their own (one per gateway instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from muxrec.services.cache import EmbeddingCache, RedisEmbeddingCache

LATENCY_BUCKETS = (0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("muxrec_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("muxrec_request_latency_seconds", "Request latency by route and status",
                                 ["route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("muxrec_ranker_batch_rows", "Rows per model call in the Ranker (after batching)",
                                    buckets=(1, 10, 50, 100, 200, 500, 1000, 2000, 5000, 10000), registry=r)
        self.batch_requests = Histogram("muxrec_ranker_batch_requests", "Requests merged into one Ranker call",
                                        buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.ranker_compute = Histogram("muxrec_ranker_compute_seconds",
                                        "Encode + forward seconds of the Ranker call a request shared, in the replica",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.candidates = Histogram("muxrec_rank_candidates", "Candidates per rank request",
                                    buckets=(1, 10, 50, 100, 200, 500, 1000), registry=r)
        # muxrec_embedding_cache_total{result} and muxrec_redis_up are read from the cache at scrape
        # time (CacheCollector).
        self.model = Info("muxrec_model", "The live model version", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CacheCollector:
    """Cache counters and the Redis breaker's state, read from the cache at scrape time."""

    def __init__(self, cache: EmbeddingCache):
        self.cache = cache

    def collect(self):
        stats = self.cache.stats
        counter = CounterMetricFamily("muxrec_embedding_cache", "Embedding cache lookups by result", labels=["result"])
        for result in ("hits", "misses", "invalid", "errors", "skipped"):
            counter.add_metric([result], getattr(stats, result))
        yield counter
        if isinstance(self.cache, RedisEmbeddingCache):
            up = GaugeMetricFamily("muxrec_redis_up", "1 while the Redis breaker is closed, else 0")
            up.add_metric([], 0.0 if self.cache.breaker.is_open else 1.0)
            yield up
