"""Permutation importance: at publish time in-process, and as a selection stage on Ray.

Permutation importance ("Random Forests", Breiman 2001, section 10): shuffle one feature's column
across the validation rows, breaking its link to the label, and measure how much AUC drops. Cheap
(one forward pass per feature and repeat) and model-agnostic; features whose shuffling costs
nothing are candidates for removal.

Each feature's shuffles draw from their own stream (seed, crc32 of its name), so a feature's drop
is the same whether features are scored in one loop (`permutation_importance`, run when a model
is published) or spread over Ray tasks (`permutation_on_ray`, `muxrec select --method permutation`).
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray
from torch import nn

from muxrec.artifacts import ArtifactRegistry, ModelVersion
from muxrec.errors import DataError
from muxrec.metrics import roc_auc
from muxrec.models import EncodedRows
from muxrec.models.serialization import load_model, predict_proba
from muxrec.ray_env import ensure_ray
from muxrec.selection import FeatureRanking, permutation_ranking
from muxrec.spec import ModelInputs


def _auc(model: nn.Module, table: pa.Table, inputs: ModelInputs, batch_size: int) -> float:
    rows = EncodedRows(table, inputs)
    return roc_auc(rows.labels.numpy()[:, 0], predict_proba(model, rows, batch_size)[:, 0])


def feature_drops(model: nn.Module, table: pa.Table, inputs: ModelInputs, names: list[str], baseline: float,
                  repeats: int, seed: int, batch_size: int = 8192) -> list[dict[str, Any]]:
    """{"name", "importance" (mean AUC drop), "std"} of each feature in `names`, shuffled `repeats` times."""
    out = []
    for name in names:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        drops = []
        for _ in range(repeats):
            shuffled = table.set_column(table.schema.get_field_index(name), name,
                                        table.column(name).take(pa.array(rng.permutation(table.num_rows))))
            drops.append(baseline - _auc(model, shuffled, inputs, batch_size))
        out.append({"name": name, "importance": float(np.mean(drops)), "std": float(np.std(drops))})
    return out


def _report(features: list[dict[str, Any]], inputs: ModelInputs, baseline: float, repeats: int,
            seed: int, rows: int) -> dict[str, Any]:
    features = sorted(features, key=lambda f: (-f["importance"], f["name"]))
    return {"method": "permutation", "metric": "auc_drop", "split": "valid", "rows": rows, "task": inputs.tasks[0],
            "baseline_auc": baseline, "repeats": repeats, "seed": seed, "features": features}


def permutation_importance(model: nn.Module, table: pa.Table, inputs: ModelInputs, repeats: int = 3,
                           seed: int = 0, batch_size: int = 8192) -> dict[str, Any]:
    """AUC drop per feature when it is shuffled, on encoded rows `table` (with labels): importance.json."""
    baseline = _auc(model, table, inputs, batch_size)
    drops = feature_drops(model, table, inputs, list(inputs.fields), baseline, repeats, seed, batch_size)
    return _report(drops, inputs, baseline, repeats, seed, table.num_rows)


@ray.remote(num_cpus=1)
def _drops_task(registry: str, name: str, version: str, valid_dir: str, names: list[str], baseline: float,
                repeats: int, seed: int) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    loaded = load_model(ArtifactRegistry(registry).open(name, version))
    table = pads.dataset(valid_dir, format="parquet").to_table()
    return feature_drops(loaded.model, table, loaded.inputs, names, baseline, repeats, seed)


def permutation_on_ray(model: ModelVersion, valid_dir: str | Path, repeats: int = 3, seed: int = 0,
                       tasks: int | None = None) -> FeatureRanking:
    """Permutation importance of a published model over a prepared valid split, features spread over Ray tasks.

    Each task loads the model (hash-checked) and the rows once and scores its share of the features;
    `tasks` defaults to one per CPU of the cluster.
    """
    loaded = load_model(model)
    valid_dir = Path(valid_dir).resolve()
    if not any(valid_dir.glob("*.parquet")):
        raise DataError(f"{valid_dir} holds no Parquet rows to measure permutation importance on")
    valid = pads.dataset(valid_dir, format="parquet").to_table()
    baseline = _auc(loaded.model, valid, loaded.inputs, 8192)
    ensure_ray()
    names = list(loaded.inputs.fields)
    n = max(1, min(len(names), tasks or int(ray.cluster_resources().get("CPU", 1))))
    registry = model.path.parent.parent.resolve()  # <registry>/<name>/<version>
    refs = [_drops_task.remote(str(registry), model.name, model.version, str(valid_dir),
                               names[i::n], baseline, repeats, seed) for i in range(n)]
    features = [f for part in ray.get(refs) for f in part]
    ranking = permutation_ranking(_report(features, loaded.inputs, baseline, repeats, seed, valid.num_rows))
    return replace(ranking, meta={**ranking.meta, "model": model.ref})
