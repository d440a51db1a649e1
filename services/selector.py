"""FeatureSelector deployment: the feature rankings that describe each model version.

`importance.json`, the permutation importance stored with every published version, is served as it
was (GET /v1/features/importance). Every ranking of a version, one per method
(`muxrec.selection.stored_rankings`: the model's own importance plus the rankings `muxrec select`
published under `<spec name>-selection` for the model's exact spec), is served by
GET /v1/features/rankings[/{method}]. A `muxrec select` run after the deploy shows up without a
redeploy: `RankingStore` looks at the selection registry's version list at most every
`ServeSettings.rankings_check_s` and reads the rankings again only when that list changed.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from cachetools import LRUCache
from ray import serve

from muxrec.artifacts import ArtifactRegistry, ModelVersion
from muxrec.errors import ArtifactError
from muxrec.selection import IMPORTANCE_FILE, METHODS, FeatureRanking, selection_name, stored_rankings
from muxrec.services.settings import ServeSettings


@dataclass
class _Stored:
    """The rankings of one model version, and the selection listing they were read at."""

    model: ModelVersion
    selection: str  # registry name of the rankings of the model's spec
    listing: tuple[str, ...] | None = None
    next_check: float = 0.0
    rankings: dict[str, dict[str, Any]] | None = None  # method -> ranking as JSON values, METHODS order first


class RankingStore:
    """Every stored ranking of each model version, per method: read once per version, read again when
    the version list of its selection registry name changed, which is looked at (one directory
    listing) at most every `check_s`."""

    def __init__(self, registry: ArtifactRegistry, name: str, check_s: float,
                 clock: Callable[[], float] = time.monotonic, keep: int = 32):
        self.registry, self.name, self.check_s, self._clock = registry, name, check_s, clock
        self._stored: LRUCache = LRUCache(keep)  # version -> _Stored
        self._lock = threading.Lock()

    def get(self, ref: str) -> tuple[str, dict[str, dict[str, Any]]]:
        """(the version `ref` names, its rankings by method); ArtifactError for an unknown version or alias."""
        version = self.registry.resolve(self.name, ref)
        with self._lock:
            stored = self._stored.get(version)
            if stored is None:
                model = self.registry.open(self.name, version)  # verified once per version
                stored = self._stored[version] = _Stored(model, selection_name(model.read_spec().name))
            now = self._clock()
            if stored.rankings is None or now >= stored.next_check:
                stored.next_check = now + self.check_s
                listing = self._listing(stored.selection)  # before reading: a version published meanwhile is read next time
                if listing != stored.listing or stored.rankings is None:
                    stored.rankings = self._read(stored.model)
                    stored.listing = listing
            return version, stored.rankings

    def _listing(self, selection: str) -> tuple[str, ...]:
        try:
            return tuple(self.registry.versions(selection))
        except ArtifactError:  # a spec name that is no registry name has no stored rankings
            return ()

    def _read(self, model: ModelVersion) -> dict[str, dict[str, Any]]:
        found = stored_rankings(self.registry, model)
        order = [m for m in METHODS if m in found] + sorted(set(found) - set(METHODS))
        return {method: _as_json(*found[method], self._created_at(found[method][0])) for method in order}

    def _created_at(self, ref: str) -> str | None:
        name, _, version = ref.rpartition("/")
        return self.registry.manifest(name, version).get("created_at")


def _as_json(artifact: str, ranking: FeatureRanking, created_at: str | None) -> dict[str, Any]:
    return {"method": ranking.method, "task": ranking.task, "artifact": artifact, "created_at": created_at,
            "meta": ranking.meta,
            "features": [{"name": f.name, "score": f.score, "detail": f.detail} for f in ranking.features]}


@serve.deployment(name="FeatureSelector")
class FeatureSelector:
    def __init__(self, settings: ServeSettings):
        self.registry = ArtifactRegistry(settings.registry)
        self.name = settings.model
        self._cache: dict[str, dict] = {}
        self.store = RankingStore(self.registry, self.name, settings.rankings_check_s)

    def _load(self, version: str) -> dict:
        if version not in self._cache:
            model_version = self.registry.open(self.name, version)
            if IMPORTANCE_FILE not in model_version.manifest["files"]:
                raise ArtifactError(f"{model_version.ref} stores no feature importance")
            self._cache[version] = json.loads(model_version.read_text(IMPORTANCE_FILE))
        return self._cache[version]

    async def prepare(self, version: str) -> None:
        for load in (self._load, self.store.get):
            try:
                await asyncio.to_thread(load, version)
            except ArtifactError:
                pass  # a version without importance or rankings still serves ranking

    async def ranking(self, version: str, top_k: int | None) -> dict:
        data = await asyncio.to_thread(self._load, version)
        features = data["features"][:top_k] if top_k else data["features"]
        return {**data, "model_version": f"{self.name}/{version}", "features": features}

    async def rankings(self, version: str) -> dict:
        """The methods with a stored ranking for `version` (a version or alias), newest per method."""
        version, found = await asyncio.to_thread(self.store.get, version)
        return {"model_version": f"{self.name}/{version}",
                "rankings": [{"method": r["method"], "task": r["task"], "artifact": r["artifact"],
                              "features": len(r["features"]), "created_at": r["created_at"]} for r in found.values()]}

    async def method_ranking(self, version: str, method: str, top_k: int | None) -> dict:
        """The newest stored `method` ranking of `version`, its `top_k` best features; ArtifactError (404)
        naming the stored methods when there is none."""
        version, found = await asyncio.to_thread(self.store.get, version)
        ref = f"{self.name}/{version}"
        if method not in found:
            raise ArtifactError(f"{ref} has no stored {method!r} ranking; methods stored for it: {list(found)}")
        ranking = found[method]
        return {**ranking, "model_version": ref, "features": ranking["features"][:top_k] if top_k else ranking["features"]}
