"""`muxrec bench train`: how fast training runs, from the model's own math up to the whole command.

    muxrec bench train --dataset ml-100k --model deepfm --json
    muxrec bench train --dataset ml-100k --model deepfm --set model.hidden_units=[256,128] \
        --set model.dropout=0.1 --set train.batch_size=512 --json      # the peer's DeepFM

Per model, three ways of training the same configs/models/<name>.yaml, interleaved in one run so that
other jobs on the machine slow them alike (floor, loop, command, floor, loop; the fastest epoch of
each way counts, since noise only ever adds time):

- floor: a plain PyTorch loop over batches built once beforehand (forward, loss, backward, optimizer
  step, nothing else): what this model costs on this machine, the floor for our code;
- loop: `muxrec.pipelines.loop.train_epoch` in-process, as a Ray Train worker runs it (a seeded
  shuffle, batching from Arrow-backed tensors, the objective), then validation as the worker does it;
- command: `muxrec train` in a fresh process, as a user runs it. Per-epoch time is from the start of
  one epoch to the next (train, validate, checkpoint, report); start-up from launching the process to
  its first batch; tear-down from the end of the last epoch to exit (final evaluation of valid and
  test, feature importance, publishing, stopping Ray). Whether Ray was already running (`muxrec ray
  up`) is recorded: start-up depends on it. The command trains on one Ray Train worker, or in its own
  process with `--set train.num_workers=0`.

samples/s = training rows / seconds. loop_vs_floor compares training passes alone; command_vs_loop
compares whole epochs (training + validation). Results go to docs/benchmarks/results/train-*.json and
the report docs/benchmarks/train.md (+ train.png) is rebuilt from all of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import yaml

from muxrec.benchmarks.ctr import prepared_dataset, runnable_models
from muxrec.benchmarks.environment import commit, machine
from muxrec.config import ModelFile, TrainConfig, to_dict
from muxrec.errors import ConfigError, MuxrecError
from muxrec.log import say
from muxrec.models import EncodedRows, build_model, make_config
from muxrec.pipelines.loop import Objective, evaluate_rows, make_optimizer, train_epoch
from muxrec.pipelines.prepare import PreparedData
from muxrec.ray_env import kept_ray_address

# The peer library measured by hand, side by side with `loop` in one window (see docs/benchmarks/train.md
# for the commands). Recorded figures, not re-measured here: fuxictr is never a muxrec dependency.
PEER = [
    {"dataset": "ml-100k", "library": "FuxiCTR 2.3.10", "model": "DeepFM, MLP [256, 128], dropout 0.1, batch 512, dim 16",
     "samples_per_s": 28974, "ours_samples_per_s": 90569, "date": "2026-11-29",
     "command": "a scratch virtualenv with fuxictr==2.3.10, its DeepFM timed per training pass, 2 torch "
                "threads, 3 epochs (best epoch: 2.76 s; 4.07 s with validation), right after "
                "`muxrec bench train --dataset ml-100k --model deepfm --set train.batch_size=512 "
                "--threads 2 --json` in the same quiet window (docs/training.md)"},
    {"dataset": "ml-100k-history", "library": "FuxiCTR 2.3.10",
     "model": "DIN, attention [80, 40] Dice, DNN [200, 80] Dice, dropout 0, batch 1024, dim 16, history 50",
     "samples_per_s": 10288, "ours_samples_per_s": 17235, "date": "2026-11-30",
     "command": "a scratch virtualenv with fuxictr==2.3.10, its model-zoo DIN on the rows of `muxrec prepare --spec "
                "configs/ml-100k-history.yaml`, `train_step` timed over batches built beforehand, 2 torch threads, "
                "3 epochs, best epoch (7.78 s), alternating peer, muxrec, peer, muxrec with muxrec's loop as `muxrec "
                "bench train --dataset ml-100k-history --model din --threads 2` times it (`_epochs_loop`, best epoch "
                "4.64 s) in one window, load average 3.4-6.4 on the 2 shared cores; the other pair 8,843 vs 15,625 "
                "(1.77x); the loop before the DIN rewrites 10,090 (1.0x the peer) (docs/training.md)"},
]


def _build(mf: ModelFile, prepared: PreparedData) -> torch.nn.Module:
    return build_model(mf.architecture, make_config(mf.architecture, mf.model), prepared.inputs)


def _fastest(times: list[float]) -> float:
    return min(times) if times else float("nan")


def _epochs_floor(mf: ModelFile, prepared: PreparedData, rows: EncodedRows, epochs: int) -> list[float]:
    """Seconds per training pass of a plain loop over batches built beforehand."""
    cfg = mf.train
    torch.manual_seed(cfg.seed)
    model = _build(mf, prepared)
    optimizer = make_optimizer(model, cfg)
    objective = Objective(prepared.inputs, prepared.positive_rates("train"))
    batches = list(rows.batches(cfg.batch_size, torch.Generator().manual_seed(cfg.seed)))
    model.train()
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for batch in batches:
            loss = objective(model(batch), batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - t0)
    return times


def _epochs_loop(mf: ModelFile, prepared: PreparedData, rows: EncodedRows, valid: EncodedRows,
                 epochs: int) -> tuple[list[float], list[float]]:
    """(training-pass seconds, training + validation seconds) per epoch of the in-process loop."""
    cfg = mf.train
    torch.manual_seed(cfg.seed)
    model = _build(mf, prepared)
    optimizer = make_optimizer(model, cfg)
    objective = Objective(prepared.inputs, prepared.positive_rates("train"))
    passes, whole = [], []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        train_epoch(model, model, rows, cfg, epoch, optimizer, objective=objective)
        t1 = time.perf_counter()
        evaluate_rows(model, valid, prepared.inputs, cfg.eval_batch_size)
        passes.append(t1 - t0)
        whole.append(time.perf_counter() - t0)
    return passes, whole


def _muxrec() -> list[str]:
    script = Path(sys.executable).parent / "muxrec"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "muxrec.cli"]


def _command(mf: ModelFile, spec_path: Path, runs: Path, epochs: int) -> dict[str, float]:
    """Run `muxrec train` in a fresh process; start-up, per-epoch and tear-down seconds from its events."""
    name = f"bench-train-{mf.name}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / f"{mf.name}.yaml"
        config.write_text(yaml.safe_dump({"architecture": mf.architecture, "model": mf.model,
                                          "train": to_dict(mf.train)}))
        argv = [*_muxrec(), "train", "--spec", str(spec_path), "--model", mf.name, "--config", str(config),
                "--name", name, "--epochs", str(epochs), "--patience", str(epochs), "--fresh",
                "--runs", str(runs), "--registry", str(Path(tmp) / "registry")]
        launched = time.time()
        done = subprocess.run(argv, capture_output=True, text=True)
        exited = time.time()
    if done.returncode != 0:
        raise MuxrecError(f"bench train: `muxrec train` failed for {mf.name}: "
                          f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    progress = runs / "ray" / f"{name}-seed{mf.train.seed}" / "progress.jsonl"
    events = [json.loads(line) for line in progress.read_text().splitlines()]
    starts = [e["t"] for e in events if e["kind"] == "start"]
    ends = [e for e in events if e["kind"] == "epoch"]
    return {"startup_s": starts[0] - launched,
            "epoch_s": _fastest([b - a for a, b in zip(starts, starts[1:])]),
            "worker_epoch_s": _fastest([e["epoch_seconds"] for e in ends]),
            "teardown_s": exited - ends[-1]["t"]}


def bench_model(dataset: str, mf: ModelFile, prepared: PreparedData, spec_path: Path, runs: Path,
                epochs: int, threads: int) -> dict[str, Any]:
    """Floor, loop and command for one model, interleaved; one result row."""
    torch.set_num_threads(threads)
    rows = EncodedRows(prepared.read("train"), prepared.inputs)
    valid = EncodedRows(prepared.read("valid"), prepared.inputs)
    ray_running = bool(os.environ.get("RAY_ADDRESS") or kept_ray_address())
    floor, loop_pass, loop_whole = [], [], []
    say(f"{mf.name}: floor, loop")
    floor += _epochs_floor(mf, prepared, rows, epochs)
    passes, whole = _epochs_loop(mf, prepared, rows, valid, epochs)
    loop_pass += passes
    loop_whole += whole
    say(f"{mf.name}: muxrec train ({epochs} epochs, Ray {'running' if ray_running else 'started by the command'})")
    command = _command(mf, spec_path, runs, epochs)
    say(f"{mf.name}: floor, loop again")
    floor += _epochs_floor(mf, prepared, rows, epochs)
    passes, whole = _epochs_loop(mf, prepared, rows, valid, epochs)
    loop_pass += passes
    loop_whole += whole
    n = len(rows)
    floor_s, loop_s, loop_epoch_s = _fastest(floor), _fastest(loop_pass), _fastest(loop_whole)
    return {
        "dataset": dataset, "model": mf.name, "architecture": mf.architecture, "train_rows": n,
        "batch_size": mf.train.batch_size, "params": sum(p.numel() for p in _build(mf, prepared).parameters()),
        "floor_samples_per_s": round(n / floor_s), "loop_samples_per_s": round(n / loop_s),
        "loop_vs_floor": round(floor_s / loop_s, 3),
        "loop_epoch_s": round(loop_epoch_s, 3), "command_epoch_s": round(command["epoch_s"], 3),
        "command_samples_per_s": round(n / command["epoch_s"]),
        "command_vs_loop": round(command["epoch_s"] / loop_epoch_s, 3),
        "worker_epoch_s": round(command["worker_epoch_s"], 3),
        "startup_s": round(command["startup_s"], 1), "teardown_s": round(command["teardown_s"], 1),
        "ray_running": ray_running, "num_workers": mf.train.num_workers, "epochs": epochs, "threads": threads,
        "commit": commit(), "machine": machine(),
    }


def bench_train(dataset: str, model: str, config_dir: Path, runs: Path, out_dir: Path | None,
                overrides: Sequence[str] = (), epochs: int = 3, threads: int | None = None) -> Iterator[dict[str, Any]]:
    """One result row per model (a `skipped` row when a model cannot run on this dataset).

    `threads`: torch threads in-process; give what the Ray Train worker gets (the Ray cluster's CPUs,
    e.g. 1 after `muxrec ray up --num-cpus 1`) so that loop and command compare like with like.
    """
    if epochs < 2:
        raise ConfigError("--epochs: at least 2 (per-epoch time is measured between epoch starts)")
    spec_path, prepared = prepared_dataset(dataset, config_dir, runs)
    for name, mf, _, skipped in runnable_models(model, config_dir, prepared, overrides):
        if mf is None:
            yield {"dataset": dataset, "model": name, "skipped": skipped}
            continue
        row = bench_model(dataset, replace(mf, train=_bench_train_config(mf.train)), prepared, spec_path,
                          runs, epochs, threads or os.cpu_count() or 1)
        if overrides:
            row["overrides"] = list(overrides)
        if out_dir is not None:
            save_result(row, out_dir)
            write_report(out_dir)
        yield row


def _bench_train_config(cfg: TrainConfig) -> TrainConfig:
    """One worker, the comparison being with one in-process loop; or none (`--set train.num_workers=0`):
    the command runs that loop in its own process."""
    return cfg if cfg.num_workers == 0 else replace(cfg, num_workers=1)


def _result_name(row: dict[str, Any]) -> str:
    """One file per dataset, model, overrides and start kind (Ray started by the command, or already up)."""
    tag = hashlib.sha256(json.dumps(row.get("overrides", [])).encode()).hexdigest()[:6]
    start = "warm" if row.get("ray_running") else "cold"
    return f"train-{row['dataset']}-{row['model']}-{tag}-{start}.json"


def save_result(row: dict[str, Any], out_dir: Path) -> None:
    results = out_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / _result_name(row)).write_text(json.dumps(row, indent=1))


def _label(row: dict[str, Any]) -> str:
    extra = " ".join(o.split(".", 1)[-1] for o in row.get("overrides", []))
    return f"{row['model']} ({extra})" if extra else row["model"]


def write_report(out_dir: Path) -> None:
    """docs/benchmarks/train.md and train.png from every saved train result."""
    rows = [json.loads(p.read_text()) for p in sorted((out_dir / "results").glob("train-*.json"))]
    lines = [
        "# Training speed",
        "",
        "Made by `muxrec bench train` (see `benchmarks/train.py` for what each column measures). samples/s of",
        "the training pass: **floor** a plain PyTorch loop over batches built beforehand, **loop** muxrec's",
        "in-process loop (what a Ray Train worker runs), **command** `muxrec train` per epoch (train +",
        "validate + checkpoint, start of one epoch to the next). Ratios are measured in one run, interleaved;",
        "absolute figures move with whatever else shares the 2 cores.",
        "",
        "| dataset | model | params | batch | floor /s | loop /s | loop / floor | loop epoch s | command epoch s "
        "| command / loop | start-up s | tear-down s | Ray already up | commit |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['dataset']} | {_label(r)} | {r['params']:,} | {r['batch_size']} | "
                     f"{r['floor_samples_per_s']:,} | {r['loop_samples_per_s']:,} | {r['loop_vs_floor']:.2f} | "
                     f"{r['loop_epoch_s']:.2f} | {r['command_epoch_s']:.2f} | {r['command_vs_loop']:.2f} | "
                     f"{r['startup_s']:.1f} | {r['teardown_s']:.1f} | {'yes' if r['ray_running'] else 'no'} | "
                     f"{r['commit']} |")
    peers = [p for p in PEER if p["samples_per_s"]]
    if peers:
        lines += ["", "## The peer, measured by hand", "",
                  "| dataset | library | model | peer samples/s | muxrec loop samples/s (same window) | ratio | date |",
                  "|---|---|---|---:|---:|---:|---|"]
        for p in peers:
            lines.append(f"| {p['dataset']} | {p['library']} | {p['model']} | {p['samples_per_s']:,} | "
                         f"{p['ours_samples_per_s']:,} | {p['ours_samples_per_s'] / p['samples_per_s']:.2f} | "
                         f"{p['date']} |")
        for p in peers:
            lines += ["", f"Command ({p['model'].split(',')[0]}): {p['command']}"]
    (out_dir / "train.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out_dir / "train.png")


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows)), 4))
    width = 0.27
    for i, (key, label) in enumerate([("floor_samples_per_s", "floor (plain PyTorch)"),
                                      ("loop_samples_per_s", "muxrec loop"),
                                      ("command_samples_per_s", "muxrec train (per epoch)")]):
        ax.bar([x + (i - 1) * width for x in range(len(rows))], [r[key] for r in rows], width, label=label)
    ax.set_xticks(range(len(rows)), [_label(r) for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("training samples / s")
    ax.set_title("Training throughput, one run per model (2 CPU cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
