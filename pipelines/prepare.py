"""Preprocessing on Ray Data: raw rows -> derived features -> vocabularies (train only) -> Parquet.

    prepared/<spec name>/
        spec.yaml  vocabulary.json  stats.json
        train/part-00000.parquet ...   valid/...   test/...

The whole folder is built in a staging folder and swapped in at the end, with deterministic file
names, so a rerun replaces the previous output instead of adding to it, and a failed run leaves the
previous output intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray

from muxrec.data import load_source
from muxrec.encoding import (SPLIT_COLUMN, SPLITS, Vocabulary, count_values, derive, encode, moments, quantile_sketch,
                             with_row_numbers)
from muxrec.errors import DataError, MuxrecError, find_muxrec_error
from muxrec.history import add_histories
from muxrec.pipelines.io import replacing, write_parquet
from muxrec.ray_env import ensure_ray
from muxrec.spec import FeatureSpec, ModelInputs, load_spec

SPEC_FILE = "spec.yaml"
VOCAB_FILE = "vocabulary.json"
STATS_FILE = "stats.json"
_ROWS_PER_BLOCK = 20_000


@dataclass(frozen=True)
class PreparedData:
    root: Path
    spec: FeatureSpec
    vocab: Vocabulary
    stats: dict

    @property
    def inputs(self) -> ModelInputs:
        return ModelInputs.from_spec(self.spec, self.vocab.num_embeddings())

    def split_dir(self, split: str) -> Path:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; splits: {list(SPLITS)}")
        return self.root / split

    def positive_rates(self, split: str = "train") -> dict[str, float]:
        """Each label column's positive rate in `split`, as prepare measured it."""
        rates = self.stats["splits"][split]
        return {c: rates[f"{c}_rate"] for c in self.spec.label_columns if rates.get(f"{c}_rate") is not None}

    def read(self, split: str) -> pa.Table:
        return pads.dataset(self.split_dir(split), format="parquet").to_table()

    @classmethod
    def load(cls, root: str | Path) -> PreparedData:
        root = Path(root).resolve()  # Ray workers run in other folders
        if not (root / VOCAB_FILE).is_file():
            raise DataError(f"{root} holds no prepared data; run `muxrec prepare --spec <spec.yaml>` first")
        spec = load_spec(root / SPEC_FILE)
        vocab = Vocabulary.load(root / VOCAB_FILE)
        if vocab.spec_fingerprint != spec.fingerprint():
            raise DataError(f"{root}: the vocabulary does not match spec.yaml; re-run prepare")
        return cls(root, spec, vocab, json.loads((root / STATS_FILE).read_text()))


def _rows_of(table: pa.Table, split: str) -> pa.Table:
    return table.filter(pc.equal(table[SPLIT_COLUMN], split)).drop_columns([SPLIT_COLUMN])


def _blocks(table: pa.Table) -> list[pa.Table]:
    return [table.slice(i, _ROWS_PER_BLOCK) for i in range(0, max(table.num_rows, 1), _ROWS_PER_BLOCK)]


def prepare(spec: FeatureSpec, out_root: str | Path, raw: pa.Table | None = None) -> PreparedData:
    """Run preprocessing for `spec` into out_root/<spec.name>/ and return the result."""
    out_root = Path(out_root)
    raw = add_histories(load_source(spec.source) if raw is None else raw, spec)  # needs every row at once
    raw = with_row_numbers(raw)  # before the blocks are cut: split rules and error messages read them
    derive(raw.slice(0, 0), spec)  # schema errors (missing columns, wrong types) before any Ray work
    ensure_ray()
    try:
        derived = ray.data.from_arrow(_blocks(raw)).map_batches(
            derive, fn_kwargs={"spec": spec}, batch_format="pyarrow", batch_size=None).materialize()
        train = derived.map_batches(_rows_of, fn_kwargs={"split": "train"}, batch_format="pyarrow", batch_size=None)
        counts = pa.concat_tables(ray.get(train.map_batches(
            count_values, fn_kwargs={"spec": spec}, batch_format="pyarrow", batch_size=None).to_arrow_refs()))
        stats = pa.concat_tables(ray.get(train.map_batches(
            moments, fn_kwargs={"spec": spec}, batch_format="pyarrow", batch_size=None).to_arrow_refs()))
        sketches = pa.concat_tables(ray.get(train.map_batches(
            quantile_sketch, fn_kwargs={"spec": spec}, batch_format="pyarrow", batch_size=None).to_arrow_refs()))
        vocab = Vocabulary.fit(spec, counts, stats, sketches)
        encoded = derived.map_batches(encode, fn_kwargs={"spec": spec, "vocab": vocab},
                                      batch_format="pyarrow", batch_size=None).materialize()

        summary = {"spec": spec.name, "spec_fingerprint": spec.fingerprint(), "splits": {}}
        with replacing(out_root / spec.name) as staging:
            for split in SPLITS:
                part = encoded.map_batches(_rows_of, fn_kwargs={"split": split}, batch_format="pyarrow",
                                           batch_size=None)
                write_parquet(part, staging / split)
                table = pads.dataset(staging / split, format="parquet").to_table(columns=spec.label_columns)
                summary["splits"][split] = {
                    "rows": table.num_rows,
                    **{f"{t}_rate": (pc.mean(table[t]).as_py() if table.num_rows else None) for t in spec.label_columns},
                }
            (staging / SPEC_FILE).write_text(spec.to_yaml())
            vocab.save(staging / VOCAB_FILE)
            (staging / STATS_FILE).write_text(json.dumps(summary, indent=1))
    except Exception as err:  # Ray re-raises task errors wrapped; surface ours as they are.
        ours = find_muxrec_error(err)
        if ours is not None and ours is not err:
            raise ours from None
        raise
    return PreparedData.load(out_root / spec.name)


def prepare_cached(spec: FeatureSpec, out_root: str | Path) -> PreparedData:
    """Reuse out_root/<spec.name> when it was prepared from this exact spec, else prepare."""
    root = Path(out_root) / spec.name
    try:
        prepared = PreparedData.load(root)
        if prepared.spec.fingerprint() == spec.fingerprint():
            return prepared
    except (MuxrecError, OSError):
        pass
    return prepare(spec, out_root)
