"""Export prepared rows for the `outrank` package and print muxrec's OutRank ranking of the same columns.

The peer runs in its own virtualenv, never as a dependency of muxrec:

    python3 -m venv /tmp/orvenv && /tmp/orvenv/bin/pip install outrank==0.97.5
    PYTHONPATH=. .venv/bin/python scripts/compare_outrank.py --prepared runs/prepared/synthetic --out /tmp/or/data
    /tmp/orvenv/bin/python scripts/outrank_peer_run.py --task ranking --data_path /tmp/or/data \
        --data_source csv-raw --heuristic MI-numba-randomized --target_ranking_only True --label_column label \
        --subsampling 1 --minibatch_size 100000 --num_threads 1 --include_noise_baseline_features True \
        --output_folder /tmp/or/out
    grep ^label /tmp/or/out/pairwise_ranks.tsv | sort -t$'\\t' -k3 -g -r

The CSV holds the single-valued id columns (encoded ids) and the numeric columns cut into the 32
equal-frequency bins muxrec's OutRank counts, so both count the same values; list features (tags,
titles, histories) are left out: the package reads one value per cell. Label: the spec's first task.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from muxrec.pipelines.prepare import PreparedData
from muxrec.pipelines.selection import numeric_boundaries, numeric_sketch, outrank_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, required=True, help="a prepared data folder (runs/prepared/<spec>)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write data.csv into")
    args = parser.parse_args()
    prepared = PreparedData.load(args.prepared)
    inputs, train = prepared.inputs, prepared.read("train")
    task = inputs.tasks[0]
    single = [f for f in inputs.pooled if not pa.types.is_list(train.schema.field(f).type)]
    numeric = tuple(inputs.numeric)
    bounds = numeric_boundaries(numeric_sketch(train, numeric), numeric)
    out = train.select([*single, *numeric])
    for name in numeric:
        x = out[name].to_numpy(zero_copy_only=False).astype(np.float64)
        out = out.set_column(out.schema.get_field_index(name), name,
                             pa.array(np.searchsorted(np.asarray(bounds[name]), x, side="right")))
    out = out.append_column("label", pc.cast(train[task], pa.int64()))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "data.csv", "wb") as fh:  # the package splits the header on commas: no quotes
        fh.write((",".join(out.column_names) + "\n").encode())
        pcsv.write_csv(out, fh, pcsv.WriteOptions(include_header=False))
    ours = outrank_table(train, inputs, seed=0)
    print(json.dumps({"rows": out.num_rows, "muxrec_outrank": [f.name for f in ours.features if f.name in out.column_names]}))


if __name__ == "__main__":
    main()
