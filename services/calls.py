"""What the gateway sends to the Ranker and the Embedder, and what they answer (content vectors:
`services/content.py: ContentCall`). Plain data, so the gateway imports these without the model code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class ScoreCall:
    """What the gateway sends: the version to score with and the candidate rows as one Arrow IPC stream.

    Bytes, not a `pa.Table`: Ray serializes a table buffer by buffer, 0.49 ms for the bench's 100
    candidates in the gateway alone, where the stream costs 0.01 ms to write, 0.01 ms to serialize and
    0.01 ms to read back (docs/benchmarks/serve-notes.md)."""

    version: str
    rows_ipc: bytes
    content: dict[str, np.ndarray] | None = None  # content feature -> (N, dim) vectors (the gateway's cache)

    @classmethod
    def of(cls, version: str, rows: pa.Table, content: dict[str, np.ndarray] | None = None) -> ScoreCall:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, rows.schema) as writer:
            writer.write_table(rows)
        return cls(version, sink.getvalue().to_pybytes(), content)

    def rows(self) -> pa.Table:
        return pa.ipc.open_stream(self.rows_ipc).read_all()


@dataclass(frozen=True)
class ScoreResult:
    version: str
    scores: np.ndarray  # (N, T) probabilities
    tasks: tuple[str, ...]
    batch_rows: int  # rows in the forward pass this request shared
    batch_requests: int
    compute_s: float  # seconds of that pass's encode + forward in the replica (the rest is Serve and waiting)


@dataclass(frozen=True)
class EmbedCall:
    version: str
    entity: str
    ids: tuple[str, ...]


@dataclass(frozen=True)
class EmbedResult:
    version: str
    vectors: np.ndarray  # (N, D) float32
    known: np.ndarray  # (N,) bool
