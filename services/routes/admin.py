"""The registry seen from the gateway: GET /v1/models, and POST /v1/admin/reload (bearer token)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException

from muxrec.errors import ArtifactError
from muxrec.services.deps import Admin, Context, GatewayContext, LiveVersionDep, result_of
from muxrec.services.schema import ReloadRequest, column_changes

router = APIRouter()


@router.get("/v1/models", tags=["models"], summary="Versions in the registry and which one is live")
async def models(context: Context, version: LiveVersionDep) -> dict:
    return await asyncio.to_thread(_list_models, context, version)


@router.post("/v1/admin/reload", tags=["admin"], summary="Swap the live version (bearer token from MUXREC_ADMIN_TOKEN)")
async def reload(body: ReloadRequest, context: Context, version: LiveVersionDep, _: Admin) -> dict:
    target = await asyncio.to_thread(context.registry.open, context.settings.model, body.version)  # verifies hashes
    spec = await asyncio.to_thread(target.read_spec)
    # The request model stays the deploy-time one: a target may read fewer of its fields, not others.
    changes = column_changes(context.schema.columns, spec.request_columns())
    if changes:
        raise HTTPException(409, f"{target.ref} reads request fields the served request model lacks: "
                                 f"{'; '.join(changes)}; redeploy instead")
    # Load everywhere first, then move the alias: no request ever waits on a cold model.
    await asyncio.gather(result_of(context.ranker.prepare, target.version),
                         result_of(context.embedder.prepare, target.version),
                         result_of(context.selector.prepare, target.version))
    context.remember(target.version, spec)
    try:
        await asyncio.to_thread(context.live.set, target.version)
    except OSError as err:
        raise HTTPException(409, f"cannot move the {context.live.alias!r} alias: the registry is not writable "
                                 f"({err.strerror}); redeploy with `version: {target.version}` instead") from None
    context.metrics.model.info({"version": target.ref})
    return {"previous": context.ref(version), "live": target.ref}


def _list_models(context: GatewayContext, live: str) -> dict:
    name, registry = context.settings.model, context.registry
    by_version: dict[str, list[str]] = {}
    for alias, version in registry.aliases(name).items():
        by_version.setdefault(version, []).append(alias)
    versions = []
    for v in registry.versions(name):
        try:
            meta = registry.manifest(name, v)
        except ArtifactError:
            meta = {}
        versions.append({"version": v, "aliases": sorted(by_version.get(v, [])),
                         "created_at": meta.get("created_at"), "metadata": meta.get("metadata", {})})
    return {"model": name, "live": context.ref(live), "versions": versions}
