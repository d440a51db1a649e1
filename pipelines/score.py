"""Batch offline scoring: raw Parquet rows in, keys + scores + model version out, on Ray Data.

    muxrec score --input rows/ --output scored/ --name ml-100k-deepfm --model-version v0003

Rows stream from Ray Data's Parquet reader through a pool of scoring actors (`concurrency`: a fixed
size or a (min, max) range; by default one per CPU of the cluster). Every actor loads the same
hash-verified version once (an alias is resolved before the run starts, so a concurrent publish
cannot mix versions), and scores blocks through the same derive -> encode -> model path as the
Ranker, all vectorised (Arrow kernels and numpy; the model's forward pass is most of the time). Output goes to a staging folder that replaces `--output` only when the run
succeeds; rows are written in input order to deterministic file names, so a rerun gives the same
files. It says what it scores, with what, and, at the end, the rows and their rate; a terminal gets a
bar of the rows written.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray
import torch
from ray.data import ActorPoolStrategy
from tqdm import tqdm

from muxrec.artifacts import ArtifactRegistry
from muxrec.encoding import derive
from muxrec.errors import DataError, find_muxrec_error
from muxrec.log import say
from muxrec.models.serialization import load_model
from muxrec.pipelines.io import replacing, write_parquet
from muxrec.ray_env import ensure_ray


_READER_CPUS = 0.25
# Blocks are not cut smaller than this to feed more actors: below it, a block's fixed costs (a task's
# hand-over, a model call) outweigh the parallelism.
_MIN_BLOCK_BYTES = 1 << 20


def _block_count(fragments: list[pads.Fragment], blocks: int, rows: int | None = None) -> int:
    """How many blocks to read the input as: `blocks`, or one per file where there are more files, but
    none under `_MIN_BLOCK_BYTES` of Arrow data (a small input makes fewer blocks than asked for, whatever
    its number of files). Ray Data's Parquet reader cuts files (by row group, then by rows) to make the
    count it is asked for. Arrow's size in memory is taken from the first rows of the first file (the
    files' own sizes are compressed and encoded). `rows`: the input's rows, where the caller counted them."""
    if not fragments or len(fragments) >= blocks:
        return max(1, len(fragments))
    if rows is None:
        rows = _row_count(fragments)
    sample = fragments[0].head(1024)
    if not rows or not sample.num_rows:
        return len(fragments)
    arrow_bytes = rows * sample.nbytes / sample.num_rows
    return max(1, min(blocks, math.ceil(arrow_bytes / _MIN_BLOCK_BYTES)))


def _row_count(fragments: list[pads.Fragment]) -> int:
    return sum(f.count_rows() for f in fragments)  # from the files' footers


def _largest(pool: Concurrency) -> int:
    return pool[-1] if isinstance(pool, tuple) else pool


def _no_more_actors_than(pool: Concurrency, blocks: int) -> Concurrency:
    """The pool cut to `blocks` actors: an actor with no block to score only loads the model (and Ray Data
    warns that the pool cannot be used)."""
    if isinstance(pool, tuple):
        return min(pool[0], blocks), min(pool[1], blocks)
    return min(pool, blocks)


class Scorer:
    """Ray Data callable class: loads the model once per actor, scores Arrow batches."""

    def __init__(self, registry_root: str, name: str, version: str, threads: int = 1):
        torch.set_num_threads(threads)
        self.model = load_model(ArtifactRegistry(registry_root).open(name, version))
        self.keys = list(dict.fromkeys(self.model.spec.keys.values()))

    def __call__(self, batch: pa.Table) -> pa.Table:
        probs = self.model.predict_raw(batch)  # (N, T)
        out = {k: batch.column(k) for k in self.keys if k in batch.column_names}
        inputs = self.model.inputs
        tasks = inputs.tasks[:probs.shape[1]]
        # The ranking score: the task's probability, or the spec's blend of every task's (as /v1/rank ranks).
        blend = {t: w for t, w in inputs.task_blend().items() if t in tasks} or {tasks[0]: 1.0}
        weights = np.array([blend.get(t, 0.0) for t in tasks]) / sum(blend.values())  # (T,)
        out["score"] = pa.array((probs @ weights).astype(np.float64))
        if len(tasks) > 1:
            for t, task in enumerate(tasks):
                out[f"score_{task}"] = pa.array(probs[:, t].astype(np.float64))
        out["model_version"] = pa.array([self.model.version.ref] * batch.num_rows, pa.string())
        return pa.table(out)


Concurrency = int | tuple[int, int]


def actor_pool(concurrency: Concurrency | None) -> Concurrency:
    """A fixed pool size or a (min, max) autoscaling range; None: one actor per CPU of the cluster."""
    return max(1, int(ray.cluster_resources().get("CPU", 1))) if concurrency is None else concurrency


def score(registry: ArtifactRegistry, name: str, ref: str, input_dir: str | Path, output_dir: str | Path,
          batch_size: int = 8192, concurrency: Concurrency | None = None) -> dict[str, Any]:
    """Score every row under input_dir into output_dir/part-*.parquet; return rows and the version used."""
    version = registry.open(name, ref)  # resolve aliases once; verify hashes before starting actors
    input_dir = Path(input_dir)
    if not input_dir.exists():
        raise DataError(f"input {input_dir} does not exist")
    dataset = pads.dataset(input_dir, format="parquet")
    schema, fragments = dataset.schema, list(dataset.get_fragments())
    spec = version.read_spec()  # the driver only checks columns: weights and vocabulary load in the actors
    derive(schema.empty_table(), spec, labels=False, split=False)  # missing columns fail here, named
    ensure_ray()
    pool = actor_pool(concurrency)
    # A few blocks per actor at least: Ray Data gives a whole block to one actor.
    total = _row_count(fragments)
    blocks = _block_count(fragments, max(len(fragments), 4 * _largest(pool)), total)
    pool = _no_more_actors_than(pool, blocks)
    # Each actor computes with one thread. The pool leaves a CPU free on each node (actors are spread
    # over the nodes) and the reader tasks ask for a quarter of one: readers waiting behind actors that
    # hold every CPU would wait forever.
    cpus = int(ray.cluster_resources().get("CPU", 1))
    nodes = sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU"))
    actor_cpus = min(1.0, max(0.1, (cpus - max(nodes, 1)) / _largest(pool)))
    try:
        scored = ray.data.read_parquet(str(input_dir), num_cpus=_READER_CPUS,
                                       override_num_blocks=blocks).map_batches(
            Scorer, fn_constructor_args=(str(registry.root.resolve()), name, version.version),
            batch_format="pyarrow", batch_size=batch_size, num_cpus=actor_cpus,  # spread: Ray Data's default
            compute=ActorPoolStrategy(min_size=pool[0], max_size=pool[1]) if isinstance(pool, tuple)
            else ActorPoolStrategy(size=pool))
        actors = f"{pool[0]}-{pool[1]}" if isinstance(pool, tuple) else str(pool)
        say(f"scoring {total:,} rows ({len(fragments)} file(s)) with {version.ref} on {actors} actor(s)")
        start = time.perf_counter()
        with replacing(Path(output_dir)) as staging, tqdm(total=total, unit="rows", unit_scale=True, desc="score",
                                                          disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
            rows = write_parquet(scored, staging, on_rows=bar.update)
    except Exception as err:
        ours = find_muxrec_error(err)
        if ours is not None and ours is not err:
            raise ours from None
        raise
    seconds = time.perf_counter() - start
    say(f"scored {rows:,} rows in {seconds:.1f} s ({rows / max(seconds, 1e-9) * 60:,.0f} rows/min) into {output_dir}")
    return {"output": str(output_dir), "rows": rows, "model_version": version.ref}
