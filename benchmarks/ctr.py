"""`muxrec bench ctr`: the fixed CTR protocol (prepare + train + evaluate), per model and seed.

    muxrec bench ctr --dataset ml-100k --model all --seeds 2026,2027,2028 --json

For each model (a configs/models/<name>.yaml) and seed: train (in this process, Ray Train's local
mode: `IN_PROCESS`), keep the checkpoint with the best validation AUC, evaluate it on the test split.
Per model: mean and std over seeds of test AUC / logloss, params, training seconds, and CPU forward
latency for batches of 100 and 1000 test rows. Hyper-parameters come from the YAML files (never tuned on the test split); seeds only change the
initialisation and shuffling. Results are saved under docs/benchmarks/results/ and the dataset's
report (docs/benchmarks/<dataset>.md and <dataset>.png) is rebuilt from all saved results.
"""

from __future__ import annotations

import collections
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from muxrec.artifacts import ArtifactRegistry
from muxrec.benchmarks.environment import commit, machine, write_result
from muxrec.config import ModelFile, load_model_file, with_overrides
from muxrec.errors import ConfigError
from muxrec.models import EncodedRows, build_model, make_config
from muxrec.models.serialization import load_model
from muxrec.pipelines.prepare import PreparedData, prepare_cached
from muxrec.pipelines.train import TrainJob, train
from muxrec.spec import load_spec

# Test AUC of a well-tuned peer library on this exact ML-100K protocol (one seed, embedding dim 16),
# as quoted in the model-zoo issue. Shown beside ours; never used to choose anything.
PEER_ML100K = {"lr": 0.769, "fm": 0.772, "wide_deep": 0.781, "deepfm": 0.782, "dcn_v2": 0.781, "autoint": 0.778,
               "final_mlp": 0.783}
LATENCY_BATCHES = (100, 1000)
# Protocol runs train in this process: the same loop and results as on a Ray Train worker, without a worker
# to start for each model and seed (~15 s each on 2 cores). `--set train.num_workers=1` (or more) overrides it.
IN_PROCESS = "train.num_workers=0"


def model_names(config_dir: Path, model: str) -> list[str]:
    """`all` -> every configs/models/*.yaml, sorted; otherwise the comma-separated names, each with a file."""
    available = sorted(p.stem for p in (config_dir / "models").glob("*.yaml"))
    if model == "all":
        return available
    names = [m.strip() for m in model.split(",") if m.strip()]
    missing = [m for m in names if m not in available]
    if missing or not names:
        raise ConfigError(f"no model config configs/models/{(missing or [model])[0]}.yaml; "
                          f"models with configs: {available}")
    return names


@torch.inference_mode()
def forward_latency(model: torch.nn.Module, rows: EncodedRows, reps: int = 50) -> dict[str, float]:
    """Median forward time (ms) for batches of LATENCY_BATCHES rows, one CPU thread, after warm-up."""
    model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for size in LATENCY_BATCHES:
            batch = rows.take(torch.arange(min(size, len(rows))))
            for _ in range(5):
                model(batch)
            samples = []
            for _ in range(reps):
                t0 = time.perf_counter()
                model(batch)
                samples.append(time.perf_counter() - t0)
            out[f"latency_ms_b{size}"] = round(statistics.median(samples) * 1000, 3)
        return out
    finally:
        torch.set_num_threads(threads)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def bench_model(dataset: str, mf: ModelFile, model_cfg: Any, prepared: PreparedData, seeds: list[int], runs: Path,
                registry: ArtifactRegistry) -> dict[str, Any]:
    """Train `mf` once per seed under the protocol; the aggregate row for the report."""
    per_seed, last = [], None
    for seed in seeds:
        job = TrainJob(str(prepared.root), mf.architecture, model_cfg, replace(mf.train, seed=seed))
        name = f"bench-{dataset}-{mf.name}"
        last = train(job, registry, name, runs / "ray", run_name=f"{name}-seed{seed}", fresh=True)
        m = last.metrics
        per_seed.append({"seed": seed, "test_auc": m["test"]["auc"], "test_logloss": m["test"]["logloss"],
                         "valid_auc": m["valid"]["auc"], "epochs": m["epochs"], "best_epoch": m["best_epoch"],
                         "train_seconds": m["train_seconds"], "version": last.version.ref,
                         **({"search": m["search"]} if "search" in m else {})})
    auc, auc_std = _mean_std([r["test_auc"] for r in per_seed])
    loss, loss_std = _mean_std([r["test_logloss"] for r in per_seed])
    row = {
        "dataset": dataset, "model": mf.name, "architecture": mf.architecture, "seeds": seeds,
        "test_auc": round(auc, 5), "test_auc_std": round(auc_std, 5),
        "test_logloss": round(loss, 5), "test_logloss_std": round(loss_std, 5),
        "valid_auc": round(statistics.fmean(r["valid_auc"] for r in per_seed), 5),
        "params": last.metrics["params"],
        "train_seconds": round(statistics.fmean(r["train_seconds"] for r in per_seed), 1),
        "epochs": round(statistics.fmean(r["epochs"] for r in per_seed), 1),
        **forward_latency(load_model(last.version).model, EncodedRows(prepared.read("test"), prepared.inputs)),
        "per_seed": per_seed, "commit": commit(), "machine": machine(),
    }
    if dataset == "ml-100k" and mf.name in PEER_ML100K:
        row["peer_test_auc"] = PEER_ML100K[mf.name]
    return row


def prepared_dataset(dataset: str, config_dir: Path, runs: Path) -> tuple[Path, PreparedData]:
    """configs/<dataset>.yaml and its prepared data (prepared now unless cached)."""
    spec_path = config_dir / f"{dataset}.yaml"
    if not spec_path.is_file():
        known = sorted(p.stem for p in config_dir.glob("*.yaml"))
        raise ConfigError(f"no dataset spec {spec_path}; datasets: {known}")
    return spec_path, prepare_cached(load_spec(spec_path), runs / "prepared")


def runnable_models(model: str, config_dir: Path, prepared: PreparedData,
                    overrides: Sequence[str]) -> Iterator[tuple[str, ModelFile | None, Any, str]]:
    """(name, model file with overrides, its typed model config, "") per model, or (name, None, None,
    why) when it cannot run on this dataset (e.g. DIN needs a history feature)."""
    for name in model_names(config_dir, model):
        mf = with_overrides(load_model_file(config_dir / "models" / f"{name}.yaml"), overrides)
        try:
            cfg = make_config(mf.architecture, mf.model)
            build_model(mf.architecture, cfg, prepared.inputs)
        except ConfigError as err:
            yield name, None, None, str(err)
            continue
        yield name, mf, cfg, ""


def bench_ctr(dataset: str, model: str, seeds: list[int], config_dir: Path, runs: Path, registry: ArtifactRegistry,
              out_dir: Path | None, overrides: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """One result row per model (or a `skipped` row naming why a model cannot run on this dataset).

    `overrides` (`train.lr=3e-3`, `model.dropout=0.1`) apply to every model's YAML, e.g. a training
    schedule for a dataset unlike the one the YAMLs were set for; they are recorded in each row.
    """
    _, prepared = prepared_dataset(dataset, config_dir, runs)
    for name, mf, model_cfg, skipped in runnable_models(model, config_dir, prepared, [IN_PROCESS, *overrides]):
        if mf is None:
            yield {"dataset": dataset, "model": name, "skipped": skipped}
            continue
        row = bench_model(dataset, mf, model_cfg, prepared, seeds, runs, registry)
        if overrides:
            row["overrides"] = list(overrides)
        if out_dir is not None:
            save_result(row, out_dir)
        yield row


def save_result(row: dict[str, Any], out_dir: Path) -> None:
    write_result(out_dir, f"ctr-{row['dataset']}-{row['model']}", row)
    write_report(row["dataset"], out_dir)


def _saved_rows(dataset: str, out_dir: Path) -> list[dict[str, Any]]:
    saved = (json.loads(p.read_text()) for p in sorted((out_dir / "results").glob(f"ctr-{dataset}-*.json")))
    return [r for r in saved if r["dataset"] == dataset]  # the glob for ml-100k also matches ml-100k-history


def binary_counterpart(dataset: str) -> str | None:
    """ml-100k-graded -> ml-100k: the same protocol trained on the binary label alone."""
    return dataset.replace("-graded", "", 1) if "-graded" in dataset else None


def write_report(dataset: str, out_dir: Path) -> None:
    """docs/benchmarks/<dataset>.md (table) and <dataset>.png (test AUC vs latency) from saved results.

    For a graded dataset the same models' results on its binary counterpart stand beside each row.
    """
    rows = sorted(_saved_rows(dataset, out_dir), key=lambda r: -r["test_auc"])
    if not rows:
        return
    base = binary_counterpart(dataset)
    binary = {r["model"]: r for r in _saved_rows(base, out_dir)} if base else {}
    for r in rows:
        if r["model"] in binary:
            r["binary_test_auc"] = binary[r["model"]]["test_auc"]
    compared = any("binary_test_auc" in r for r in rows)
    peer = any("peer_test_auc" in r for r in rows)
    # The --set most rows were made with heads the report; rows made otherwise are marked.
    usual = list(collections.Counter(tuple(r.get("overrides", [])) for r in rows).most_common(1)[0][0])
    lines = [
        f"# CTR benchmark: {dataset}",
        "",
        f"Protocol and features: `configs/{dataset}.yaml`. Per model, hyper-parameters from "
        "`configs/models/<model>.yaml` (never tuned on the test split); each seed trains with Ray Train and is "
        "evaluated on the test split at its best validation epoch. Mean ± std over seeds. Latency: median "
        "CPU forward pass, one thread, for 100 / 1000 test rows.",
        "",
        f"Made by `muxrec bench ctr --dataset {dataset} --model all --seeds "
        f"{','.join(str(s) for s in rows[0]['seeds'])}"
        + "".join(f" --set {o}" for o in usual) + " --json` (each model's row may come from "
        "its own run).",
        "",
        *([f"Beside each model: its test AUC on `{base}` (same protocol, binary training targets) and the "
           "gain.", ""] if compared else []),
        "| model | test AUC | test logloss | valid AUC | " + ("peer AUC | " if peer else "") +
        (f"{base} AUC | gain | " if compared else "") + "params | train s | ms / 100 | ms / 1000 | seeds | commit |",
        "|---|---|---|---|" + ("---|" if peer else "") + ("---|---|" if compared else "") + "---|---|---|---|---|---|",
    ]
    for r in rows:
        other = r.get("overrides", []) != usual  # made with other --set than the line above
        lines.append(
            f"| {r['model']}{' *' if other else ''} | {r['test_auc']:.4f} ± {r['test_auc_std']:.4f} | {r['test_logloss']:.4f} ± "
            f"{r['test_logloss_std']:.4f} | {r['valid_auc']:.4f} | "
            + (f"{r['peer_test_auc']:.3f} | " if "peer_test_auc" in r else ("- | " if peer else ""))
            + ((f"{r['binary_test_auc']:.4f} | {r['test_auc'] - r['binary_test_auc']:+.4f} | "
                if "binary_test_auc" in r else "- | - | ") if compared else "")
            + f"{r['params']:,} | {r['train_seconds']:.0f} | {r['latency_ms_b100']:.2f} | {r['latency_ms_b1000']:.2f} | "
            f"{len(r['seeds'])} | {r['commit'] or '-'} |")
    for r in rows:
        if r.get("overrides", []) != usual:
            lines += ["", f"\\* {r['model']}: made with `{' '.join('--set ' + o for o in r.get('overrides', [])) or 'no --set'}`."]
    searched = [r for r in rows if any("search" in s for s in r["per_seed"])]
    for r in searched:
        chosen = r["per_seed"][0]["search"]
        lines += ["", f"**{r['model']}** search (seed {r['per_seed'][0]['seed']}): "
                  f"valid AUC {chosen['valid_auc']:.4f} while searching; chosen: `{json.dumps(chosen.get('methods', chosen['chosen']))}`"]
    lines += ["", f"![test AUC against latency]({dataset}.png)", ""]
    (out_dir / f"{dataset}.md").write_text("\n".join(lines))
    _plot(dataset, rows, out_dir / f"{dataset}.png")


def _plot(dataset: str, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    largest = max(r["params"] for r in rows)
    for r in rows:
        size = 40 + 600 * r["params"] / largest
        ax.errorbar(r["latency_ms_b1000"], r["test_auc"], yerr=r["test_auc_std"], fmt="none", ecolor="grey", alpha=0.6)
        ax.scatter(r["latency_ms_b1000"], r["test_auc"], s=size, alpha=0.6)
        ax.annotate(r["model"], (r["latency_ms_b1000"], r["test_auc"]), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)
    peers = [r for r in rows if "peer_test_auc" in r]
    if peers:
        ax.scatter([r["latency_ms_b1000"] for r in peers], [r["peer_test_auc"] for r in peers], marker="x",
                   color="black", s=30, label="peer library, same protocol (one seed)")
    graded = [r for r in rows if "binary_test_auc" in r]
    for r in graded:
        ax.plot([r["latency_ms_b1000"]] * 2, [r["binary_test_auc"], r["test_auc"]], color="grey", lw=0.8)
    if graded:
        ax.scatter([r["latency_ms_b1000"] for r in graded], [r["binary_test_auc"] for r in graded], marker="o",
                   facecolors="none", edgecolors="black", s=30, label="same model, binary training targets")
    if peers or graded:
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("CPU forward latency, 1000 rows, 1 thread (ms, log scale)")
    ax.set_ylabel("test AUC (mean over seeds, bar = std)")
    ax.set_title(f"{dataset}: accuracy against serving cost (point area ~ parameters)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
