"""`muxrec bench ctr`: the fixed CTR protocol (prepare + train + evaluate) as one measured run.

Each run's figures are saved under docs/benchmarks/results/ and the per-dataset table
docs/benchmarks/ctr-<dataset>.md is rebuilt from all saved runs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from muxrec.artifacts import ArtifactRegistry
from muxrec.config import load_model_file
from muxrec.errors import ConfigError
from muxrec.pipelines.prepare import prepare_cached
from muxrec.pipelines.train import TrainJob, train
from muxrec.spec import load_spec


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(terse=True), "python": platform.python_version(),
            "torch": torch.__version__.split("+")[0]}


def commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def bench_ctr(dataset: str, model: str, seed: int, config_dir: Path, runs: Path, registry: ArtifactRegistry,
              out_dir: Path | None) -> dict[str, Any]:
    spec_path = config_dir / f"{dataset}.yaml"
    model_path = config_dir / "models" / f"{model}.yaml"
    if not spec_path.is_file():
        known = sorted(p.stem for p in config_dir.glob("*.yaml"))
        raise ConfigError(f"no dataset spec {spec_path}; datasets: {known}")
    if not model_path.is_file():
        known = sorted(p.stem for p in (config_dir / "models").glob("*.yaml"))
        raise ConfigError(f"no model config {model_path}; models with configs: {known}")
    spec = load_spec(spec_path)
    prepared = prepare_cached(spec, runs / "prepared")
    mf = load_model_file(model_path)
    job = TrainJob(str(prepared.root), mf.architecture, mf.model, replace(mf.train, seed=seed))
    name = f"bench-{dataset}-{model}"
    result = train(job, registry, name, runs / "ray", run_name=f"{name}-seed{seed}", fresh=True)
    m = result.metrics
    row = {
        "dataset": dataset, "model": model, "seed": seed,
        "test_auc": round(m["test"]["auc"], 5), "test_logloss": round(m["test"]["logloss"], 5),
        "valid_auc": round(m["valid"]["auc"], 5), "valid_logloss": round(m["valid"]["logloss"], 5),
        "epochs": m["epochs"], "best_epoch": m["best_epoch"], "train_seconds": m["train_seconds"],
        "wall_seconds": m["wall_seconds"], "params": m["params"], "version": result.version.ref,
        "commit": commit(), "machine": machine(),
    }
    if out_dir is not None:
        save_result(row, out_dir)
    return row


def save_result(row: dict[str, Any], out_dir: Path) -> None:
    results = out_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"ctr-{row['dataset']}-{row['model']}-seed{row['seed']}.json").write_text(json.dumps(row, indent=1))
    rows = [json.loads(p.read_text()) for p in sorted(results.glob(f"ctr-{row['dataset']}-*.json"))]
    rows.sort(key=lambda r: (-r["test_auc"], r["model"], r["seed"]))
    lines = [
        f"# CTR benchmark: {row['dataset']}",
        "",
        f"Protocol: configs/{row['dataset']}.yaml. Test figures are for the checkpoint with the best validation AUC.",
        "Made by `muxrec bench ctr --dataset <dataset> --model <model> --seed <seed> --json`.",
        "",
        "| model | seed | test AUC | test logloss | valid AUC | epochs (best) | train s | params | commit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['seed']} | {r['test_auc']:.4f} | {r['test_logloss']:.4f} | "
                     f"{r['valid_auc']:.4f} | {r['epochs']} ({r['best_epoch']}) | {r['train_seconds']:.1f} | "
                     f"{r['params']:,} | {r['commit'] or '-'} |")
    (out_dir / f"ctr-{row['dataset']}.md").write_text("\n".join(lines) + "\n")
