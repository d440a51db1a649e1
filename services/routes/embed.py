"""POST /v1/embed: user or item vectors of the live model, through the embedding cache."""

# No `from __future__ import annotations`: FastAPI reads the body model from the signature.
import numpy as np
from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic_core import to_json

from muxrec.services.deps import Cache, Context, LiveVersionDep, result_of
from muxrec.services.calls import EmbedCall
from muxrec.services.content import decode_images
from muxrec.services.schema import ContentEmbedRequest, ContentEmbedResponse, EmbedResponse, RequestSchema
from muxrec.spec import FeatureKind


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

    @router.post("/v1/embed/content", response_model=ContentEmbedResponse,
                 summary="Vectors of item texts or images from the encoder a content feature pins, through the cache")
    async def embed_content(body: ContentEmbedRequest, context: Context, version: LiveVersionDep) -> Response:
        content = {f.name: f for f in (await context.model_columns(version)).spec.content}
        if body.feature not in content:
            raise RequestValidationError([{"loc": ("body", "feature"), "type": "value_error", "input": body.feature,
                                           "msg": f"not a content feature of the live model; content features: "
                                                  f"{sorted(content) or 'none'}"}])
        f = content[body.feature]
        values: list = body.values
        if f.kind == FeatureKind.IMAGE:
            values = decode_images(values, context.settings.max_image_bytes, lambda i: ("body", "values", i))
        else:
            too_long = [i for i, v in enumerate(values) if len(v) > context.settings.max_string_length]
            if too_long:
                raise RequestValidationError([{"loc": ("body", "values", i), "type": "string_too_long", "input": None,
                                               "msg": f"at most {context.settings.max_string_length} characters"}
                                              for i in too_long[:50]])
        vectors, hits = await context.content.vectors(version, f, values)
        payload = {"encoder": f.encoder, "dim": f.dim, "vectors": vectors.tolist(), "cache_hits": hits}
        return Response(to_json(payload), media_type="application/json")

    return router
