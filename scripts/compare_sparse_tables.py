"""Dense Adam on every table vs lazy Adam on the large ones, in one process, alternating: rows/s and quality.

    python scripts/compare_sparse_tables.py --prepared runs/bench-pipeline-2000000/prepared/bench-pipeline-2000000

One training pass of a model (default DeepFM, configs/models/deepfm.yaml) over the first --rows training
rows of a prepared folder, once with `train.sparse_table_rows` 0 (every table dense) and once with the
default, repeated --rounds times; then validation AUC on the first 50,000 validation rows. Prints a line
per pass and one JSON object last. Why: docs/training.md, "Large tables".
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from muxrec.config import SPARSE_TABLE_ROWS, load_model_file
from muxrec.models import EncodedRows, build_model, make_config
from muxrec.pipelines.loop import Objective, evaluate_rows, make_optimizer, train_epoch
from muxrec.pipelines.prepare import PreparedData
from muxrec.pipelines.sparse import sparse_tables

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", type=Path, required=True, help="a folder written by `muxrec prepare`")
    ap.add_argument("--model", default="deepfm", help="configs/models/<model>.yaml")
    ap.add_argument("--rows", type=int, default=200_000, help="training rows per pass")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prepared = PreparedData.load(args.prepared)
    model_file = load_model_file(REPO / "configs" / "models" / f"{args.model}.yaml")
    rows = EncodedRows(prepared.read("train").slice(0, args.rows), prepared.inputs)
    valid = EncodedRows(prepared.read("valid").slice(0, 50_000), prepared.inputs)
    runs: dict[str, list[dict]] = {"dense": [], "lazy": []}
    for _ in range(args.rounds):
        for how, limit in (("dense", 0), ("lazy", SPARSE_TABLE_ROWS)):
            cfg = replace(model_file.train, sparse_table_rows=limit)
            torch.manual_seed(cfg.seed)
            model = build_model(model_file.architecture, make_config(model_file.architecture, model_file.model),
                                prepared.inputs)
            optimizer = make_optimizer(model, cfg)
            objective = Objective(prepared.inputs, prepared.positive_rates("train"))
            t0 = time.perf_counter()
            loss = train_epoch(model, model, rows, cfg, 0, optimizer, objective=objective)
            seconds = time.perf_counter() - t0
            auc = evaluate_rows(model, valid, prepared.inputs, cfg.eval_batch_size)["auc"]
            run = {"rows_per_s": round(len(rows) / seconds), "loss": round(loss, 5), "valid_auc": round(auc, 5),
                   "lazy_tables": len(sparse_tables(model))}
            runs[how].append(run)
            print(f"{how}: {run}", flush=True)
    print(json.dumps({"prepared": str(args.prepared), "model": args.model, "rows": len(rows), **runs}))


if __name__ == "__main__":
    main()
