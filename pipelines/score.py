"""Batch offline scoring: raw Parquet rows in, keys + scores + model version out, on Ray Data.

    muxrec score --input rows/ --output scored/ --name ml-100k-deepfm --model-version v0003

Every actor loads the same hash-verified version once (an alias is resolved before the run starts,
so a concurrent publish cannot mix versions), and scores blocks through the same derive -> encode ->
model path as the Ranker. Output goes to a staging folder that replaces `--output` only when the run
succeeds; rows are written in input order to deterministic file names, so a rerun gives the same
files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray

from muxrec.artifacts import ArtifactRegistry
from muxrec.encoding import derive
from muxrec.errors import DataError, find_muxrec_error
from muxrec.models.serialization import load_model
from muxrec.pipelines.io import replacing, write_parquet
from muxrec.ray_env import ensure_ray


class Scorer:
    """Ray Data callable class: loads the model once per actor, scores Arrow batches."""

    def __init__(self, registry_root: str, name: str, version: str):
        self.model = load_model(ArtifactRegistry(registry_root).open(name, version))
        self.keys = list(dict.fromkeys(self.model.spec.keys.values()))

    def __call__(self, batch: pa.Table) -> pa.Table:
        probs = self.model.predict_raw(batch)  # (N, T)
        out = {k: batch.column(k) for k in self.keys if k in batch.column_names}
        tasks = self.model.inputs.tasks
        out["score"] = pa.array(probs[:, 0].astype(np.float64))
        for t in range(1, probs.shape[1]):
            out[f"score_{tasks[t]}"] = pa.array(probs[:, t].astype(np.float64))
        out["model_version"] = pa.array([self.model.version.ref] * batch.num_rows, pa.string())
        return pa.table(out)


def score(registry: ArtifactRegistry, name: str, ref: str, input_dir: str | Path, output_dir: str | Path,
          batch_size: int = 4096, concurrency: int = 1) -> dict[str, Any]:
    version = registry.open(name, ref)  # resolve aliases once; verify hashes before starting actors
    input_dir = Path(input_dir)
    if not input_dir.exists():
        raise DataError(f"input {input_dir} does not exist")
    schema = pads.dataset(input_dir, format="parquet").schema
    spec = load_model(version).spec
    derive(schema.empty_table(), spec, labels=False, split=False)  # missing columns fail here, named
    ensure_ray()
    try:
        scored = ray.data.read_parquet(str(input_dir)).map_batches(
            Scorer, fn_constructor_args=(str(registry.root.resolve()), name, version.version),
            batch_format="pyarrow", batch_size=batch_size, concurrency=concurrency)
        with replacing(Path(output_dir)) as staging:
            rows = write_parquet(scored, staging)
    except Exception as err:
        ours = find_muxrec_error(err)
        if ours is not None and ours is not err:
            raise ours from None
        raise
    return {"output": str(output_dir), "rows": rows, "model_version": version.ref}
