"""POST /v1/rank: score candidates for one context with the live model, best first."""

# No `from __future__ import annotations`: FastAPI reads the body model (built from the spec) from the
# signature.
import numpy as np
from fastapi import APIRouter

from muxrec.services.deps import Context, LiveVersionDep, result_of
from muxrec.services.ranker import ScoreRequest
from muxrec.services.schema import RankedItem, RankResponse, RequestSchema


def build_router(schema: RequestSchema) -> APIRouter:
    """The rank route for the request model of `schema` (the live model's spec)."""
    router = APIRouter(tags=["ranking"])
    RankRequest = schema.Request

    @router.post("/v1/rank", response_model=RankResponse,
                 summary="Score candidates for one context and return them best first")
    async def rank(body: RankRequest, context: Context, version: LiveVersionDep) -> RankResponse:
        table, ids = schema.to_table(body)
        result = await result_of(context.ranker.score, ScoreRequest(version, table),
                                 timeout_s=context.settings.call_timeout_s)
        context.metrics.batch_size.observe(result.batch_rows)
        context.metrics.batch_requests.observe(result.batch_requests)
        context.metrics.candidates.observe(len(ids))
        scores = result.scores  # (N, T)
        order = np.argsort(-scores[:, 0], kind="stable")[:body.top_k]  # (K,)
        multi = scores.shape[1] > 1
        items = [RankedItem(id=ids[i], index=int(i), score=float(scores[i, 0]),
                            task_scores={t: float(scores[i, k]) for k, t in enumerate(result.tasks)} if multi else None)
                 for i in order]
        return RankResponse(model_version=result.version, items=items)

    return router
