"""`muxrec bench hiformer`: what Hiformer's two serving tricks buy and cost.

    muxrec bench hiformer --dataset ml-100k --json

Reads the models `muxrec bench ctr` trained for configs/models/hiformer.yaml (full composite
projections) and hiformer-fast.yaml (low-rank projections, pruned last layer), and times four
variants in one interleaved run on one CPU thread:

    full            full rank, every token computed in the last layer
    full+prune      the same weights, only the task token computed in the last layer
    lowrank         the low-rank model with its last layer unpruned
    lowrank+prune   the low-rank model as shipped

Pruning keeps the weights, so its AUC cost is measured as the largest change of any test prediction
(it should be float rounding); the low-rank AUC cost is the difference of the two trained models'
mean test AUC over the benchmark's seeds. Writes docs/benchmarks/hiformer-<dataset>.md.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from muxrec.artifacts import ArtifactRegistry
from muxrec.errors import ConfigError
from muxrec.models import EncodedRows
from muxrec.models.serialization import load_model
from muxrec.benchmarks.ctr import LATENCY_BATCHES
from muxrec.benchmarks.environment import commit, machine
from muxrec.pipelines.evaluate import split_rows

FULL, FAST = "hiformer", "hiformer-fast"


def _result(out_dir: Path, dataset: str, name: str) -> dict[str, Any]:
    path = out_dir / "results" / f"ctr-{dataset}-{name}.json"
    if not path.is_file():
        raise ConfigError(f"no benchmark result {path}; run `muxrec bench ctr --dataset {dataset} --model {name}` first")
    return json.loads(path.read_text())


@torch.inference_mode()
def _interleaved_latency(models: dict[str, torch.nn.Module], rows: EncodedRows, reps: int) -> dict[str, dict]:
    """Median ms per variant and batch size; variants alternate within each repetition, so drift hits all."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: dict[str, dict] = {name: {} for name in models}
        for size in LATENCY_BATCHES:
            batch = rows.take(torch.arange(min(size, len(rows))))
            samples: dict[str, list[float]] = {name: [] for name in models}
            for rep in range(reps + 5):
                for name, model in models.items():
                    t0 = time.perf_counter()
                    model(batch)
                    if rep >= 5:  # the first five are warm-up
                        samples[name].append(time.perf_counter() - t0)
            for name in models:
                out[name][f"latency_ms_b{size}"] = round(statistics.median(samples[name]) * 1000, 3)
        return out
    finally:
        torch.set_num_threads(threads)


def bench_hiformer(dataset: str, registry: ArtifactRegistry, out_dir: Path, reps: int = 100) -> dict[str, Any]:
    full_result, fast_result = _result(out_dir, dataset, FULL), _result(out_dir, dataset, FAST)
    # The first seed's model of each; versions are "<name>/<version>" refs.
    full = load_model(registry.open(*full_result["per_seed"][0]["version"].split("/")))
    fast = load_model(registry.open(*fast_result["per_seed"][0]["version"].split("/")))
    rows = EncodedRows(split_rows(full, "test"), full.inputs)

    variants: dict[str, torch.nn.Module] = {}
    for label, loaded in (("full", full), ("lowrank", fast)):
        for prune in (False, True):
            model = load_model(loaded.version).model.eval()
            model.prune_last_layer = prune  # a serving switch: the same weights either way
            variants[label + ("+prune" if prune else "")] = model
    latency = _interleaved_latency(variants, rows, reps)

    with torch.inference_mode():
        drift = max((variants[f"{label}+prune"](rows.take(torch.arange(len(rows)))) -
                     variants[label](rows.take(torch.arange(len(rows))))).abs().max().item()
                    for label in ("full", "lowrank"))
    base = latency["full"]
    table = []
    for name, lat in latency.items():
        trained = fast_result if name.startswith("lowrank") else full_result
        table.append({
            "variant": name, "test_auc": trained["test_auc"], "test_auc_std": trained["test_auc_std"],
            "params": trained["params"], **lat,
            **{f"speedup_b{size}": round(base[f"latency_ms_b{size}"] / lat[f"latency_ms_b{size}"], 2)
               for size in LATENCY_BATCHES},
        })
    result = {
        "dataset": dataset, "variants": table,
        "lowrank_auc_cost": round(full_result["test_auc"] - fast_result["test_auc"], 5),
        "prune_max_abs_logit_change": drift, "seeds": full_result["seeds"],
        "commit": commit(), "machine": machine(),
    }
    _write(result, out_dir / f"hiformer-{dataset}.md")
    return result


def _write(result: dict[str, Any], path: Path) -> None:
    dataset = result["dataset"]
    lines = [
        f"# Hiformer serving tricks: {dataset}",
        "",
        f"Made by `muxrec bench hiformer --dataset {dataset} --json` after `muxrec bench ctr --dataset {dataset} "
        "--model hiformer` and `--model hiformer-fast`. Latency: median CPU forward pass on one thread, "
        "variants interleaved in one run; speed-up is relative to `full` in that run. AUC: mean ± std of test AUC "
        f"over seeds {result['seeds']} (pruning keeps the weights, so it shares its model's AUC).",
        "",
        "| variant | test AUC | params | ms / 100 | ms / 1000 | speed-up / 100 | speed-up / 1000 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["variants"]:
        lines.append(f"| {r['variant']} | {r['test_auc']:.4f} ± {r['test_auc_std']:.4f} | {r['params']:,} | "
                     f"{r['latency_ms_b100']:.2f} | {r['latency_ms_b1000']:.2f} | {r['speedup_b100']:.2f}x | "
                     f"{r['speedup_b1000']:.2f}x |")
    lines += [
        "",
        f"- Low-rank AUC cost (full minus low-rank, mean test AUC): {result['lowrank_auc_cost']:+.4f}.",
        f"- Pruning changes no prediction beyond float rounding: largest |logit change| on the test split "
        f"{result['prune_max_abs_logit_change']:.2e}.",
        f"- Commit {result['commit'] or '-'}, {result['machine']['cpus']} CPUs, torch {result['machine']['torch']}.",
        "",
    ]
    path.write_text("\n".join(lines))
