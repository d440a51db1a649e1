"""Training on Ray Train: `TorchTrainer` over CPU workers (DDP on gloo when num_workers > 1).

Per epoch each worker trains on its shard of the train split, evaluates the full validation split,
and rank 0 reports metrics with a checkpoint holding the current weights, the best weights so far,
the optimizer state and the early-stopping state. Re-running a run that did not finish (killed,
crashed, or given more epochs) resumes from its latest checkpoint: same run name, same storage.
A run resumed after epoch k continues exactly as the uninterrupted run would have (1 worker), since
shuffling and dropout are seeded per epoch.

The driver then loads the best weights, evaluates valid and test, and publishes a model version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, DataConfig, RunConfig, ScalingConfig
from ray.data import DataContext
from ray.train.torch import TorchTrainer

from muxrec.artifacts import ArtifactRegistry, ModelVersion
from muxrec.config import TrainConfig, to_dict
from muxrec.errors import ConfigError, MuxrecError, find_muxrec_error
from muxrec.models import EncodedRows, build_model
from muxrec.models.registry import entry
from muxrec.models.serialization import load_state, model_files, state_bytes
from muxrec.pipelines.importance import permutation_importance
from muxrec.pipelines.loop import Objective, evaluate_rows, make_optimizer, train_epoch
from muxrec.pipelines.prepare import PreparedData
from muxrec.ray_env import ensure_ray
from muxrec.spec import ModelInputs

DONE_MARKER = "muxrec-done.json"
_STATE = "state.json"
_CURRENT = "model.safetensors"
_BEST = "best.safetensors"
_OPTIMIZER = "optimizer.pt"


@dataclass(frozen=True)
class TrainJob:
    """Everything one training run needs, typed; Ray pickles it into the workers as it is."""

    prepared: str  # folder written by `prepare`
    model: str  # registry name, e.g. "deepfm"
    model_config: Any  # its typed config (DeepFMConfig, ...): `make_config` reads one from a mapping
    train: TrainConfig = TrainConfig()
    # How to run, not what to learn: never part of the fingerprint.
    threads: int = 1  # torch threads per worker
    progress_bars: bool = False  # draw per-batch bars (the driver has a terminal)

    def __post_init__(self) -> None:
        expected = entry(self.model).config_cls
        if not isinstance(self.model_config, expected):
            raise TypeError(f"TrainJob.model_config must be a {expected.__name__}, "
                            f"got {type(self.model_config).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """As JSON (the published train.json)."""
        return {"prepared": self.prepared, "model": self.model, "model_config": to_dict(self.model_config),
                "train": to_dict(self.train), "threads": self.threads, "progress_bars": self.progress_bars}

    def fingerprint(self, spec_fingerprint: str) -> str:
        """What must not change between a run and its resumption (epochs and workers may)."""
        train = {k: v for k, v in to_dict(self.train).items() if k not in ("epochs", "num_workers", "patience")}
        canon = json.dumps([spec_fingerprint, self.model, to_dict(self.model_config), train], sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainResult:
    version: ModelVersion
    metrics: dict[str, Any]
    run_dir: Path


# ---- worker side ----------------------------------------------------------------------------


def _shard_rows(name: str, inputs: ModelInputs) -> EncodedRows:
    """Pull this worker's shard of a Ray dataset into memory, once."""
    shard = ray.train.get_dataset_shard(name)
    tables = list(shard.iter_batches(batch_format="pyarrow", batch_size=None))
    return EncodedRows(pa.concat_tables(tables) if tables else pa.table({}), inputs)


def _equal_batch_count(n_batches: int) -> int:
    """DDP needs every rank to run the same number of steps: take the minimum."""
    if not (dist.is_available() and dist.is_initialized()):
        return n_batches
    t = torch.tensor([n_batches])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _worker_log() -> logging.Logger:
    """Worker-side log lines reach the driver once (print() output is forwarded twice by Ray Train)."""
    log = logging.getLogger("muxrec.train")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[muxrec] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def train_loop_per_worker(config: dict[str, Any]) -> None:
    job: TrainJob = config["job"]
    log = _worker_log()
    cfg = job.train
    prepared = PreparedData.load(job.prepared)
    inputs = prepared.inputs
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(job.model, job.model_config, inputs)
    optimizer = make_optimizer(model, cfg)
    objective = Objective(inputs, prepared.positive_rates("train"))  # whole-split rates: equal on every rank
    fingerprint = job.fingerprint(prepared.spec.fingerprint())
    state = {"epoch": -1, "best_epoch": -1, "best_valid_auc": -1.0, "bad_epochs": 0, "stopped": False,
             "history": [], "fingerprint": fingerprint, "train_seconds": 0.0, "world_size": ctx.get_world_size(),
             "train_rows": 0}
    best_weights: bytes | None = None

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            d = Path(d)
            state = json.loads((d / _STATE).read_text())
            if state["fingerprint"] != fingerprint:
                raise ConfigError("this run was started with another spec / model / training config; "
                                  "use --fresh to start it over")
            load_state(model, (d / _CURRENT).read_bytes())
            best_weights = (d / _BEST).read_bytes()
            optimizer.load_state_dict(torch.load(d / _OPTIMIZER, weights_only=True))
        if rank == 0:
            log.info(f"resuming after epoch {state['epoch'] + 1} (best valid AUC "
                     f"{state['best_valid_auc']:.4f} at epoch {state['best_epoch'] + 1})")

    net = ray.train.torch.prepare_model(model) if ctx.get_world_size() > 1 else model
    DataContext.get_current().enable_progress_bars = False  # the shards are small; bars would be noise
    train_rows = _shard_rows("train", inputs)
    valid_rows = _shard_rows("valid", inputs)
    # Each worker holds one Ray CPU so that Ray Data can stream the shards in; once they are in
    # memory, let torch use this worker's share of the machine.
    torch.set_num_threads(job.threads)
    state["world_size"] = ctx.get_world_size()
    state["train_rows"] = len(train_rows)  # this rank's shard
    start = state["epoch"] + 1
    if state["stopped"]:
        start = cfg.epochs  # early-stopped before: nothing left to do
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        n_batches = _equal_batch_count((len(train_rows) + cfg.batch_size - 1) // cfg.batch_size)
        progress = _progress(n_batches, f"epoch {epoch + 1}/{cfg.epochs}", rank == 0 and job.progress_bars)
        train_loss = train_epoch(net, model, train_rows, cfg, epoch, optimizer, n_batches,
                                 on_batch=lambda: progress.update(1), objective=objective)
        progress.close()
        valid = evaluate_rows(model, valid_rows, inputs.tasks, cfg.eval_batch_size)
        seconds = time.perf_counter() - t0
        state["train_seconds"] += seconds
        state["epoch"] = epoch
        if valid["auc"] > state["best_valid_auc"]:
            state.update(best_valid_auc=valid["auc"], best_epoch=epoch, bad_epochs=0)
            best_weights = state_bytes(model)
        else:
            state["bad_epochs"] += 1
        state["stopped"] = state["bad_epochs"] >= cfg.patience
        metrics = {"epoch": epoch + 1, "train_loss": train_loss, "valid_auc": valid["auc"],
                   "valid_logloss": valid["logloss"], "best_valid_auc": state["best_valid_auc"],
                   "epoch_seconds": seconds}
        state["history"].append(metrics)
        if rank == 0:
            log.info(f"epoch {epoch + 1}: loss {metrics['train_loss']:.4f}  valid AUC {valid['auc']:.4f}  "
                     f"logloss {valid['logloss']:.4f}  ({seconds:.1f}s)")
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                d = Path(d)
                (d / _CURRENT).write_bytes(state_bytes(model))
                (d / _BEST).write_bytes(best_weights)
                torch.save(optimizer.state_dict(), d / _OPTIMIZER)
                (d / _STATE).write_text(json.dumps(state))
                checkpoint = Checkpoint.from_directory(str(d))
            ray.train.report(metrics, checkpoint=checkpoint)
        if state["stopped"]:
            if rank == 0:
                log.info(f"early stop: no better valid AUC for {cfg.patience} epoch(s)")
            break


def _progress(total: int, desc: str, enabled: bool):
    """A per-epoch progress bar drawn by Ray on the driver's terminal; a no-op when disabled."""
    if not enabled:
        return _NoProgress()
    from ray.experimental.tqdm_ray import tqdm

    return tqdm(total=total, desc=desc, unit="batch")


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


# ---- driver side ----------------------------------------------------------------------------


def run_dir(storage: str | Path, name: str) -> Path:
    return Path(storage).resolve() / name


def fit(job: TrainJob, storage: str | Path, name: str, fresh: bool = False) -> tuple[dict, bytes, float]:
    """Run (or resume) the Ray Train run `name`; return its final state, best weights, wall seconds.

    A run folder holding a DONE marker is a finished run: it is started over. One without the marker
    is resumed from its latest checkpoint unless `fresh`.
    """
    folder = run_dir(storage, name)
    if folder.exists() and (fresh or (folder / DONE_MARKER).exists()):
        shutil.rmtree(folder)
    ensure_ray()
    prepared = PreparedData.load(job.prepared)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    job = replace(job, threads=max(1, cpus // job.train.num_workers), progress_bars=sys.stderr.isatty())
    # Workers must leave a CPU free: Ray Data streams their shards in with tasks of its own, and a
    # cluster whose CPUs are all held by workers would wait for them forever.
    worker_cpus = min(1.0, max(0.1, (cpus - 1) / job.train.num_workers))
    datasets = {split: ray.data.read_parquet(str(prepared.split_dir(split))) for split in ("train", "valid")}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=job.train.num_workers, use_gpu=False,
                                     resources_per_worker={"CPU": worker_cpus}),
        run_config=RunConfig(name=name, storage_path=str(Path(storage).resolve()),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as err:
        # Ray Train reports worker exceptions by rank; show the user-facing one as it is.
        failures = list(getattr(err, "worker_failures", {}).values())
        for cause in (find_muxrec_error(e) for e in [err, *failures]):
            if cause is not None and cause is not err:
                raise cause from None
        raise
    wall = time.perf_counter() - t0
    if result.checkpoint is None:
        raise MuxrecError(f"training run {name} produced no checkpoint")
    with result.checkpoint.as_directory() as d:
        state = json.loads((Path(d) / _STATE).read_text())
        best = (Path(d) / _BEST).read_bytes()
    return state, best, wall


def train(job: TrainJob, registry: ArtifactRegistry, model_name: str, storage: str | Path,
          run_name: str | None = None, fresh: bool = False) -> TrainResult:
    """Fit, evaluate the best checkpoint on valid and test, publish it as a new model version.

    Search-then-retrain models (a `retrain_config()` method returning the config they chose, e.g.
    OptInter's interaction method per field pair) are fitted twice: the search run, then a run of
    the chosen config from scratch, which is what gets published; the search is recorded in metrics.
    """
    prepared = PreparedData.load(job.prepared)
    run_name = run_name or f"{model_name}-seed{job.train.seed}"
    runs = [run_name]
    state, best_weights, wall = fit(job, storage, run_name, fresh=fresh)
    cfg = job.model_config
    model = build_model(job.model, cfg, prepared.inputs)
    load_state(model, best_weights)

    search = None
    chosen = model.retrain_config() if hasattr(model, "retrain_config") else None
    if chosen is not None:
        search = {"config": to_dict(cfg), "valid_auc": state["best_valid_auc"], "epochs": state["epoch"] + 1,
                  "train_seconds": round(state["train_seconds"], 2), "chosen": to_dict(chosen)}
        search.update(getattr(model, "search_report", dict)())
        job, cfg = replace(job, model_config=chosen), chosen
        runs.append(f"{run_name}-retrain")
        state, best_weights, retrain_wall = fit(job, storage, runs[-1], fresh=fresh)
        wall += retrain_wall
        model = build_model(job.model, cfg, prepared.inputs)
        load_state(model, best_weights)

    metrics: dict[str, Any] = {
        "model": job.model,
        "best_epoch": state["best_epoch"] + 1,
        "epochs": state["epoch"] + 1,
        "train_seconds": round(state["train_seconds"] + (search["train_seconds"] if search else 0.0), 2),
        "wall_seconds": round(wall, 2),
        "params": sum(p.numel() for p in model.parameters()),
        "history": state["history"],
    }
    if search is not None:
        metrics["search"] = search
    for split in ("valid", "test"):
        rows = EncodedRows(prepared.read(split), prepared.inputs)
        metrics[split] = evaluate_rows(model, rows, prepared.inputs.tasks, job.train.eval_batch_size)
    files = model_files(model, job.model, cfg, prepared.spec, prepared.vocab)
    files["metrics.json"] = json.dumps(metrics, indent=1)
    files["importance.json"] = json.dumps(permutation_importance(model, prepared.read("valid"), prepared.inputs,
                                                                 seed=job.train.seed), indent=1)
    files["train.json"] = json.dumps(job.to_dict(), indent=1)
    version = registry.publish(model_name, files, metadata={
        "model": job.model, "spec": prepared.spec.name, "valid_auc": metrics["valid"]["auc"],
        "test_auc": metrics["test"]["auc"], "run": runs[-1]})
    for name in runs:
        (run_dir(storage, name) / DONE_MARKER).write_text(json.dumps({"version": version.ref}))
    print(f"[muxrec] published {version.ref}: valid AUC {metrics['valid']['auc']:.4f}, "
          f"test AUC {metrics['test']['auc']:.4f} (best epoch {metrics['best_epoch']})", file=sys.stderr, flush=True)
    return TrainResult(version, metrics, run_dir(storage, runs[-1]))


def with_overrides(cfg: TrainConfig, **overrides: Any) -> TrainConfig:
    """TrainConfig with the non-None overrides applied (CLI flags on top of YAML)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return replace(cfg, **given)
    except ValueError as err:
        raise ConfigError(f"train config: {err}") from None
