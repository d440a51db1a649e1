"""Ranker deployment: scores candidate rows with a registry model version, batched with serve.batch.

Requests arrive as Arrow tables of raw columns (already validated by the gateway against the spec), sent
as Arrow IPC streams.
A batch concatenates the requests of one version, encodes them with that version's vocabulary and
runs one forward pass: the same derive -> encode -> model path as offline evaluation, so online and
offline scores agree.

Batching does not wait (batch_wait_timeout_s 0 by default): a request that finds the Ranker idle is
scored at once, alone. The forward pass runs on the replica's event loop (Serve runs user code on
a loop of its own thread), so requests that arrive meanwhile queue up and the next batch takes all
of them: under load batches grow by themselves, with no timer. A thread hand-off per batch
(asyncio.to_thread) cost more than it saved here, and let every request form a batch of one while
the previous batch still ran.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pyarrow as pa
from ray import serve

from muxrec.artifacts import ArtifactRegistry
from muxrec.errors import ConfigError
from muxrec.services.calls import ScoreCall, ScoreResult
from muxrec.services.model_store import ModelStore
from muxrec.services.settings import ServeSettings
from muxrec.services.versions import serving_version


@serve.deployment(name="Ranker")
class Ranker:
    def __init__(self, settings: ServeSettings):
        registry = ArtifactRegistry(settings.registry)
        self.store = ModelStore(registry, settings.model)
        self.store.get(serving_version(registry, settings))  # load before taking traffic

    def reconfigure(self, config: dict) -> None:
        """user_config from deploy/serve.yaml: batching knobs, changeable without a restart."""
        self.score.set_max_batch_size(int(config.get("max_batch_size", 16)))
        self.score.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.0)))

    async def prepare(self, version: str) -> list[str]:
        """Load `version` ahead of a reload; returns the versions now loaded."""
        await asyncio.to_thread(self.store.get, version)
        return self.store.versions

    async def loaded(self) -> list[str]:
        return self.store.versions

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def score(self, requests: list[ScoreCall]) -> list[ScoreResult]:
        results: dict[int, ScoreResult] = {}
        for version in {r.version for r in requests}:
            group = [i for i, r in enumerate(requests) if r.version == version]
            results.update(self._score_group(version, [requests[i] for i in group], group))  # on the loop: see above
        return [results[i] for i in range(len(requests))]

    def _score_group(self, version: str, group: list[ScoreCall], positions: list[int]) -> dict[int, ScoreResult]:
        model = self.store.get(version)
        tables = [r.rows() for r in group]
        content = None
        if model.spec.content:
            if any(r.content is None for r in group):
                raise ConfigError(f"{model.version.ref} reads content features: the request needs their vectors")
            content = {f.name: np.concatenate([r.content[f.name] for r in group]) for f in model.spec.content}
        try:
            t0 = time.perf_counter()
            probs = model.predict_raw(pa.concat_tables(tables, promote_options="permissive"), vectors=content)  # (N, T)
        except Exception:
            if len(group) == 1:
                raise
            # One bad request must not fail the others it was batched with.
            out = {}
            for pos, request in zip(positions, group):
                out.update(self._score_group(version, [request], [pos]))
            return out
        compute_s = time.perf_counter() - t0
        out, start = {}, 0
        for pos, table in zip(positions, tables):
            out[pos] = ScoreResult(f"{model.version.ref}", probs[start:start + table.num_rows],
                                   model.inputs.tasks[:probs.shape[1]], len(probs), len(group), compute_s)
            start += table.num_rows
        return out
