"""The gateway: the only public entry, a FastAPI app served as the Ray Serve ingress.

The Gateway deployment receives the handles of the Ranker, Embedder and FeatureSelector in its
constructor and keeps one `GatewayContext` (services/deps.py); the routes live in services/routes/,
one router per concern, and reach the context, cache, live version and admin check through the
dependencies of services/deps.py. The FastAPI app is built per replica after the constructor has
read the live version's spec (`__serve_build_asgi_app__`), so the request schema in the OpenAPI
document is the spec's.

Request path of /v1/rank: HTTP proxy -> Gateway (validate, to Arrow) -> Ranker (batched forward).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from muxrec.errors import ArtifactError, MuxrecError
from muxrec.services.deps import GatewayContext, Unavailable
from muxrec.services.middleware import BodyLimit, RequestMetrics
from muxrec.services.routes import admin, embed, features, health, rank
from muxrec.services.settings import ServeSettings

API_VERSION = "1"


@serve.deployment(name="Gateway")
@serve.ingress()
class Gateway:
    """The ingress deployment: handles in, one FastAPI app per replica out."""

    def __init__(self, ranker: DeploymentHandle, embedder: DeploymentHandle, selector: DeploymentHandle,
                 settings: ServeSettings):
        self.context = GatewayContext.start(settings, ranker, embedder, selector)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.context)


def create_app(context: GatewayContext) -> Any:
    """The ASGI app of one gateway replica: routers, error handlers, body limit and metrics."""
    app = FastAPI(title="muxrec", version=API_VERSION,
                  description=f"Ranking, embeddings and feature importance for model `{context.settings.model}` "
                              f"(feature spec `{context.spec.name}`).")
    app.state.context = context
    for router in (rank.build_router(context.schema), embed.build_router(context.schema), features.router,
                   admin.router, health.router):
        app.include_router(router)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(MuxrecError, _muxrec_error)
    app.add_exception_handler(Unavailable, _unavailable)
    return RequestMetrics(BodyLimit(app, context.settings.max_body_bytes), context.metrics)


async def _invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": [_safe_error(e) for e in err.errors()[:50]]}, status_code=422)


async def _muxrec_error(request: Request, err: MuxrecError) -> JSONResponse:
    return JSONResponse({"detail": _printable(str(err))}, status_code=404 if isinstance(err, ArtifactError) else 422)


async def _unavailable(request: Request, err: Unavailable) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})


def _printable(text: str) -> str:
    """`text` as valid UTF-8: a lone surrogate (valid in JSON, not in UTF-8) becomes its escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_error(error: dict) -> dict:
    """A validation error as JSON: the default handler echoes the input, which fails to render for
    NaN / inf or a lone surrogate (a 500) and can be megabytes long; keep it only when it is small,
    finite, valid UTF-8 JSON."""
    out = {"loc": [_printable(p) if isinstance(p, str) else p for p in error.get("loc", ())],
           "msg": _printable(str(error.get("msg", ""))), "type": error.get("type")}
    value = error.get("input")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        text = None
    if text is not None and len(text) <= 200:
        out["input"] = value
    return out
