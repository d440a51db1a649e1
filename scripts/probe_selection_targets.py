"""Why the synthetic selection targets resist OptFS and QuickSelection: two probes (not a test, not the bench).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/probe_selection_targets.py --seeds 1,2,3

Synthetic data seeds other than the bench's (7), 50k rows, train rows and ground truth only.

* optfs-no-copies: in the generator a title is a function of its item and a history of its user, so given
  item_id and user_id they add nothing, and a method that prices every field may drop one of each pair. OptFS
  on a spec without title and history, precision at the 11 planted fields left.
* quickselection shuffled: the nine fields that only the label links to anything (site, ad_type, region,
  device, daypart, slot, price, score, tags) replaced by row-shuffled copies of themselves: the same marginals,
  no link to anything. If the precision and their scores stay where they were, an unsupervised method orders
  them by their marginals, and cannot tell them from the noise fields.

One JSON line per (probe, seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pyarrow as pa

from muxrec.benchmarks.select import planted
from muxrec.data.synthetic import SyntheticConfig, generate
from muxrec.pipelines.optfs import optfs_table
from muxrec.pipelines.quickselection import quickselection_table
from muxrec.selection import subset_spec
from tests.helpers import fitted, inputs_for, synthetic_spec

COPIES = ("title", "history")
LABEL_ONLY = ("site", "ad_type", "region", "device", "daypart", "slot", "price", "score", "tags")


def shuffled(table: pa.Table, names: tuple[str, ...], seed: int) -> pa.Table:
    """`table` with each of `names` permuted over the rows (its own permutation per column)."""
    rng = np.random.default_rng(seed)
    for name in names:
        order = pa.array(rng.permutation(table.num_rows))
        table = table.set_column(table.schema.get_field_index(name), name, table[name].take(order))
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args()
    for seed in (int(s) for s in args.seeds.split(",")):
        spec = synthetic_spec(rows=args.rows, seed=seed)
        raw, truth = generate(SyntheticConfig(**spec.source.options))

        sub = subset_spec(spec, [f.name for f in spec.features if f.name not in COPIES], f"{spec.name}-no-copies")
        vocab, encoded = fitted(sub, raw)
        ranking = optfs_table(encoded["train"], inputs_for(sub, vocab), seed=0)
        left = dataclasses.replace(truth, informative=tuple(n for n in truth.informative if n not in COPIES))
        print(json.dumps({"probe": "optfs-no-copies", "data_seed": seed, **planted(ranking, left),
                          "ranking": list(ranking.names)}), flush=True)

        vocab, encoded = fitted(spec, raw)
        inputs = inputs_for(spec, vocab)
        for data, table in (("original", encoded["train"]), ("shuffled", shuffled(encoded["train"], LABEL_ONLY, seed))):
            ranking = quickselection_table(table, inputs, seed=0)
            print(json.dumps({"probe": f"quickselection-{data}", "data_seed": seed, **planted(ranking, truth),
                              "scores": {s.name: round(s.score, 4) for s in ranking.features}}), flush=True)


if __name__ == "__main__":
    main()
