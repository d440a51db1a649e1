"""Training on Ray Train: `TorchTrainer` over CPU workers (DDP on gloo when num_workers > 1).

Per epoch each worker trains on its shard of the train split, evaluates the full validation split,
and rank 0 reports metrics with a checkpoint holding the current weights, the best weights so far,
the optimizer state and the early-stopping state. Re-running a run that did not finish (killed,
crashed, or given more epochs) resumes from its latest checkpoint: same run name, same storage.
A run resumed after epoch k continues exactly as the uninterrupted run would have (1 worker), since
shuffling and dropout are seeded per epoch.

Then the best weights are evaluated on valid and test as they will be served, and published as a model
version (on the driver, or in a Ray task when the data is large: `finish_run`).

How a worker gets its data is chosen by size: a split whose Parquet files total at most
`TrainJob.in_memory_bytes` (default `IN_MEMORY_BYTES`, 64 MiB on disk; env MUXREC_IN_MEMORY_BYTES)
is read straight from the prepared folder into memory by each worker (its slice of train, all of
valid), which skips Ray Data's start-up; a larger one is streamed from Ray Data in batches through a
local shuffle buffer (`iter_batches`), so no worker ever holds its whole shard.

Progress is the driver's: rank 0 appends events to `progress.jsonl` in the run folder and the
driver draws them (a tqdm bar per epoch on a terminal, one line per epoch), so Ray's own worker
output can stay off unless --verbose.

`num_workers: 0` runs the same loop in the calling process, through Ray Train's local mode
(`ScalingConfig(num_workers=0)`): no controller or worker process to start, which on 2 cores is
most of a small run (DeepFM on 6,000 rows, Ray running: ~15 s per `fit` on a worker, of which 0.3 s
is the epoch). Local mode keeps no checkpoints, so the loop keeps them in the run folder itself, and
resumes from the latest one there (a worker run's too).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import ray
import ray.train
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from ray.train import Checkpoint, CheckpointConfig, DataConfig, RunConfig, ScalingConfig
from ray.data import DataContext
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm import tqdm

from muxrec.artifacts import ArtifactRegistry, ModelVersion
from muxrec.config import SPARSE_TABLE_ROWS, TrainConfig, to_dict
from muxrec.errors import ConfigError, MuxrecError
from muxrec.log import say
from muxrec.models import Batch, EncodedRows, build_model
from muxrec.models.registry import entry
from muxrec.models.serialization import load_state, model_files, serving_copy, state_bytes
from muxrec.pipelines.backpressure import use_spin_guard
from muxrec.pipelines.importance import permutation_importance
from muxrec.models.multitask import expert_utilisation
from muxrec.pipelines.loop import (Objective, Optimizers, empty_parameters, evaluate_rows, make_optimizer,
                                   still_ramping, train_epoch)
from muxrec.pipelines.prepare import PreparedData
from muxrec.pipelines.progress import ProgressFollower, ProgressLog, fit_trainer
from muxrec.pipelines.sharding import check_shardable, plan_summary, shard
from muxrec.pipelines.sparse import sparse_tables
from muxrec.pipelines.trainer import TorchTrainer, job_of
from muxrec.ray_env import ensure_ray
from muxrec.spec import ModelInputs

DONE_MARKER = "muxrec-done.json"
_STATE = "state.json"
_CURRENT = "model.safetensors"
_BEST = "best.safetensors"
_OPTIMIZER = "optimizer.pt"
_TABLES_OPTIMIZER = "tables-optimizer.safetensors"  # sharded tables' fused optimizer state, unsharded
_PROGRESS = "progress.jsonl"
_IN_PROCESS_CHECKPOINT = "checkpoint_in_process_"  # + epoch: a checkpoint of a num_workers 0 run
_VERSION_FILES = "version-files"  # a run folder's staging of the files it publishes
IN_MEMORY_BYTES = 64 * 2**20  # a split up to this many Parquet bytes is held in memory, not streamed
SHUFFLE_BUFFER_ROWS = 50_000  # streamed training rows are shuffled within a buffer of this many rows
# Permutation importance at publish time runs 1 + 3 x fields forward passes on the driver: over the first
# this many validation rows (all of them on the benchmark datasets), not over a split of millions.
IMPORTANCE_ROWS = 100_000


def default_in_memory_bytes() -> int:
    """IN_MEMORY_BYTES, or MUXREC_IN_MEMORY_BYTES when set (0 streams every split)."""
    value = os.environ.get("MUXREC_IN_MEMORY_BYTES")
    if value is None:
        return IN_MEMORY_BYTES
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"MUXREC_IN_MEMORY_BYTES: expected a number of bytes, got {value!r}") from None


@dataclass(frozen=True)
class TrainJob:
    """Everything one training run needs, typed; Ray pickles it into the workers as it is."""

    prepared: str  # folder written by `prepare`
    model: str  # registry name, e.g. "deepfm"
    model_config: Any  # its typed config (DeepFMConfig, ...): `make_config` reads one from a mapping
    train: TrainConfig = TrainConfig()
    # How to run, not what to learn: never part of the fingerprint.
    threads: int = 1  # torch threads per worker
    in_memory_bytes: int | None = None  # splits up to this many Parquet bytes are held in memory; None: default
    streamed: tuple[str, ...] = ()  # splits the driver hands over as Ray datasets (set by `fit`)
    progress_file: str = ""  # where rank 0 appends progress events (set by `fit`)
    run_folder: str = ""  # the run's folder, where an in-process run keeps its checkpoints (set by `fit`)

    def __post_init__(self) -> None:
        expected = entry(self.model).config_cls
        if not isinstance(self.model_config, expected):
            raise TypeError(f"TrainJob.model_config must be a {expected.__name__}, "
                            f"got {type(self.model_config).__name__}")

    def in_memory_limit(self) -> int:
        """Splits up to this many Parquet bytes are held in memory: `in_memory_bytes`, or the default."""
        return self.in_memory_bytes if self.in_memory_bytes is not None else default_in_memory_bytes()

    def to_dict(self) -> dict[str, Any]:
        """As JSON (the published train.json)."""
        return {"prepared": self.prepared, "model": self.model, "model_config": to_dict(self.model_config),
                "train": to_dict(self.train), "threads": self.threads, "in_memory_bytes": self.in_memory_bytes,
                "streamed": list(self.streamed), "progress_file": self.progress_file, "run_folder": self.run_folder}

    @property
    def in_process(self) -> bool:
        """num_workers 0: the loop runs in the calling process (Ray Train's local mode)."""
        return self.train.num_workers == 0

    def fingerprint(self, spec_fingerprint: str) -> str:
        """What must not change between a run and its resumption (epochs and workers may)."""
        train = {k: v for k, v in to_dict(self.train).items()
                 if k not in ("epochs", "num_workers", "patience", "sharding", "embedding_optimizer", "embedding_lr",
                              "task_weighting", "id_dropout", "sparse_table_rows")}
        # Set only when not the default, so that fingerprints from before these options still hold.
        if self.train.table_optimizer != "adam":
            train["table_optimizer"] = self.train.table_optimizer
        if self.train.embedding_lr is not None:
            train["embedding_lr"] = self.train.embedding_lr
        if self.train.task_weighting != "fixed":
            train["task_weighting"] = self.train.task_weighting
        if self.train.id_dropout:
            train["id_dropout"] = self.train.id_dropout
        if self.train.sparse_table_rows != SPARSE_TABLE_ROWS:
            train["sparse_table_rows"] = self.train.sparse_table_rows
        canon = json.dumps([spec_fingerprint, self.model, to_dict(self.model_config), train], sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainResult:
    version: ModelVersion
    metrics: dict[str, Any]
    run_dir: Path


# ---- worker side ----------------------------------------------------------------------------


class StreamedRows:
    """A worker's shard of a Ray dataset, read batch by batch (never all at once).

    Shuffling is local: rows pass through a buffer of `SHUFFLE_BUFFER_ROWS` seeded from the epoch's
    generator, so an epoch's order is replayable on the same shard layout.
    """

    def __init__(self, name: str, inputs: ModelInputs, rows: int):
        self.shard = ray.train.get_dataset_shard(name)
        self.inputs = inputs
        self.rows = rows  # this worker's share (Ray splits the train split into equal shards)
        self.seen = 0  # rows delivered by the latest pass

    def __len__(self) -> int:
        return self.rows

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        shuffle = {} if generator is None else {"local_shuffle_buffer_size": SHUFFLE_BUFFER_ROWS,
                                                "local_shuffle_seed": generator.initial_seed() % 2**32}
        self.seen = 0
        for table in self.shard.iter_batches(batch_size=batch_size, batch_format="pyarrow", **shuffle):
            rows = EncodedRows(table, self.inputs)
            self.seen += len(rows)
            yield rows.take(torch.arange(len(rows)))


def _worker_rows(job: TrainJob, prepared: PreparedData, split: str, rank: int, world: int) -> EncodedRows | StreamedRows:
    """This worker's rows of `split`: streamed when the driver made it a Ray dataset, else read here.

    A split held in memory is read from the prepared folder directly (train: this rank's contiguous
    slice; valid: all of it, every rank evaluates the same rows).
    """
    if split in job.streamed:
        total = prepared.stats["splits"][split]["rows"]
        return StreamedRows(split, prepared.inputs, total // world if split == "train" else total)
    table = prepared.read(split)
    if split == "train" and world > 1:
        lo, hi = table.num_rows * rank // world, table.num_rows * (rank + 1) // world
        table = table.slice(lo, hi - lo)
    return EncodedRows(table, prepared.inputs)


def _equal_batch_count(n_batches: int) -> int:
    """DDP needs every rank to run the same number of steps: take the minimum."""
    if not (dist.is_available() and dist.is_initialized()):
        return n_batches
    t = torch.tensor([n_batches])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _peak_rss_per_rank(world: int) -> list[int]:
    """Each worker process's peak resident memory so far, in bytes, by rank (collective when world > 1)."""
    mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    if world == 1:
        return [mine]
    everyone = [0] * world
    dist.all_gather_object(everyone, mine)
    return everyone


def train_loop_per_worker(config: dict[str, Any]) -> None:
    job: TrainJob = job_of(config)
    cfg = job.train
    prepared = PreparedData.load(job.prepared)
    inputs = prepared.inputs
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    progress = ProgressLog(job.progress_file, enabled=rank == 0 and bool(job.progress_file))

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(job.model, job.model_config, inputs)
    # Whole-split rates: equal on every rank.
    objective = Objective(inputs, prepared.positive_rates("train"), cfg.task_weighting,
                          masked=getattr(model, "funnel", "none") == "masked")
    fingerprint = job.fingerprint(prepared.spec.fingerprint())
    state = {"epoch": -1, "best_epoch": -1, "best_valid_auc": -1.0, "bad_epochs": 0, "stopped": False,
             "history": [], "fingerprint": fingerprint, "train_seconds": 0.0, "world_size": ctx.get_world_size(),
             "train_rows": 0}
    best_weights: bytes | None = None
    optimizer_state, tables_optimizer_state = None, None

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and job.in_process:  # Ray Train's local mode keeps no checkpoints: we do
        checkpoint = _latest_checkpoint(Path(job.run_folder))
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            d = Path(d)
            state = json.loads((d / _STATE).read_text())
            if state["fingerprint"] != fingerprint:
                raise ConfigError("this run was started with another spec / model / training config; "
                                  "use --fresh to start it over")
            load_state(model, (d / _CURRENT).read_bytes())  # before sharding: shard() keeps these weights
            best_weights = (d / _BEST).read_bytes()
            optimizer_state = torch.load(d / _OPTIMIZER, weights_only=True)
            if (d / _TABLES_OPTIMIZER).exists():
                tables_optimizer_state = load_safetensors((d / _TABLES_OPTIMIZER).read_bytes())
        progress.emit(kind="resume", epoch=state["epoch"] + 1, best_valid_auc=state["best_valid_auc"],
                      best_epoch=state["best_epoch"] + 1)

    sharded = None
    if cfg.sharding != "none":
        sharded = shard(model, cfg, world)  # TorchRec DMP: tables split as cfg.sharding says, the rest DDP
        net, model, optimizer = sharded.dmp, sharded.module, sharded.optimizer(cfg)
        state["sharding"] = {"tables": plan_summary(sharded), "optimizer": cfg.table_optimizer}
        state.pop("lazy_tables", None)  # (a run resumed sharded)
        progress.emit(kind="sharded", **state["sharding"])
    else:
        state.pop("sharding", None)  # (a run resumed unsharded)
        if world > 1:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, empty_parameters(model))
        optimizer = make_optimizer(model, cfg)  # first: DDP reads which tables have sparse gradients when it wraps
        net = ray.train.torch.prepare_model(model) if world > 1 else model
        state["lazy_tables"] = sparse_tables(model)
        if state["lazy_tables"] and state["epoch"] < 0:
            progress.emit(kind="note", text=f"{len(state['lazy_tables'])} table(s) over {cfg.sparse_table_rows:,} rows "
                                            "learn from sparse gradients with lazy Adam")
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state["model"] if "objective" in optimizer_state else optimizer_state)
    if sharded is not None and tables_optimizer_state is not None:
        if not sharded.load_fused_optimizer_state(tables_optimizer_state):
            progress.emit(kind="note", text="the tables' optimizer state was saved under another sharding: "
                                            "their accumulators start afresh")
    if objective.parameters():  # uncertainty weights: learned beside the model, saved in the state
        objective.load_state(state.get("task_log_vars", []))
        optimizer = Optimizers(optimizer, torch.optim.Adam(objective.parameters(), lr=cfg.lr))
        if optimizer_state is not None and "task_log_vars" in state:
            optimizer.optimizers[1].load_state_dict(optimizer_state["objective"])

    def weights() -> bytes:
        """The model's weights, unsharded (collective when sharded: every rank calls it)."""
        return state_bytes(model) if sharded is None else save_safetensors(sharded.full_state())

    DataContext.get_current().enable_progress_bars = False  # progress is drawn by the driver
    train_rows = _worker_rows(job, prepared, "train", rank, world)
    valid_rows = _worker_rows(job, prepared, "valid", rank, world)
    # Each worker holds at most one Ray CPU (Ray Data may need the rest to stream shards in); torch
    # uses this worker's share of the machine.
    torch.set_num_threads(job.threads)
    state["world_size"] = world
    state["train_rows"] = len(train_rows)  # this rank's shard
    state["streamed"] = list(job.streamed)
    start = state["epoch"] + 1
    if state["stopped"]:
        start = cfg.epochs  # early-stopped before: nothing left to do
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        n_batches = _equal_batch_count((len(train_rows) + cfg.batch_size - 1) // cfg.batch_size)
        progress.emit(kind="start", epoch=epoch + 1, epochs=cfg.epochs, batches=n_batches)
        every = max(1, n_batches // 50)
        done = iter(range(1, n_batches + 1))

        def on_batch() -> None:
            step = next(done)
            if step % every == 0 or step == n_batches:
                progress.emit(kind="batch", done=step)

        train_loss = train_epoch(net, model, train_rows, cfg, epoch, optimizer, n_batches,
                                 on_batch=on_batch, objective=objective)
        valid = evaluate_rows(model, valid_rows, inputs, cfg.eval_batch_size)
        seconds = time.perf_counter() - t0
        state["train_seconds"] += seconds
        state["epoch"] = epoch
        if valid["auc"] > state["best_valid_auc"]:
            state.update(best_valid_auc=valid["auc"], best_epoch=epoch, bad_epochs=0)
            best_weights = weights()
        elif not still_ramping(model):  # epochs on a pruning schedule do not count towards patience
            state["bad_epochs"] += 1
        state["stopped"] = state["bad_epochs"] >= cfg.patience
        metrics = {"epoch": epoch + 1, "train_loss": train_loss, "valid_auc": valid["auc"],
                   "valid_logloss": valid["logloss"], "best_valid_auc": state["best_valid_auc"],
                   "epoch_seconds": seconds}
        if len(inputs.tasks) > 1:
            metrics["valid_task_auc"] = {t: valid[f"{t}_auc"] for t in inputs.tasks if f"{t}_auc" in valid}
        if objective.parameters():
            state["task_log_vars"] = objective.state()
            metrics["task_weights"] = {inputs.tasks[t]: w for t, w in objective.task_weights().items()}
        state["history"].append(metrics)
        if isinstance(train_rows, StreamedRows):
            state["train_rows"] = train_rows.seen
        state["peak_rss_bytes"] = _peak_rss_per_rank(world)
        progress.emit(kind="epoch", **metrics)
        current = weights()
        tables_state = sharded.fused_optimizer_state() if sharded is not None else {}

        def write_checkpoint(d: Path) -> None:
            (d / _CURRENT).write_bytes(current)
            if tables_state:
                (d / _TABLES_OPTIMIZER).write_bytes(save_safetensors(tables_state))
            (d / _BEST).write_bytes(best_weights)
            saved = optimizer.state_dict() if not objective.parameters() else {
                "model": optimizer.optimizers[0].state_dict(), "objective": optimizer.optimizers[1].state_dict()}
            torch.save(saved, d / _OPTIMIZER)
            (d / _STATE).write_text(json.dumps(state))  # last: a checkpoint with a state is whole

        if job.in_process:
            ray.train.report(metrics, checkpoint=_keep_checkpoint(Path(job.run_folder), epoch, write_checkpoint))
        else:
            with tempfile.TemporaryDirectory() as d:  # Ray Train copies it into the run folder
                checkpoint = None
                if rank == 0:
                    write_checkpoint(Path(d))
                    checkpoint = Checkpoint.from_directory(d)
                ray.train.report(metrics, checkpoint=checkpoint)
        if state["stopped"]:
            progress.emit(kind="stop", patience=cfg.patience)
            break
    progress.close()


def _checkpoint_states(folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(checkpoint folder, its state) for each whole checkpoint of the run, a worker's or this process's;
    one cut short (no readable state) is passed over, as Ray Train resumes from its last complete one."""
    for state_file in sorted(folder.glob(f"checkpoint_*/{_STATE}")):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        yield state_file.parent, state


def _latest_checkpoint(folder: Path) -> Checkpoint | None:
    """The run's latest whole checkpoint, by the epoch its state records, whether this process wrote it
    or a Ray Train worker of an earlier try did (an in-process run may resume either)."""
    latest = max(_checkpoint_states(folder), key=lambda found: found[1]["epoch"], default=None)
    return None if latest is None else Checkpoint.from_directory(str(latest[0]))


def _keep_checkpoint(folder: Path, epoch: int, write: Callable[[Path], None]) -> Checkpoint:
    """An in-process run's checkpoint, kept in its run folder as Ray Train keeps a worker's: written
    aside and renamed into place (a run killed meanwhile leaves the previous one whole), the newest
    two kept (CheckpointConfig(num_to_keep=2) of a worker run)."""
    staging = folder / ".checkpoint-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    write(staging)
    final = folder / f"{_IN_PROCESS_CHECKPOINT}{epoch:06d}"
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in sorted(folder.glob(f"{_IN_PROCESS_CHECKPOINT}*"))[:-2]:
        shutil.rmtree(old)
    return Checkpoint.from_directory(str(final))


# ---- driver side ----------------------------------------------------------------------------


def run_dir(storage: str | Path, name: str) -> Path:
    return Path(storage).resolve() / name


def _check_resumable(folder: Path, fingerprint: str) -> None:
    """Refuse, before any worker starts, to resume a run whose checkpoints were made with another spec /
    model / training config (the worker checks it again on the checkpoint it is given)."""
    for _, state in _checkpoint_states(folder):
        if state.get("fingerprint") != fingerprint:
            raise ConfigError(f"run {folder.name} was started with another spec / model / training config; "
                              "use --fresh to start it over")


@contextmanager
def process_settings_kept() -> Iterator[None]:
    """What the loop sets for its process (torch threads, Ray Data progress bars) put back after it,
    for the loop that ran in this one (num_workers 0)."""
    threads, ctx = torch.get_num_threads(), DataContext.get_current()
    bars = ctx.enable_progress_bars
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        ctx.enable_progress_bars = bars


def fit(job: TrainJob, storage: str | Path, name: str, fresh: bool = False) -> tuple[dict, Path, float]:
    """Run (or resume) the Ray Train run `name`; return its final state, the file of its best weights
    (in the run folder), wall seconds.

    A run folder holding a DONE marker is a finished run: it is started over. One without the marker
    is resumed from its latest checkpoint unless `fresh`.
    """
    folder = run_dir(storage, name)
    if folder.exists() and (fresh or (folder / DONE_MARKER).exists()):
        shutil.rmtree(folder)
    prepared = PreparedData.load(job.prepared)
    _check_resumable(folder, job.fingerprint(prepared.spec.fingerprint()))
    workers = job.train.num_workers
    if workers and any(folder.glob(f"{_IN_PROCESS_CHECKPOINT}*")):
        raise ConfigError(f"run {name} was started in this process (num_workers 0), whose checkpoints Ray Train "
                          "workers cannot resume: resume it with num_workers 0, or use --fresh to start it over")
    ensure_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    limit = job.in_memory_limit()
    streamed = tuple(s for s in ("train", "valid") if _split_bytes(prepared, s) > limit)
    folder.mkdir(parents=True, exist_ok=True)
    progress_file = folder / _PROGRESS
    progress_file.unlink(missing_ok=True)
    job = replace(job, threads=max(1, cpus // max(1, workers)), in_memory_bytes=limit, streamed=streamed,
                  progress_file=str(progress_file), run_folder=str(folder))
    # Workers leave a CPU free: Ray Data feeds streamed shards with tasks of its own, and a cluster
    # whose CPUs are all held by workers would wait for them forever.
    worker_cpus = min(1.0, max(0.1, (cpus - 1) / max(1, workers)))
    use_spin_guard()  # a streamed split's executor would spin while the worker trains
    datasets = {split: ray.data.read_parquet(str(prepared.split_dir(split))) for split in streamed}
    trainer = TorchTrainer(
        train_loop_per_worker,
        job=job,
        process_group=workers > 1 or job.train.sharding != "none",
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": worker_cpus}),
        run_config=RunConfig(name=name, storage_path=str(Path(storage).resolve()),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[s for s in streamed if s == "train"]),
    )
    how = ", ".join(f"{s} {'streamed' if s in streamed else 'in memory'}" for s in ("train", "valid"))
    where = f"on {workers} Ray worker(s)" if workers else "in this process"
    say(f"training {job.model} {where} ({how})")
    t0 = time.perf_counter()
    display = _EpochDisplay()
    follower = ProgressFollower(progress_file, display.show).start()
    try:
        with process_settings_kept():  # an in-process loop sets torch's threads and Ray Data's bars
            result = fit_trainer(trainer)
    finally:
        follower.stop()
        display.close()
    wall = time.perf_counter() - t0
    if result.checkpoint is None:
        raise MuxrecError(f"training run {name} produced no checkpoint")
    best = folder / _BEST  # copied out of the checkpoint, a file at a time: the driver never reads it
    with result.checkpoint.as_directory() as d:
        state = json.loads((Path(d) / _STATE).read_text())
        shutil.copyfile(Path(d) / _BEST, best)
    return state, best, wall


def _split_bytes(prepared: PreparedData, split: str) -> int:
    """Bytes of the split's Parquet files on disk (what decides streaming vs in memory)."""
    return sum(f.stat().st_size for f in prepared.split_dir(split).glob("*.parquet"))


class _EpochDisplay:
    """What the driver shows of rank 0's progress events (pipelines/progress.py): a tqdm bar per epoch
    (terminals only) and one line per epoch, so the user sees progress without Ray's worker logs."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def show(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "start":
            self.close()
            self.bar = tqdm(total=event["batches"], desc=f"epoch {event['epoch']}/{event['epochs']}",
                            unit="batch", leave=False, disable=None, file=sys.stderr)
        elif kind == "batch" and self.bar is not None:
            self.bar.update(event["done"] - self.bar.n)
        elif kind == "epoch":
            self.close()
            say(f"epoch {event['epoch']}: loss {event['train_loss']:.4f}  valid AUC {event['valid_auc']:.4f}  "
                f"logloss {event['valid_logloss']:.4f}  ({event['epoch_seconds']:.1f}s)")
        elif kind == "sharded":
            tables = ", ".join(f"{n} {how}" for how, n in event["tables"].items())
            say(f"TorchRec DistributedModelParallel: table weights {tables}; tables learn with {event['optimizer']}")
        elif kind == "note":
            say(event["text"])
        elif kind == "resume":
            say(f"resuming after epoch {event['epoch']} (best valid AUC {event['best_valid_auc']:.4f} "
                f"at epoch {event['best_epoch']})")
        elif kind == "stop":
            say(f"early stop: no better valid AUC for {event['patience']} epoch(s)")


def train(job: TrainJob, registry: ArtifactRegistry, model_name: str, storage: str | Path,
          run_name: str | None = None, fresh: bool = False) -> TrainResult:
    """Fit, evaluate the best checkpoint on valid and test, publish it as a new model version.

    Search-then-retrain models (a `retrain_config()` method returning the config they chose, e.g.
    OptInter's interaction method per field pair) are fitted twice: the search run, then a run of
    the chosen config from scratch, which is what gets published; the search is recorded in metrics.

    What follows the fit (building the model from its best weights, evaluating it as it will be
    served, writing the version's files: `finish_run`) runs on the driver for small data and in a Ray
    task for large data, so the driver's memory does not grow with the tables or the splits.
    """
    prepared = PreparedData.load(job.prepared)
    if job.train.sharding != "none":
        check_shardable(prepared.inputs)
    run_name = run_name or f"{model_name}-seed{job.train.seed}"
    runs = [run_name]
    state, best, wall = fit(job, storage, run_name, fresh=fresh)
    limit = job.in_memory_limit()
    large = any(_split_bytes(prepared, split) > limit for split in ("train", "valid", "test"))
    finish = ray.remote(num_cpus=1)(finish_run).remote if large else finish_run
    out = run_dir(storage, run_name) / _VERSION_FILES

    def finished(cfg: Any, best: Path, search_pending: bool) -> dict[str, Any]:
        done = finish(job.prepared, job.model, cfg, str(best), str(out), job.train.eval_batch_size,
                      job.train.seed, search_pending)
        return ray.get(done) if large else done

    cfg = job.model_config
    done = finished(cfg, best, search_pending=True)
    search = None
    if "chosen" in done:
        search = {"config": to_dict(cfg), "valid_auc": state["best_valid_auc"], "epochs": state["epoch"] + 1,
                  "train_seconds": round(state["train_seconds"], 2), "chosen": to_dict(done["chosen"]),
                  **done["search_report"]}
        job, cfg = replace(job, model_config=done["chosen"]), done["chosen"]
        runs.append(f"{run_name}-retrain")
        state, best, retrain_wall = fit(job, storage, runs[-1], fresh=fresh)
        wall += retrain_wall
        done = finished(cfg, best, search_pending=False)

    metrics: dict[str, Any] = {
        "model": job.model,
        "best_epoch": state["best_epoch"] + 1,
        "epochs": state["epoch"] + 1,
        "train_seconds": round(state["train_seconds"] + (search["train_seconds"] if search else 0.0), 2),
        "wall_seconds": round(wall, 2),
        "params": done["params"],
        "history": state["history"],
    }
    if search is not None:
        metrics["search"] = search
    if "sharding" in state:
        metrics["sharding"] = state["sharding"]
    if done["served_as"]:
        metrics["served_as"] = done["served_as"]
    scored = done["scored"]
    importance = scored.pop("importance")
    metrics.update(scored)
    if len(prepared.spec.label_names) > 1:
        metrics["blend"] = prepared.spec.task_blend
    files: dict[str, bytes | str | Path] = {f: out / f for f in done["files"]}
    files["metrics.json"] = json.dumps(metrics, indent=1)
    files["importance.json"] = json.dumps(importance, indent=1)
    files["train.json"] = json.dumps(job.to_dict(), indent=1)
    version = registry.publish(model_name, files, metadata={
        "model": job.model, "spec": prepared.spec.name, "valid_auc": metrics["valid"]["auc"],
        "test_auc": metrics["test"]["auc"], "run": runs[-1],
        **({"blend": metrics["blend"]} if "blend" in metrics else {})})
    shutil.rmtree(out)  # the registry holds its own copies
    for name in runs:
        (run_dir(storage, name) / DONE_MARKER).write_text(json.dumps({"version": version.ref}))
    say(f"published {version.ref}: valid AUC {metrics['valid']['auc']:.4f}, "
        f"test AUC {metrics['test']['auc']:.4f} (best epoch {metrics['best_epoch']})")
    return TrainResult(version, metrics, run_dir(storage, runs[-1]))


def finish_run(prepared_root: str, model_name: str, cfg: Any, best: str, out: str, batch_size: int, seed: int,
               search_pending: bool) -> dict[str, Any]:
    """The fitted model, from its best weights (file `best`), made into a version's files.

    When `search_pending` and the model chose a config to be retrained with (`retrain_config()`), only
    that choice is returned ({"chosen", "search_report"}). Otherwise the model's files as served
    (weights, spec, vocabulary, model.json) are written into folder `out` and it returns their names,
    the parameter count, what changed for serving ("served_as") and `evaluate_published`'s "scored".
    Runs on the driver or, for large data, in a Ray task (`train` chooses)."""
    prepared = PreparedData.load(prepared_root)
    model = build_model(model_name, cfg, prepared.inputs)
    load_state(model, Path(best).read_bytes())
    chosen = model.retrain_config() if search_pending and hasattr(model, "retrain_config") else None
    if chosen is not None:
        return {"chosen": chosen, "search_report": getattr(model, "search_report", dict)()}
    params = sum(p.numel() for p in model.parameters())
    model, served_as = serving_copy(model)  # evaluate what will be served
    out_dir = Path(out)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    files = model_files(model, model_name, cfg, prepared.spec, prepared.vocab, prepared.stats.get("encoders"))
    for name, content in files.items():
        (out_dir / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    names = sorted(files)
    del files
    scored = evaluate_published(model.eval(), prepared, batch_size, seed)
    return {"files": names, "params": params, "served_as": served_as, "scored": scored}


def evaluate_published(model: torch.nn.Module, prepared: PreparedData, batch_size: int, seed: int) -> dict[str, Any]:
    """What a published version records of its model (as it will be served): metrics on valid and test,
    read a chunk at a time; which experts each task uses ({} for a model without gates, then left out);
    permutation importance on the first IMPORTANCE_ROWS validation rows."""
    out: dict[str, Any] = {split: evaluate_rows(model, prepared.rows(split), prepared.inputs, batch_size)
                           for split in ("valid", "test")}
    utilisation = expert_utilisation(model, prepared.rows("valid").batches(batch_size))
    if utilisation:
        out["expert_utilisation"] = utilisation
    out["importance"] = permutation_importance(model, prepared.read_head("valid", IMPORTANCE_ROWS), prepared.inputs,
                                               seed=seed)
    return out


def with_overrides(cfg: TrainConfig, **overrides: Any) -> TrainConfig:
    """TrainConfig with the non-None overrides applied (CLI flags on top of YAML)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return replace(cfg, **given)
    except ValueError as err:
        raise ConfigError(f"train config: {err}") from None
