"""Feature selection over prepared data. First method: OutRank-style cardinality-aware ranking.

"OutRank: Speeding up AutoML-based Model Search for Large Sparse Data sets with Cardinality-aware
Feature Ranking" (Skrlj et al., RecSys 2023, https://arxiv.org/abs/2309.01552) ranks features by
their mutual information with the label, corrected for how much mutual information a random feature
of the same cardinality gets by chance: plain MI favours high-cardinality features (an id with one
value per row "explains" any label perfectly), the correction removes that. No model is trained.

Here, over the *encoded* train split of `PreparedData` (what models read):

* id features (`inputs.pooled`, `inputs.sequences`): a single-valued column counts its id; a
  list column (multi-valued, text, sequence) counts (value, label) once for **every value in the
  row**, and an empty list as the value -1. The MI of such a feature is then the MI of the
  (value, label) pairs, an approximation that weighs long rows more; it keeps what a bag of ids
  carries, which the first value alone would drop.
* numeric features (`inputs.numeric`): bucketed into NUMERIC_BINS equal-frequency bins whose
  boundaries come from a quantile sketch of the train split (`muxrec.encoding.merge_sketches`);
  a missing value is the bin -1.
* content features (pretrained vectors) are skipped and listed in `meta["skipped"]`.
* the label: rows where it is missing are left out; a value >= 0.5 is a positive.

Counting runs on Ray Data: each block of the train Parquet becomes a small table of
(feature, value, label, count) which a groupby sums; only the distinct (feature, value, label)
triples reach the driver. `joint_counts` is the same count on one Arrow table, in-process.

Score (nats): MI(feature; label) - noise, where noise is the mean MI of `repeats` random features with
exactly the feature's value frequencies and no relation to the label: each repeat draws the positives
per value from the multivariate hypergeometric distribution (the label permuted over the rows, done
on the counts). The analytic bias of the MI estimate under independence, (k - 1)(2 - 1) / (2N), is
reported beside it (`noise_analytic`) but not used: it assumes every cell has a large expected count,
which fails for exactly the sparse, high-cardinality features OutRank is about (many values seen a
few times), while the sampled null is exact for a single-valued feature at a cost of O(repeats * k).
A feature no more informative than its noise scores <= 0.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from muxrec.encoding import merge_sketches
from muxrec.pipelines.io import collect
from muxrec.pipelines.prepare import PreparedData, _partitions
from muxrec.ray_env import ensure_ray, use_shuffle_for
from muxrec.selection import FeatureRanking, FeatureScore
from muxrec.spec import ModelInputs

NUMERIC_BINS = 32
DEFAULT_REPEATS = 30
COUNTS_SCHEMA = pa.schema([("feature", pa.string()), ("value", pa.int64()), ("label", pa.int8()),
                           ("count", pa.int64())])
_SKETCH_SCHEMA = pa.schema([("feature", pa.string()), ("value", pa.float64()), ("weight", pa.float64())])
MISSING = -1  # the value counted for an empty list, a missing id or a missing numeric value


def _task(inputs: ModelInputs, task: str | None) -> str:
    if task is None:
        return inputs.tasks[0]
    if task not in inputs.tasks:
        raise ValueError(f"unknown task {task!r}; tasks: {list(inputs.tasks)}")
    return task


def counted_features(inputs: ModelInputs) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(id features, numeric features) that OutRank counts, in spec order."""
    ids = set(inputs.pooled) | set(inputs.sequences)
    return tuple(f for f in inputs.fields if f in ids), tuple(inputs.numeric)


def numeric_sketch(table: pa.Table, numeric: tuple[str, ...]) -> pa.Table:
    """A mergeable quantile sketch (feature, value, weight) of each numeric column, missing values skipped."""
    parts = [_SKETCH_SCHEMA.empty_table()]
    for name in numeric:
        x = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        x = x[np.isfinite(x)]
        parts.append(pa.table({"feature": pa.array([name] * len(x), pa.string()), "value": x,
                               "weight": np.ones(len(x))}, schema=_SKETCH_SCHEMA))
    return merge_sketches(pa.concat_tables(parts))


def numeric_boundaries(sketch: pa.Table, numeric: tuple[str, ...], bins: int = NUMERIC_BINS) -> dict[str, list[float]]:
    """Cut points of `bins` equal-frequency bins per numeric feature (repeated cuts merge bins)."""
    out = {}
    for name in numeric:
        mine = sketch.filter(pc.equal(sketch["feature"], name))
        values, weights = mine["value"].to_numpy(), mine["weight"].to_numpy()
        order = np.argsort(values, kind="stable")
        values, cum = values[order], np.cumsum(weights[order])
        if len(values) == 0:
            out[name] = []
            continue
        targets = np.arange(1, bins) * (cum[-1] / bins)
        out[name] = sorted(set(values[np.minimum(np.searchsorted(cum, targets), len(values) - 1)].tolist()))
    return out


def _value_ids(column: pa.ChunkedArray | pa.Array, labels: np.ndarray, bounds: list[float] | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(values, their rows' labels) of one column: ids, every id of a list row, or numeric bins."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if bounds is not None:  # numeric
        x = col.to_numpy(zero_copy_only=False).astype(np.float64)
        bins = np.searchsorted(np.asarray(bounds, np.float64), x, side="right").astype(np.int64)
        return np.where(np.isfinite(x), bins, MISSING), labels
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        flat = pc.fill_null(pc.list_flatten(col), MISSING).to_numpy(zero_copy_only=False).astype(np.int64)
        rows = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
        empty = np.flatnonzero(lengths == 0)
        return (np.concatenate([flat, np.full(len(empty), MISSING, np.int64)]),
                np.concatenate([labels[rows], labels[empty]]))
    return pc.fill_null(col, MISSING).to_numpy(zero_copy_only=False).astype(np.int64), labels


def joint_counts(table: pa.Table, task: str, ids: tuple[str, ...], numeric: tuple[str, ...],
                 boundaries: dict[str, list[float]]) -> pa.Table:
    """COUNTS_SCHEMA rows: how often each (feature, value, label) occurs in `table` (rows without a label skipped).

    Numeric features are bucketed with `boundaries` (numeric_boundaries); list rows count every value.
    """
    table = table.filter(pc.is_valid(table[task]))
    labels = (table.column(task).to_numpy(zero_copy_only=False) >= 0.5).astype(np.int64)
    parts = [COUNTS_SCHEMA.empty_table()]
    for name in (*ids, *numeric):
        values, y = _value_ids(table.column(name), labels, boundaries[name] if name in numeric else None)
        keys, counts = np.unique(values * 2 + y, return_counts=True)  # value and label in one key
        parts.append(pa.table({"feature": pa.array([name] * len(keys), pa.string()), "value": keys // 2,
                               "label": (keys % 2).astype(np.int8), "count": counts.astype(np.int64)},
                              schema=COUNTS_SCHEMA))
    return pa.concat_tables(parts)


def sorted_counts(counts: pa.Table) -> pa.Table:
    """Counts in a canonical order (feature, value, label), for comparing two counts."""
    return counts.select(COUNTS_SCHEMA.names).cast(COUNTS_SCHEMA).sort_by(
        [("feature", "ascending"), ("value", "ascending"), ("label", "ascending")])


def _contingency(counts: pa.Table, feature: str) -> np.ndarray:
    """(k, 2) counts of the feature's k observed values by label (column 0 negatives, 1 positives)."""
    mine = counts.filter(pc.equal(counts["feature"], feature))
    values = mine["value"].to_numpy()
    distinct, row = np.unique(values, return_inverse=True)
    table = np.zeros((len(distinct), 2), np.int64)
    np.add.at(table, (row, mine["label"].to_numpy().astype(np.int64)), mine["count"].to_numpy())
    return table


def mutual_information(table: np.ndarray) -> np.ndarray:
    """MI in nats of (..., k, 2) contingency tables (the leading axes are independent tables)."""
    table = np.asarray(table, np.float64)
    n = table.sum(axis=(-2, -1), keepdims=True)
    expected = table.sum(axis=-1, keepdims=True) * table.sum(axis=-2, keepdims=True) / np.maximum(n, 1)
    safe = table > 0
    terms = np.where(safe, table * np.log(np.where(safe, table, 1.0) / np.where(safe, expected, 1.0)), 0.0)
    return terms.sum(axis=(-2, -1)) / np.maximum(n[..., 0, 0], 1)


def noise_mi(per_value: np.ndarray, positives: int, repeats: int, rng: np.random.Generator) -> np.ndarray:
    """MI of `repeats` random features with these value counts and no relation to the label: (repeats,).

    The positives land on values as a label permutation over the rows would put them: a multivariate
    hypergeometric draw of `positives` from the per-value counts.
    """
    pos = rng.multivariate_hypergeometric(per_value.astype(np.int64), int(positives), size=repeats)  # (R, k)
    return mutual_information(np.stack([per_value[None, :] - pos, pos], axis=-1))  # (R,)


def rank_counts(counts: pa.Table, task: str, seed: int = 0, repeats: int = DEFAULT_REPEATS,
                meta: dict | None = None) -> FeatureRanking:
    """The OutRank ranking from joint counts (every feature in `counts`).

    Each feature's noise draws from its own stream (seed, crc32 of its name): its score does not
    depend on which other features are ranked.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    scores = []
    for name in sorted(set(counts["feature"].to_pylist())):
        table = _contingency(counts, name)
        n, k, positives = int(table.sum()), table.shape[0], int(table[:, 1].sum())
        mi = float(mutual_information(table))
        noise = noise_mi(table.sum(axis=1), positives, repeats, np.random.default_rng([seed, zlib.crc32(name.encode())]))
        mean, std = float(noise.mean()), float(noise.std())
        scores.append(FeatureScore(name, mi - mean, {
            "mi": mi, "noise": mean, "noise_std": std, "noise_analytic": (k - 1) / (2 * n) if n else 0.0,
            "z": (mi - mean) / std if std > 0 else 0.0, "values": k, "observations": n, "positives": positives}))
    scores.sort(key=lambda s: (-s.score, s.name))
    return FeatureRanking("outrank", task, tuple(scores), {
        "score": "mi - noise (nats)", "noise": "mean MI of label-permuted copies (multivariate hypergeometric)",
        "split": "train", "seed": seed, "repeats": repeats, "numeric_bins": NUMERIC_BINS,
        "list_values": "every value of a row counted with the row's label", **(meta or {})})


def outrank_table(table: pa.Table, inputs: ModelInputs, task: str | None = None, seed: int = 0,
                  repeats: int = DEFAULT_REPEATS, boundaries: dict[str, list[float]] | None = None) -> FeatureRanking:
    """OutRank over one in-memory encoded table (tests, small data); `outrank` is the same on Ray Data.

    Args:
        table: encoded rows (e.g. PreparedData.read("train")).
        inputs: the model inputs of the spec (which columns are ids, numeric, content, labels).
        task: the label to rank against; the first task when None.
        boundaries: numeric bin cut points; fitted on `table` when None.
    """
    task = _task(inputs, task)
    ids, numeric = counted_features(inputs)
    if boundaries is None:
        boundaries = numeric_boundaries(numeric_sketch(table, numeric), numeric)
    counts = joint_counts(table, task, ids, numeric, boundaries)
    return rank_counts(counts, task, seed, repeats, {"rows": table.num_rows, "skipped": sorted(inputs.content)})


def _read_train(prepared: PreparedData, columns: list[str]) -> ray.data.Dataset:
    return ray.data.read_parquet(str(Path(prepared.split_dir("train"))), columns=columns)


def ray_boundaries(prepared: PreparedData, numeric: tuple[str, ...]) -> dict[str, list[float]]:
    """numeric_boundaries of the train split, the sketches made per block by Ray Data and merged on the driver."""
    if not numeric:
        return {}
    ds = _read_train(prepared, list(numeric)).map_batches(numeric_sketch, fn_kwargs={"numeric": numeric},
                                                          batch_format="pyarrow", batch_size=None)
    return numeric_boundaries(merge_sketches(collect(ds, _SKETCH_SCHEMA)), numeric)


def ray_counts(prepared: PreparedData, task: str, boundaries: dict[str, list[float]]) -> pa.Table:
    """joint_counts of the whole train split: per-block counts from Ray Data, summed by a groupby."""
    ids, numeric = counted_features(prepared.inputs)
    ds = _read_train(prepared, [*ids, *numeric, task]).map_batches(
        joint_counts, fn_kwargs={"task": task, "ids": ids, "numeric": numeric, "boundaries": boundaries},
        batch_format="pyarrow", batch_size=None)
    summed = ds.groupby(["feature", "value", "label"], num_partitions=_partitions()).sum("count")
    return sorted_counts(collect(summed.rename_columns({"sum(count)": "count"}), COUNTS_SCHEMA))


def outrank(prepared: PreparedData, task: str | None = None, seed: int = 0,
            repeats: int = DEFAULT_REPEATS) -> FeatureRanking:
    """OutRank ranking of every id and numeric feature of `prepared` against `task`, counted on Ray Data.

    Args:
        prepared: the output of `muxrec prepare`; its train split is read.
        task: the label to rank against; the spec's first task when None.
        seed: seeds the noise estimate (each feature its own stream).
        repeats: random same-frequency features drawn per feature for the noise estimate.
    """
    inputs = prepared.inputs
    task = _task(inputs, task)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    ensure_ray()
    use_shuffle_for(int(prepared.stats["splits"]["train"]["rows"]))
    boundaries = ray_boundaries(prepared, counted_features(inputs)[1])
    counts = ray_counts(prepared, task, boundaries)
    return rank_counts(counts, task, seed, repeats, {"rows": int(prepared.stats["splits"]["train"]["rows"]),
                                                    "skipped": sorted(inputs.content),
                                                    "prepared": prepared.spec.name})
