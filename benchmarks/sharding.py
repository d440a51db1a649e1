"""`muxrec bench sharding`: training with TorchRec's sharded tables against plain data parallelism.

    muxrec bench sharding --dataset synthetic-large --model deepfm --epochs 1 --json

One fresh Ray Train run per layout, one after the other in one window: one worker (nothing sharded),
two workers under DDP (each holds every table), and two workers under TorchRec's
DistributedModelParallel (pipelines/sharding.py) table-wise, row-wise, column-wise and data-parallel.
Per layout: samples/s of the fastest epoch (training rows / the epoch's seconds, validation included),
each worker process's peak resident memory (`ru_maxrss`, everything the process loaded: torch, Ray,
the data, the model), the tables' optimizer, and the valid AUC after `--epochs` epochs.

Sequence features are dropped from the spec for every layout alike: a sharded table serves pooled bags
only. The table optimizer differs by layout (Adam unsharded; fused row-wise Adagrad for model-parallel
tables, whose CPU kernels have no Adam), so AUCs compare layouts as a user would run them.
The result goes to docs/benchmarks/results/sharding-<dataset>-<model>.json, the report to
docs/benchmarks/sharding-<dataset>.md and .png.
"""

from __future__ import annotations

import datetime
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from muxrec.benchmarks.embedding import table_bytes
from muxrec.benchmarks.environment import commit, machine, write_result
from muxrec.config import load_model_file
from muxrec.errors import ConfigError
from muxrec.models import build_model, make_config
from muxrec.pipelines.prepare import prepare_cached
from muxrec.pipelines.train import TrainJob, fit
from muxrec.spec import FeatureSpec, load_spec, parse_spec

LAYOUTS = [("none", 1), ("none", 2), ("table_wise", 2), ("row_wise", 2), ("column_wise", 2), ("data_parallel", 2)]


def pooled_only(spec: FeatureSpec) -> FeatureSpec:
    """`spec` without its sequence features, under its own name (so its prepared data is its own)."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    data["features"] = [f for f in data["features"] if f["kind"] != "sequence"]
    data["name"] = f"{spec.name}-pooled"
    return parse_spec(data)


def bench_sharding(dataset: str, model: str, config_dir: Path, runs: Path, out_dir: Path | None, epochs: int = 1,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    spec_path = config_dir / f"{dataset}.yaml"
    if not spec_path.is_file():
        raise ConfigError(f"no dataset spec {spec_path}; datasets: {sorted(p.stem for p in config_dir.glob('*.yaml'))}")
    prepared = prepare_cached(pooled_only(load_spec(spec_path)), runs / "prepared")
    mf = load_model_file(config_dir / "models" / f"{model}.yaml")
    cfg = make_config(mf.architecture, mf.model)
    train_rows = prepared.stats["splits"]["train"]["rows"]
    rows = []
    for sharding, workers in LAYOUTS:
        train_cfg = replace(mf.train, epochs=epochs, patience=epochs, num_workers=workers, sharding=sharding)
        job = TrainJob(str(prepared.root), mf.architecture, cfg, train_cfg)
        state, _, wall = fit(job, runs / "ray", f"bench-sharding-{dataset}-{model}-{sharding}-{workers}", fresh=True)
        seconds = min(h["epoch_seconds"] for h in state["history"])
        row = {"sharding": sharding, "workers": workers, "table_optimizer": train_cfg.table_optimizer,
               "tables": state.get("sharding", {}).get("tables"), "epoch_seconds": round(seconds, 2),
               "samples_per_s": round(train_rows / seconds), "valid_auc": round(state["best_valid_auc"], 4),
               "peak_rss_mb": [round(b / 2**20) for b in state["peak_rss_bytes"]], "wall_seconds": round(wall, 1)}
        rows.append(row)
        if progress:
            progress(f"{sharding} on {workers} worker(s): {row['samples_per_s']:,} samples/s, peak RSS "
                     f"{row['peak_rss_mb']} MiB, valid AUC {row['valid_auc']:.4f}")
    result = {"benchmark": "sharding", "dataset": dataset, "model": model, "epochs": epochs, "train_rows": train_rows,
              "table_bytes": table_bytes(build_model(mf.architecture, cfg, prepared.inputs)), "rows": rows, "machine": machine(),
              "commit": commit(), "date": datetime.date.today().isoformat()}
    if out_dir is not None:
        write_result(out_dir, f"sharding-{dataset}-{model}", result)
        write_report(result, out_dir)
    return result


def write_report(result: dict[str, Any], out_dir: Path) -> None:
    name = f"sharding-{result['dataset']}"
    lines = [f"# Sharded training: {result['model']} on {result['dataset']}", "",
             f"`muxrec bench sharding --dataset {result['dataset']} --model {result['model']} --epochs "
             f"{result['epochs']}` (commit {result['commit']}, {result['date']}, {result['machine']['cpus']} CPUs). "
             f"{result['train_rows']:,} training rows; the model's tables hold {result['table_bytes'] / 2**20:.1f} MiB "
             f"as float32. Sequence features dropped for every layout (sharded tables serve pooled bags only).", "",
             "| layout | workers | tables | table optimizer | samples/s | peak RSS per worker (MiB) | valid AUC |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        tables = ", ".join(f"{n} {k}" for k, n in (r["tables"] or {}).items()) or "-"
        lines.append(f"| {r['sharding']} | {r['workers']} | {tables} | {r['table_optimizer']} | {r['samples_per_s']:,} "
                     f"| {', '.join(map(str, r['peak_rss_mb']))} | {r['valid_auc']:.4f} |")
    lines += ["", f"![samples/s and peak memory per layout]({name}.png)", ""]
    (out_dir / f"{name}.md").write_text("\n".join(lines))
    _plot(result, out_dir / f"{name}.png")


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['sharding']}\n{r['workers']} worker(s)" for r in result["rows"]]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    speed.bar(labels, [r["samples_per_s"] for r in result["rows"]], color="tab:blue")
    speed.set_ylabel("samples/s (fastest epoch)")
    memory.bar(labels, [max(r["peak_rss_mb"]) for r in result["rows"]], color="tab:orange")
    memory.set_ylabel("peak RSS of the largest worker (MiB)")
    for ax in (speed, memory):
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{result['model']} on {result['dataset']}: sharded vs not")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

