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
    inputs = loaded.inputs
    tasks = {}
    for t in range(probs.shape[1]):
        y, p = labels[:, t], probs[:, t]
        task = inputs.tasks[t]
        tasks[task] = {"auc": roc_auc(y, p), "logloss": log_loss(y, p), "calibration": calibration(y, p),
                       "positive_rate": float(np.mean(y))}
        parent = inputs.parent_index(task)
        if parent is not None and labels[:, parent].any():  # also on the rows where the parent happened
            given = labels[:, parent] == 1
            tasks[task][f"given_{inputs.tasks[parent]}"] = {
                "auc": roc_auc(y[given], p[given]), "logloss": log_loss(y[given], p[given]), "rows": int(given.sum())}
    blend = {t: w for t, w in inputs.task_blend().items() if t in tasks}
    report = {"model": version.ref, "split": split, "rows": len(rows), "tasks": tasks}
    if len(tasks) > 1:
        report["blend"] = {"weights": blend, "auc": sum(w * tasks[t]["auc"] for t, w in blend.items()) / sum(blend.values())}
    return report
