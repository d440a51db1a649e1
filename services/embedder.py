"""Embedder deployment: user / item vectors from a model version's embedding tables.

The table of an entity is the one read by the feature whose source column is the spec's key for
that entity (keys: {user: user_id, item: item_id}). Unknown ids get the out-of-vocabulary row and
`known=False`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from ray import serve

from muxrec.artifacts import ArtifactRegistry
from muxrec.encoding import OOV_ID
from muxrec.errors import ConfigError
from muxrec.models.serialization import LoadedModel
from muxrec.services.settings import ServeSettings
from muxrec.services.versions import ModelStore, serving_version
from muxrec.spec import Feature, FeatureKind


@dataclass(frozen=True)
class EmbedRequest:
    version: str
    entity: str
    ids: tuple[str, ...]


@dataclass(frozen=True)
class EmbedResult:
    version: str
    vectors: np.ndarray  # (N, D) float32
    known: np.ndarray  # (N,) bool


def entity_feature(model: LoadedModel, entity: str) -> Feature:
    """The categorical feature reading `entity` ids (its table holds their vectors)."""
    column = model.spec.keys.get(entity)
    for f in model.spec.features:
        if column is not None and f.column == column and f.kind == FeatureKind.CATEGORICAL:
            return f
    raise ConfigError(f"the spec of {model.version.ref} has no categorical feature for {entity!r} ids "
                      f"(keys: {model.spec.keys})")


def lookup(model: LoadedModel, entity: str, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    f = entity_feature(model, entity)
    rows = model.vocab.tables[f.table_name].ids(pa.array(ids, pa.string()), f.name, f.slots or 1)  # (N,) or (N, k)
    with torch.no_grad():
        vectors = model.model.embedding.lookup(f.name, torch.from_numpy(rows)).numpy()  # (N, d)
    known = rows != OOV_ID if rows.ndim == 1 else (rows != OOV_ID).all(axis=1)  # (N,)
    return vectors.astype(np.float32, copy=False), known


@serve.deployment(name="Embedder")
class Embedder:
    def __init__(self, settings: ServeSettings):
        registry = ArtifactRegistry(settings.registry)
        self.store = ModelStore(registry, settings.model)
        self.store.get(serving_version(registry, settings))

    async def prepare(self, version: str) -> list[str]:
        await asyncio.to_thread(self.store.get, version)
        return self.store.versions

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.001)
    async def embed(self, requests: list[EmbedRequest]) -> list[EmbedResult]:
        out = []
        for r in requests:
            model = await asyncio.to_thread(self.store.get, r.version)
            vectors, known = lookup(model, r.entity, list(r.ids))
            out.append(EmbedResult(model.version.ref, vectors, known))
        return out
