"""Precision@k and noise ranks of OptFS and QuickSelection on the synthetic set, per seed (not a test).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/measure_selection.py --rows 50000 --seeds 1,2,3,7

k = the planted informative fields among the ranked ones (SyntheticTruth.informative); "noise last": the
three noise fields take the last three places. One JSON line per (method, seed).
"""

from __future__ import annotations

import argparse
import json
import time

from muxrec.benchmarks.select import planted
from muxrec.data.synthetic import SyntheticConfig, generate
from muxrec.pipelines.optfs import optfs_table
from muxrec.pipelines.quickselection import quickselection_table
from tests.helpers import fitted, inputs_for, synthetic_spec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--seeds", default="1,2,3,7")
    args = parser.parse_args()
    for seed in (int(s) for s in args.seeds.split(",")):
        spec = synthetic_spec(rows=args.rows, seed=seed)
        raw, truth = generate(SyntheticConfig(**spec.source.options))
        vocab, encoded = fitted(spec, raw)
        inputs = inputs_for(spec, vocab)
        for method, run in (("optfs", optfs_table), ("quickselection", quickselection_table)):
            t0 = time.perf_counter()
            ranking = run(encoded["train"], inputs, seed=0)
            print(json.dumps({"method": method, "data_seed": seed, "rows": encoded["train"].num_rows,
                              **planted(ranking, truth), "seconds": round(time.perf_counter() - t0, 1),
                              "ranking": list(ranking.names)}))


if __name__ == "__main__":
    main()
