"""POST /v1/embed: user or item vectors of the live model, through the embedding cache."""

# No `from __future__ import annotations`: FastAPI reads the body model from the signature.
import numpy as np
from fastapi import APIRouter
from fastapi.responses import Response
from pydantic_core import to_json

from muxrec.services.deps import Cache, Context, LiveVersionDep, result_of
from muxrec.services.embedder import EmbedRequest as EmbedCall
from muxrec.services.schema import EmbedResponse, RequestSchema


def build_router(schema: RequestSchema) -> APIRouter:
    router = APIRouter(tags=["embeddings"])
    EmbedRequest = schema.EmbedRequest

    @router.post("/v1/embed", response_model=EmbedResponse,
                 summary="User or item vectors from the live model, through the embedding cache")
    async def embed(body: EmbedRequest, context: Context, cache: Cache, version: LiveVersionDep) -> Response:
        ids = [str(i) for i in body.ids]
        tag = context.cache_tag(version)
        dim = context.dims.get((tag, body.entity))
        # Cached values are checked against the vector length the model gives; until this replica has
        # seen it once (first request per version and entity), every id is computed.
        cached = await cache.get_many(tag, body.entity, ids, dim) if dim else [None] * len(ids)
        missing = sorted({i for i, v in zip(ids, cached) if v is None})
        fresh: dict[str, tuple[np.ndarray, bool]] = {}
        if missing:
            result = await result_of(context.embedder.embed, EmbedCall(version, body.entity, tuple(missing)),
                                     timeout_s=context.settings.call_timeout_s)
            context.dims[(tag, body.entity)] = result.vectors.shape[1]  # (N, D)
            fresh = {i: (v, bool(k)) for i, v, k in zip(missing, result.vectors, result.known)}
            # Known ids only; a malformed cached value was a miss and is overwritten here.
            await cache.put_many(tag, body.entity, {i: v for i, (v, k) in fresh.items() if k})
        vectors, known = [], []
        for i, v in zip(ids, cached):
            v, k = fresh[i] if v is None else (v, True)  # only known ids are cached
            vectors.append(v)
            known.append(k)
        matrix = np.stack(vectors)  # (N, D)
        # An EmbedResponse, written straight to JSON: its fields are built here from checked values, so
        # FastAPI's validation of the response (N x D floats, again) is skipped.
        payload = {"model_version": context.ref(version), "entity": body.entity, "dim": matrix.shape[1], "ids": ids,
                   "vectors": matrix.tolist(), "known": known, "cache_hits": [v is not None for v in cached]}
        return Response(to_json(payload), media_type="application/json")

    return router
