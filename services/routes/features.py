"""Feature rankings of the served model: GET /v1/features/importance (the permutation importance stored
with the live version) and GET /v1/features/rankings[/{method}] (every stored ranking of a version)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from muxrec.artifacts import NAME_PATTERN
from muxrec.services.deps import Context, LiveVersionDep, result_of
from muxrec.services.schema import RankingResponse, RankingsResponse

router = APIRouter(tags=["features"])

TopK = Annotated[int | None, Query(ge=1, le=10_000, description="only the k best features")]
VersionQuery = Annotated[str | None, Query(pattern=NAME_PATTERN, description="a version (v0003) or alias of the "
                                                                             "served model; default: the live one")]


@router.get("/v1/features/importance", summary="Feature-importance ranking stored with the live model version")
async def importance(context: Context, version: LiveVersionDep, top_k: TopK = None) -> dict:
    return await result_of(context.selector.ranking, version, top_k, timeout_s=context.settings.call_timeout_s)


@router.get("/v1/features/rankings", response_model=RankingsResponse,
            summary="The feature-selection methods with a stored ranking for a model version")
async def rankings(context: Context, live: LiveVersionDep, version: VersionQuery = None) -> dict:
    return await result_of(context.selector.rankings, version or live, timeout_s=context.settings.call_timeout_s)


@router.get("/v1/features/rankings/{method}", response_model=RankingResponse,
            summary="A model version's newest stored feature ranking of one method, best first")
async def ranking(context: Context, live: LiveVersionDep,
                  method: Annotated[str, Path(min_length=1, max_length=64, description="e.g. permutation, outrank")],
                  version: VersionQuery = None, top_k: TopK = None) -> dict:
    return await result_of(context.selector.method_ranking, version or live, method, top_k,
                           timeout_s=context.settings.call_timeout_s)
