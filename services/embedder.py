"""Embedder deployment: user / item vectors from a model version's embedding tables, and content vectors
(item texts, images) from the encoders its content features pin.

The table of an entity is the one read by the feature whose source column is the spec's key for
that entity (keys: {user: user_id, item: item_id}). Unknown ids get the out-of-vocabulary row and
`known=False`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from ray import serve

from muxrec.artifacts import ArtifactRegistry
from muxrec.encoding import OOV_ID
from muxrec.errors import ConfigError
from muxrec.services.calls import EmbedCall, EmbedResult
from muxrec.services.content import ContentCall
from muxrec.services.model_store import ModelStore
from muxrec.services.settings import ServeSettings
from muxrec.services.versions import serving_version
from muxrec.spec import Feature, FeatureKind

if TYPE_CHECKING:
    from muxrec.models.serialization import LoadedModel  # imported by ModelStore when a model loads


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
    vectors = model.embeddings(f.name, rows)  # (N, d)
    known = rows != OOV_ID if rows.ndim == 1 else (rows != OOV_ID).all(axis=1)  # (N,)
    return vectors.astype(np.float32, copy=False), known


def content_feature(model: LoadedModel, name: str) -> Feature:
    """The content feature `name` of the model's spec (read by an encoder)."""
    names = [f.name for f in model.spec.content]
    if name not in names:
        raise ConfigError(f"{model.version.ref} has no content feature {name!r} (content features: {names or 'none'})")
    return model.spec.feature(name)


@serve.deployment(name="Embedder")
class Embedder:
    def __init__(self, settings: ServeSettings):
        registry = ArtifactRegistry(settings.registry)
        self.store = ModelStore(registry, settings.model)
        self.store.get(serving_version(registry, settings))

    async def prepare(self, version: str) -> list[str]:
        await asyncio.to_thread(self.store.get, version)
        return self.store.versions

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.001)
    async def content(self, requests: list[ContentCall]) -> list[np.ndarray]:
        """(N, dim) vectors per request, from the pinned encoder of the version's content feature; the
        requests for one (version, feature) go through the encoder together, off the event loop."""
        out: dict[int, np.ndarray] = {}
        for key in {(r.version, r.feature) for r in requests}:
            group = [i for i, r in enumerate(requests) if (r.version, r.feature) == key]
            model = await asyncio.to_thread(self.store.get, key[0])
            f = content_feature(model, key[1])
            values = [v for i in group for v in requests[i].values]
            vectors = await asyncio.to_thread(model.content.catalog, f, values)  # (sum N, dim)
            start = 0
            for i in group:
                out[i] = vectors[start:start + len(requests[i].values)]
                start += len(requests[i].values)
        return [out[i] for i in range(len(requests))]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.001)
    async def embed(self, requests: list[EmbedCall]) -> list[EmbedResult]:
        out = []
        for r in requests:
            model = await asyncio.to_thread(self.store.get, r.version)
            vectors, known = lookup(model, r.entity, list(r.ids))
            out.append(EmbedResult(model.version.ref, vectors, known))
        return out
