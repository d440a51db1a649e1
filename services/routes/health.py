"""Operations: /healthz (alive), /readyz (model loaded; Redis breaker state) and /metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from muxrec.services.cache import RedisEmbeddingCache
from muxrec.services.deps import Context

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Model loaded; Redis breaker closed and Redis answering (else degraded)")
async def readyz(context: Context) -> dict:
    try:
        loaded = await asyncio.wait_for(context.ranker.loaded.remote(), timeout=5)
    except Exception:  # noqa: BLE001 - any failure here means "not ready"
        raise HTTPException(503, {"status": "unavailable", "reason": "the Ranker does not answer"},
                            headers={"Retry-After": "1"}) from None
    redis, breaker = "disabled", None
    if isinstance(context.cache, RedisEmbeddingCache):
        breaker = context.cache.breaker.state
        redis = "ok" if breaker == "closed" and await context.cache.ping() else "down"
    return {"status": "ready" if redis != "down" else "degraded", "model_version": context.live.ref,
            "ranker_versions": loaded, "redis": redis, "redis_breaker": breaker}


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(context: Context) -> Response:
    return Response(context.metrics.render(), media_type=CONTENT_TYPE_LATEST)
