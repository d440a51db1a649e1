"""Offline evaluation of a published model version on one split of its dataset.

Rows are re-derived from the raw source and encoded with the *model's own* vocabulary (not whatever
was prepared last), which is exactly what the serving path does with request rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from muxrec.artifacts import ModelVersion
from muxrec.data import load_source
from muxrec.encoding import SPLIT_COLUMN, SPLITS, derive, encode
from muxrec.errors import DataError
from muxrec.history import add_histories
from muxrec.metrics import calibration, log_loss, roc_auc
from muxrec.models import EncodedRows
from muxrec.models.serialization import LoadedModel, load_model


def split_rows(loaded: LoadedModel, split: str, raw: pa.Table | None = None) -> pa.Table:
    """The encoded rows of `split` (train / valid / test) for this model."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; splits: {list(SPLITS)}")
    raw = load_source(loaded.spec.source) if raw is None else raw
    derived = derive(add_histories(raw, loaded.spec), loaded.spec)
    derived = derived.filter(pc.equal(derived[SPLIT_COLUMN], split)).drop_columns([SPLIT_COLUMN])
    return encode(derived, loaded.spec, loaded.vocab)


def evaluate(version: ModelVersion, split: str = "test", raw: pa.Table | None = None) -> dict[str, Any]:
    """AUC, logloss and calibration (overall and per probability bin) for every task of the model."""
    loaded = load_model(version)
    rows = EncodedRows(split_rows(loaded, split, raw), loaded.inputs)
    probs = loaded.predict(rows)  # (N, T_out)
    labels = rows.labels.numpy()
    tasks = {}
    for t in range(probs.shape[1]):
        y, p = labels[:, t], probs[:, t]
        tasks[loaded.inputs.tasks[t]] = {"auc": roc_auc(y, p), "logloss": log_loss(y, p),
                                         "calibration": calibration(y, p), "positive_rate": float(np.mean(y))}
    return {"model": version.ref, "split": split, "rows": len(rows), "tasks": tasks}
