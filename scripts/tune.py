#!/usr/bin/env python
"""Hyper-parameter selection on the VALIDATION split, in-process (no Ray cluster), for development.

    python scripts/tune.py --prepared runs/prepared/ml-100k --model deepfm \
        --set model.dropout=0.1 --set train.lr=2e-3 --seeds 2026,2027

Runs the same epoch loop as the Ray Train workers (muxrec.pipelines.loop) with early stopping on
validation AUC and prints one JSON line per seed. It never reads the test split: choose settings
here, then measure them once with `muxrec bench ctr`. Prepare the data first with `muxrec prepare`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from muxrec.config import TrainConfig, load_model_file, model_file, with_overrides
from muxrec.models import EncodedRows, build_model, make_config
from muxrec.pipelines.loop import fit_in_process
from muxrec.pipelines.prepare import PreparedData

REPO = Path(__file__).resolve().parent.parent


def run(prepared: PreparedData, model_name: str, model_cfg: Any, train_cfg: TrainConfig,
        train_rows: EncodedRows, valid_rows: EncodedRows) -> dict:
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_name, model_cfg, prepared.inputs)
    cpu0 = time.process_time()
    fitted = fit_in_process(model, train_rows, valid_rows, prepared.inputs, train_cfg,
                            prepared.positive_rates("train"))
    return {"valid_auc": round(fitted.valid_auc, 5), "best_epoch": fitted.best_epoch, "epochs": len(fitted.history),
            "seconds": fitted.seconds, "cpu_seconds": round(time.process_time() - cpu0, 1),
            "history": [round(a, 4) for a in fitted.history]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepared", type=Path, required=True, help="a folder written by `muxrec prepare`")
    p.add_argument("--model", required=True, help="a configs/models/<model>.yaml name or an architecture")
    p.add_argument("--config", type=Path, default=None, help="default configs/models/<model>.yaml if present")
    p.add_argument("--set", action="append", default=[], help="model.<field>=<value> or train.<field>=<value>")
    p.add_argument("--seeds", default="2026")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    mf = load_model_file(args.config) if args.config else model_file(REPO / "configs", args.model)
    mf = with_overrides(mf, args.set)
    model_cfg = make_config(mf.architecture, mf.model)
    prepared = PreparedData.load(args.prepared)
    train_rows = EncodedRows(prepared.read("train"), prepared.inputs)
    valid_rows = EncodedRows(prepared.read("valid"), prepared.inputs)
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = replace(mf.train, seed=seed)
        result = run(prepared, mf.architecture, model_cfg, cfg, train_rows, valid_rows)
        print(json.dumps({"model": args.model, "seed": seed, "set": args.set, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
