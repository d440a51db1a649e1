"""Planted tables for the feature-selection tests: a spec and encoded rows with known useful and useless features."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from muxrec.spec import ModelInputs, parse_spec

from tests.helpers import fitted, inputs_for


def planted(rows: int = 6000, seed: int = 0, echo: bool = False) -> tuple[pa.Table, ModelInputs]:
    """(encoded train rows, inputs) of a table whose label is decided by `signal` (8 values: the label is 1
    for values 0-3, flipped on 10% of rows); `noise_a`, `noise_b` (8 and 40 values) and `noise_num` are
    independent of everything. With `echo`, `echo` copies `signal` on 90% of rows (else a random value):
    structure an unsupervised method can see."""
    rng = np.random.default_rng(seed)
    signal = rng.integers(0, 8, rows)
    label = (signal < 4) ^ (rng.random(rows) < 0.1)
    columns = {"row": pa.array(np.arange(rows), pa.int64()),
               "signal": pa.array([f"s{v}" for v in signal]),
               "noise_a": pa.array([f"a{v}" for v in rng.integers(0, 8, rows)]),
               "noise_b": pa.array([f"b{v}" for v in rng.integers(0, 40, rows)]),
               "noise_num": pa.array(rng.normal(size=rows)),
               "y": pa.array(label.astype(np.int8))}
    features = [{"name": "signal", "kind": "categorical"}, {"name": "noise_a", "kind": "categorical"},
                {"name": "noise_b", "kind": "categorical"}, {"name": "noise_num", "kind": "numeric"}]
    if echo:
        copy = np.where(rng.random(rows) < 0.9, signal, rng.integers(0, 8, rows))
        columns["echo"] = pa.array([f"s{v}" for v in copy])
        features.append({"name": "echo", "kind": "categorical"})
    spec = parse_spec({"name": "planted", "source": {"loader": "parquet", "path": "/nonexistent"},
                       "labels": [{"name": "click", "source": "y"}],
                       "split": {"hash": {"row": 1}, "buckets": 10, "test": [0], "valid": [1]},
                       "features": features})
    vocab, encoded = fitted(spec, pa.table(columns))
    return encoded["train"], inputs_for(spec, vocab)
