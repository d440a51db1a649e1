"""GET /v1/features/importance: the feature-importance ranking stored with the live version."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from muxrec.services.deps import Context, LiveVersionDep, result_of

router = APIRouter(tags=["features"])


@router.get("/v1/features/importance", summary="Feature-importance ranking stored with the live model version")
async def importance(context: Context, version: LiveVersionDep,
                     top_k: Annotated[int | None, Query(ge=1, le=10_000)] = None) -> dict:
    return await result_of(context.selector.ranking, version, top_k, timeout_s=context.settings.call_timeout_s)
