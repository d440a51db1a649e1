"""FeatureSelector deployment: the feature-importance ranking stored with each model version."""

from __future__ import annotations

import asyncio
import json

from ray import serve

from muxrec.artifacts import ArtifactRegistry
from muxrec.errors import ArtifactError
from muxrec.services.settings import ServeSettings

IMPORTANCE = "importance.json"


@serve.deployment(name="FeatureSelector")
class FeatureSelector:
    def __init__(self, settings: ServeSettings):
        self.registry = ArtifactRegistry(settings.registry)
        self.name = settings.model
        self._cache: dict[str, dict] = {}

    def _load(self, version: str) -> dict:
        if version not in self._cache:
            model_version = self.registry.open(self.name, version)
            if IMPORTANCE not in model_version.manifest["files"]:
                raise ArtifactError(f"{model_version.ref} stores no feature importance")
            self._cache[version] = json.loads(model_version.read_text(IMPORTANCE))
        return self._cache[version]

    async def prepare(self, version: str) -> None:
        try:
            await asyncio.to_thread(self._load, version)
        except ArtifactError:
            pass  # a version without importance still serves ranking

    async def ranking(self, version: str, top_k: int | None) -> dict:
        data = await asyncio.to_thread(self._load, version)
        features = data["features"][:top_k] if top_k else data["features"]
        return {**data, "model_version": f"{self.name}/{version}", "features": features}
