"""Content vectors for the gateway: item texts and images through the Embedder, cached in Redis.

A content feature (text read by an encoder, or an image) needs its encoder's vector before the Ranker can
score a row, and the encoder is the expensive part (MiniLM: ~4 ms a title on one core). The gateway
looks each value up in the embedding cache under the pinned encoder version, `muxrec:emb:<encoder
ref>@<weights sha256 prefix>:<kind><dim>:<sha256 of the value>`, asks the Embedder for the misses only,
and stores them. The key holds the encoder's version, not the ranking model's: a reload to a model pinned
to the same encoder keeps its warm cache.

Images arrive base64-encoded; anything that is not base64, not an image, or too large (bytes or sides)
is a 422 naming the candidate and field, before any model work.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
from fastapi.exceptions import RequestValidationError

from muxrec.images import ImageError, decode_image
from muxrec.spec import Feature, FeatureKind, FeatureSpec

_CHECK_SIZE = 8  # decode to this side to check an image (the Embedder decodes at its tower's size)


@dataclass(frozen=True)
class ContentCall:
    """What the gateway asks the Embedder: the vectors of `values` of content feature `feature`."""

    version: str
    feature: str
    values: tuple[str | bytes, ...]


def value_key(value: str | bytes) -> str:
    data = value if isinstance(value, bytes) else value.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def decode_images(values: list[str | None], max_bytes: int, loc: Callable[[int], tuple]) -> list[bytes | None]:
    """Base64 image files -> bytes, each checked to be an image within the limits; a 422 at `loc(i)` for
    each bad value i."""
    out, errors = [], []
    for i, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        try:
            data = base64.b64decode(value, validate=True)
            decode_image(data, _CHECK_SIZE, max_bytes=max_bytes)
            out.append(data)
        except ImageError as err:
            errors.append({"loc": loc(i), "type": "value_error", "msg": f"image: {err}", "input": None})
        except (binascii.Error, ValueError):
            errors.append({"loc": loc(i), "type": "value_error", "msg": "image: not base64", "input": None})
    if errors:
        raise RequestValidationError(errors[:50])
    return out


class ContentVectorsClient:
    """The gateway side of content vectors: cache first, the Embedder for the misses."""

    def __init__(self, context: Any):
        self.context = context

    def encoder_tag(self, ref: str) -> str:
        """Cache-key version of an encoder: its ref plus its weights' hash."""
        name, _, version = ref.rpartition("@")
        return self.context.weights_tag(name, version, ref)

    async def vectors(self, version: str, f: Feature, values: list[str | bytes | None]) -> tuple[np.ndarray, list[bool]]:
        """(N, f.dim) vectors of `values` and which came from the cache. None (no image) is a zero vector."""
        from muxrec.services.deps import result_of  # deps imports this module: import late

        tag, entity = self.encoder_tag(f.encoder), f"{f.kind.value}{f.dim}"
        present = [i for i, v in enumerate(values) if v is not None]
        keys = [value_key(values[i]) for i in present]
        cached = await self.context.cache.get_many(tag, entity, keys, f.dim)
        out = np.zeros((len(values), f.dim), np.float32)  # (N, dim)
        hits = [False] * len(values)
        misses: dict[str, str | bytes] = {}
        for i, key, vector in zip(present, keys, cached):
            if vector is None:
                misses[key] = values[i]
            else:
                out[i], hits[i] = vector, True
        if misses:
            result = await result_of(self.context.embedder.content, ContentCall(version, f.name, tuple(misses.values())),
                                     timeout_s=self.context.settings.call_timeout_s)
            fresh = dict(zip(misses, result))
            await self.context.cache.put_many(tag, entity, fresh)
            for i, key in zip(present, keys):
                if not hits[i]:
                    out[i] = fresh[key]
        return out, hits

    async def for_rows(self, version: str, spec: FeatureSpec, table: pa.Table) -> dict[str, np.ndarray] | None:
        """feature -> (N, dim) vectors of every content feature of request rows `table`; None without any."""
        if not spec.content:
            return None
        out = {}
        for f in spec.content:
            values = table.column(f.column).to_pylist()
            if f.kind == FeatureKind.IMAGE:
                values = decode_images(values, self.context.settings.max_image_bytes,
                                       lambda i, column=f.column: ("body", "candidates", i, column))
            else:
                values = ["" if v is None else v for v in values]
            out[f.name], _ = await self.vectors(version, f, values)
        return out
