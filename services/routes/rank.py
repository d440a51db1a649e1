"""POST /v1/rank: score candidates for one context with the live model, best first."""

# No `from __future__ import annotations`: FastAPI reads the body model (built from the spec) from the
# signature.
import numpy as np
from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError

from muxrec.services.deps import Context, LiveVersionDep, result_of
from muxrec.services.calls import ScoreCall
from muxrec.services.schema import RankedItem, RankResponse, RequestSchema


def build_router(schema: RequestSchema) -> APIRouter:
    """The rank route for the request model of `schema` (the deploy-time spec); each request is checked
    and scored with the columns of the live model (a subset of the request model's fields)."""
    router = APIRouter(tags=["ranking"])
    RankRequest = schema.Request

    @router.post("/v1/rank", response_model=RankResponse,
                 summary="Score candidates for one context and return them best first")
    async def rank(body: RankRequest, context: Context, version: LiveVersionDep) -> RankResponse:
        live = await context.model_columns(version)  # from memory after the version's first request
        table, ids = schema.to_table(body, live.columns)
        content = await context.content.for_rows(version, live.spec, table)  # None without content features
        result = await result_of(context.ranker.score, ScoreCall.of(version, table, content),
                                 timeout_s=context.settings.call_timeout_s)
        context.metrics.batch_size.observe(result.batch_rows)
        context.metrics.batch_requests.observe(result.batch_requests)
        context.metrics.ranker_compute.observe(result.compute_s)
        context.metrics.candidates.observe(len(ids))
        scores = result.scores  # (N, T)
        multi = scores.shape[1] > 1
        blend = blend_weights(body.blend, context.settings.rank_blend or live.spec.task_blend, result.tasks)
        ranking = scores @ np.array([blend.get(t, 0.0) for t in result.tasks])  # (N,)
        order = np.argsort(-ranking, kind="stable")[:body.top_k]  # (K,)
        items = [RankedItem(id=ids[i], index=int(i), score=float(ranking[i]),
                            task_scores={t: float(scores[i, k]) for k, t in enumerate(result.tasks)} if multi else None)
                 for i in order]
        return RankResponse(model_version=result.version, items=items, blend=blend if multi else None)

    return router


def blend_weights(requested: dict[str, float] | None, default: dict[str, float], tasks: tuple[str, ...]
                  ) -> dict[str, float]:
    """The weights a ranking uses, over the tasks the model predicts, summing to 1.

    `requested` (the request's, already checked to name tasks of the spec with weights >= 0) wins over
    `default`. A request naming a task the model does not predict, or whose weights are all 0, is a 422;
    a default reduced to the predicted tasks falls back to the first task when nothing is left.
    """
    if requested is not None:
        errors = [{"loc": ("body", "blend", t), "type": "value_error", "input": w,
                   "msg": f"the live model does not predict task {t!r}; it predicts {list(tasks)}"}
                  for t, w in requested.items() if t not in tasks]
        if not errors and not sum(requested.values()) > 0:
            errors.append({"loc": ("body", "blend"), "type": "value_error", "input": requested,
                           "msg": "at least one weight must be > 0"})
        if errors:
            raise RequestValidationError(errors)
        weights = requested
    else:
        weights = {t: w for t, w in default.items() if t in tasks and w > 0} or {tasks[0]: 1.0}
    total = sum(weights.values())
    return {t: weights[t] / total for t in tasks if weights.get(t, 0) > 0}
