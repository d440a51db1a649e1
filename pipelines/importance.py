"""Feature importance computed offline when a model version is published.

Permutation importance ("Random Forests", Breiman 2001, section 10): shuffle one feature's column
across the validation rows, breaking its link to the label, and measure how much AUC drops. Cheap
(one forward pass per feature and repeat) and model-agnostic; features whose shuffling costs
nothing are candidates for removal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from torch import nn

from muxrec.metrics import roc_auc
from muxrec.models import EncodedRows
from muxrec.models.serialization import predict_proba
from muxrec.spec import ModelInputs


def permutation_importance(model: nn.Module, table: pa.Table, inputs: ModelInputs, repeats: int = 3,
                           seed: int = 0, batch_size: int = 8192) -> dict[str, Any]:
    """AUC drop per feature when it is shuffled, on encoded rows `table` (with labels)."""
    rng = np.random.default_rng(seed)
    rows = EncodedRows(table, inputs)
    labels = rows.labels.numpy()[:, 0]
    baseline = roc_auc(labels, predict_proba(model, rows, batch_size)[:, 0])
    features = []
    for name in inputs.fields:
        drops = []
        for _ in range(repeats):
            shuffled = table.set_column(table.schema.get_field_index(name), name,
                                        table.column(name).take(pa.array(rng.permutation(table.num_rows))))
            auc = roc_auc(labels, predict_proba(model, EncodedRows(shuffled, inputs), batch_size)[:, 0])
            drops.append(baseline - auc)
        features.append({"name": name, "importance": float(np.mean(drops)), "std": float(np.std(drops))})
    features.sort(key=lambda f: -f["importance"])
    return {"method": "permutation", "metric": "auc_drop", "split": "valid", "task": inputs.tasks[0],
            "baseline_auc": baseline, "repeats": repeats, "features": features}
