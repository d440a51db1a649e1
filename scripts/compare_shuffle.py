"""`muxrec prepare` under Ray Data's two shuffle strategies, in one window: seconds, and the same output.

    python scripts/compare_shuffle.py --spec configs/ml-100k-history.yaml --spec configs/synthetic.yaml
    python scripts/compare_shuffle.py --spec configs/synthetic-large.yaml --rows 500000

Each spec is prepared once per strategy per round, the order of the strategies alternating between
rounds (the first prepare of a process also pays Ray Data's warm-up). `--rows` overrides a synthetic
source's row count. Prints a line per prepare and one JSON object last: seconds per spec and strategy,
and whether the Parquet rows and the vocabulary came out identical. Why muxrec picks the sort-based
shuffle: muxrec/ray_env.py, docs/benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from ray.data.context import ShuffleStrategy

from muxrec.ray_env import SHUFFLE_ENV, ensure_ray
from muxrec.spec import load_spec, parse_spec

STRATEGIES = (ShuffleStrategy.SORT_SHUFFLE_PULL_BASED, ShuffleStrategy.SHUFFLE_V2)


def same_output(a: Path, b: Path) -> bool:
    splits = [d.name for d in a.iterdir() if d.is_dir()]
    return (all(pq.read_table(a / s).equals(pq.read_table(b / s)) for s in splits)
            and (a / "vocabulary.json").read_bytes() == (b / "vocabulary.json").read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", action="append", required=True, help="a spec YAML (repeatable)")
    parser.add_argument("--rows", type=int, help="rows of a synthetic source")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from muxrec.pipelines.prepare import prepare

    ensure_ray()
    specs = []
    for path in args.spec:
        data = load_spec(path).model_dump(mode="json")
        if args.rows and data["source"]["loader"] == "synthetic":
            data["source"]["options"]["rows"] = args.rows
        specs.append(parse_spec(data))
    seconds: dict[str, dict[str, list[float]]] = {s.name: {st.value: [] for st in STRATEGIES} for s in specs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for strategy in STRATEGIES if r % 2 == 0 else STRATEGIES[::-1]:
                os.environ[SHUFFLE_ENV] = strategy.value  # read by ensure_ray, which prepare calls
                for spec in specs:
                    t0 = time.perf_counter()
                    prepare(spec, Path(tmp) / f"{strategy.value}-{r}")
                    took = round(time.perf_counter() - t0, 2)
                    seconds[spec.name][strategy.value].append(took)
                    print(f"round {r}: {spec.name} with {strategy.value}: {took} s", flush=True)
        identical = {s.name: same_output(Path(tmp) / f"{STRATEGIES[0].value}-0" / s.name,
                                         Path(tmp) / f"{STRATEGIES[1].value}-0" / s.name) for s in specs}
    print(json.dumps({"rows": args.rows, "seconds": seconds, "identical": identical}))


if __name__ == "__main__":
    main()
