"""ALIGN: the vision tower and the text tower trained together on a catalog's (item image, title) pairs.

"Scaling Up Visual and Vision-Language Representation Learning With Noisy Text Supervision", Jia, Yang, Xia,
Chen, Parekh, Pham, Le, Sung, Li, Duerig, ICML 2021, https://arxiv.org/abs/2102.05918

Each item gives one pair: its image (the MobileNetV2 vision tower, trained from scratch) and its title (the
text tower: frozen MiniLM sentence vectors and a trained projection, optionally its top layers fine-tuned). Both
towers map to L2-normalised vectors, and the loss is ALIGN's normalised softmax in both directions over the
batch: every image must pick its own title among the batch's titles, every title its own image
(`align_loss`). The softmax temperature is learned with the towers, as in the paper; it is parameterised by
its log and starts at 0.07 (CLIP's start, "Learning Transferable Visual Models From Natural Language
Supervision", Radford et al. 2021), kept within [0.01, 1] so the logits neither vanish nor explode.

The loss is averaged over the Matryoshka widths ("Matryoshka Representation Learning", Kusupati et al., NeurIPS
2022, https://arxiv.org/abs/2205.13147): the first m values of both towers' vectors must align on their own for
every m in `dims`, so an 8-wide prefix can stand in for the 64-wide vector. One temperature serves all widths.

It runs as its own Ray Train job (TorchTrainer). Every worker holds the whole catalog (decoded once on the
driver: 64x64 images are 12 KiB each) and the same seeded order of items per epoch; each global batch is split
evenly over the workers, and with more than one worker the embeddings are gathered from every worker before the
softmax, as the paper does over its TPU cores, so that the negatives are the whole global batch (the gather is
autograd-aware, and DDP averages the towers' gradients: the gradient is that of the global-batch loss).
BatchNorm in the vision tower normalises by each worker's share of the batch.

BatchNorm's running statistics trail the weights while a network trains from scratch (they average over steps
whose weights are gone), and the eval-mode vectors that `encode` gives were poor after short runs. Before each
validation, and so before publishing, the running statistics are recomputed: a pass over (up to
`BN_RECOMPUTE_IMAGES`) training images in train mode without gradients, averaging the batches' statistics
(`recompute_batch_norm`; "Rethinking 'Batch' in BatchNorm", Wu and Johnson, 2021, https://arxiv.org/abs/2105.07576,
calls this PreciseBN).

Validation: a seeded share of the items is held out of training; per epoch, image->text recall@1 and @5 among
the held-out items at the largest and the smallest width. A hit is the item's own title among the k most similar
titles; a title that is the same text as the item's own (two items may share a title) counts as its own, since
no encoder can tell them apart.

    >>> result = align(load_spec("spec.yaml"), "title", "image", ArtifactRegistry("artifacts"), "synthetic",
    ...                AlignConfig(epochs=20))
    >>> result["text"], result["image"]        # "synthetic-text@v0001", "synthetic-image@v0001"
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.train
import torch
import torch.nn.functional as F
from ray.train import Checkpoint, RunConfig, ScalingConfig
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from muxrec.artifacts import ArtifactRegistry
from muxrec.errors import ConfigError, MuxrecError
from muxrec.log import say
from muxrec.models.encoders.content import load_encoder, publish_encoder, read_images
from muxrec.models.encoders.matryoshka import check_dims, matryoshka_loss, matryoshka_prefix
from muxrec.models.encoders.text import TextTower, TextTowerConfig, build_text_tower
from muxrec.models.encoders.vision import VisionTower, VisionTowerConfig, as_image_tensor, build_vision_tower
from muxrec.pipelines.io import collect
from muxrec.pipelines.progress import ProgressFollower, ProgressLog, fit_trainer
from muxrec.pipelines.sources import source_dataset
from muxrec.pipelines.train import process_settings_kept
from muxrec.pipelines.trainer import TorchTrainer, job_of
from muxrec.ray_env import ensure_ray
from muxrec.spec import FeatureSpec, SourceSpec

TEMPERATURE_MIN, TEMPERATURE_MAX = 0.01, 1.0  # the learned temperature stays within these
BN_RECOMPUTE_IMAGES = 2048  # training images whose train-mode pass recomputes BatchNorm's running statistics
RECALL_AT = (1, 5)
_WEIGHTS = "towers.safetensors"  # the final checkpoint: both towers' trainable parameters
_STATE = "state.json"
_PROGRESS = "progress.jsonl"
_FINAL = "checkpoint_in_process"  # the final checkpoint of a num_workers 0 run, in its run folder


@dataclass(frozen=True)
class AlignConfig:
    """ALIGN training hyper-parameters.

    Args:
        epochs: passes over the training items (default 20: the 360 training items of the 400-item synthetic
            catalog take about 45 s on one core, and its held-out recall stopped improving after 15 to 20).
        batch_size: pairs per global batch, split evenly over the workers; the softmax of each pair runs over
            the whole batch (default 64). The last partial batch of an epoch is dropped (the order changes per
            epoch); catalogs smaller than a batch train on one batch of all their training items.
        lr: AdamW's peak learning rate, reached after a linear warm-up over the first epoch and decayed to 0 by
            a cosine (default 5e-3: on 400 synthetic items, 2e-3 had found the topic of 62% of the held-out
            images after 20 epochs, 5e-3 of 97%).
        weight_decay: AdamW's decoupled weight decay on weight matrices and kernels; biases, BatchNorm and the
            temperature get none (default 0.05).
        seed: initial weights, the held-out items, batch order, augmentation.
        width_mult: the MobileNetV2 width multiplier (default 0.5).
        image_size: the side of the square images the vision tower reads; item images are resized to it
            (default 64).
        dims: the Matryoshka widths of both towers (default (8, 16, 32, 64)).
        fine_tune_layers: MiniLM's top layers that train with the text projection (default 0: the encoder is
            frozen and its sentence vectors are computed once, so only the projection trains).
        valid_share: the share of items held out for validation retrieval (default 0.1).
        temperature_init: the softmax temperature at the start, in [0.01, 1] (default 0.07).
        num_workers: Ray Train workers (default 1); 0 runs the same loop in this process (Ray Train's local
            mode: no worker process to start).
        flip: flip each training image left-right with probability 1/2 (default True).
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 0.05
    seed: int = 0
    width_mult: float = 0.5
    image_size: int = 64
    dims: tuple[int, ...] = (8, 16, 32, 64)
    fine_tune_layers: int = 0
    valid_share: float = 0.1
    temperature_init: float = 0.07
    num_workers: int = 1
    flip: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (0: in this process), got {self.num_workers}")
        if self.batch_size < 2 * max(1, self.num_workers):
            raise ValueError(f"batch_size must be >= 2 per worker (a softmax over one pair learns nothing), "
                             f"got {self.batch_size} for {self.num_workers} worker(s)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 < self.valid_share < 1.0:
            raise ValueError(f"valid_share must be in (0, 1), got {self.valid_share}")
        if not TEMPERATURE_MIN <= self.temperature_init <= TEMPERATURE_MAX:
            raise ValueError(f"temperature_init must be in [{TEMPERATURE_MIN}, {TEMPERATURE_MAX}], "
                             f"got {self.temperature_init}")
        if self.fine_tune_layers < 0:
            raise ValueError(f"fine_tune_layers must be >= 0, got {self.fine_tune_layers}")
        check_dims(self.dims)
        self.vision()  # width_mult and image_size are checked by the tower's config

    def vision(self) -> VisionTowerConfig:
        return VisionTowerConfig(width_mult=self.width_mult, image_size=self.image_size, dims=self.dims)

    def text(self) -> TextTowerConfig:
        return TextTowerConfig(fine_tune_layers=self.fine_tune_layers, dims=self.dims)


# ---- the model and the loss -------------------------------------------------------------------------------


class AlignPair(nn.Module):
    """The two towers and the learned softmax temperature (as the log of its inverse, the logit scale).

    Args:
        vision: the image tower.
        text: the text tower.
        temperature: the starting temperature.
    """

    def __init__(self, vision: VisionTower, text: TextTower, temperature: float = 0.07):
        super().__init__()
        self.vision = vision
        self.text = text
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def logit_scale(self) -> Tensor:
        """1 / temperature, within [1 / TEMPERATURE_MAX, 1 / TEMPERATURE_MIN] (the gradient stops at the bounds)."""
        return self.log_scale.clamp(-math.log(TEMPERATURE_MAX), -math.log(TEMPERATURE_MIN)).exp()

    def forward(self, images: Tensor, text: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """
        Args:
            images: (B, 3, S, S) in [0, 1].
            text: the frozen encoder's sentence vectors (B, 384), computed once, or (token_ids, mask), each (B, L),
                when MiniLM layers train.
        Returns:
            image projections (B, max(dims)), text projections (B, max(dims)), both not normalised, and the
            logit scale ().
        """
        z_text = self.text.projection(text) if isinstance(text, Tensor) else self.text(*text)  # (B, max(dims))
        return self.vision(images), z_text, self.logit_scale()


def align_loss(image: Tensor, text: Tensor, logit_scale: Tensor) -> Tensor:
    """ALIGN's symmetric in-batch softmax loss: the mean of the image->text and text->image cross-entropies.

    Row i of `image` and row i of `text` are a pair; every other row of the batch is a negative. Both are
    L2-normalised here, so the logits are cosine similarities times `logit_scale` (1 / temperature).

    Args:
        image: (B, D) image embeddings.
        text: (B, D) text embeddings.
        logit_scale: () 1 / temperature.
    Returns:
        a scalar; log(B) for embeddings that tell nothing apart.
    """
    if image.shape != text.shape or image.dim() != 2:
        raise ValueError(f"image and text must both be (B, D), got {tuple(image.shape)} and {tuple(text.shape)}")
    logits = logit_scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T  # (B, B) image i vs text j
    target = torch.arange(len(logits), device=logits.device)  # (B,)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def matryoshka_align_loss(image: Tensor, text: Tensor, logit_scale: Tensor, dims: Sequence[int]) -> Tensor:
    """`align_loss` of the first m values of both towers' embeddings, averaged over the widths m in `dims`.

    Args:
        image: (B, D) image embeddings, D >= max(dims).
        text: (B, D) text embeddings.
        logit_scale: () 1 / temperature, shared by every width.
        dims: the Matryoshka widths.
    Returns:
        a scalar (the mean over widths, so that log(B) is still chance).
    """
    b = len(image)
    both = torch.cat([image, text])  # (2B, D): matryoshka_loss slices the last dim, the batch halves stay pairs
    return matryoshka_loss(lambda z: align_loss(z[:b], z[b:], logit_scale), both, dims,
                           weights=[1.0 / len(dims)] * len(dims))


def retrieval_recall(image: Tensor, text: Tensor, titles: Sequence[str], ks: Sequence[int] = RECALL_AT
                     ) -> dict[int, float]:
    """Image->text recall@k: the share of images whose own title is among the k titles most similar to them.

    A title with the same text as the image's own counts as its own (identical texts have identical vectors).

    Args:
        image: (N, D) unit image vectors.
        text: (N, D) unit text vectors; row i is image i's title.
        titles: (N,) the titles, to find identical ones.
        ks: the cut-offs.
    Returns:
        k -> recall@k.
    """
    codes = torch.from_numpy(np.unique(np.asarray(titles, dtype=object).astype(str), return_inverse=True)[1])  # (N,)
    same = codes[:, None] == codes[None, :]  # (N, N) identical titles
    ranked = (image @ text.T).argsort(dim=1, descending=True)  # (N, N) titles by similarity, per image
    hits = torch.gather(same, 1, ranked)  # (N, N) whether the title at rank r is the image's own text
    return {k: float(hits[:, :k].any(dim=1).float().mean()) for k in ks}


@torch.no_grad()
def recompute_batch_norm(vision: VisionTower, pixels: np.ndarray, batch_size: int) -> None:
    """Replace BatchNorm's running statistics by those of a train-mode pass over `pixels` (uint8 (N, S, S, 3)) in
    batches of `batch_size`: PreciseBN (see the module docstring).

    Each batch is weighted by its size, so the running mean is the exact mean over the pass, and the running
    variance the size-weighted mean of the batches' (unbiased) variances: the batch statistics that train mode
    normalises by, on average.
    """
    norms = [m for m in vision.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = vision.training
    try:
        for m in norms:
            m.reset_running_stats()
        vision.train()
        for start in range(0, len(pixels), batch_size):
            batch = as_image_tensor(pixels[start: start + batch_size])  # (b, 3, S, S)
            for m in norms:
                m.momentum = len(batch) / (start + len(batch))  # running = the size-weighted mean so far
            vision(batch)  # (b, max(dims)): only the statistics matter
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        vision.train(was_training)


# ---- the job ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AlignJob:
    """What the Ray Train workers receive: the config and the whole catalog, decoded."""

    cfg: AlignConfig
    pixels: np.ndarray  # (N, S, S, 3) uint8, one image per item
    titles: tuple[str, ...]  # (N,)
    train: np.ndarray  # item rows that train
    valid: np.ndarray  # item rows held out
    threads: int = 1  # torch threads per worker
    progress_file: str = ""
    run_folder: str = ""  # where a run in this process (num_workers 0) leaves its final checkpoint


def build_pair(cfg: AlignConfig) -> AlignPair:
    """Both towers, freshly initialised from cfg.seed (the same weights on every worker)."""
    torch.manual_seed(cfg.seed)
    return AlignPair(build_vision_tower(cfg.vision()), build_text_tower(cfg.text()), cfg.temperature_init)


def _sentence_vectors(text: TextTower, titles: Sequence[str], batch_size: int = 256) -> Tensor:
    """The frozen encoder's (N, 384) vectors of `titles`, once, for a run that trains only the projection."""
    with torch.inference_mode():
        return torch.cat([text.encoder(*text.tokenize(titles[i: i + batch_size]))
                          for i in range(0, len(titles), batch_size)]).clone()  # (N, 384)


def _param_groups(pair: AlignPair, weight_decay: float) -> list[dict[str, Any]]:
    """Decay on weight matrices and kernels only (not biases, BatchNorm, the temperature)."""
    trainable = [p for p in pair.parameters() if p.requires_grad]
    return [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]


def _schedule(step: int, warmup: int, total: int) -> float:
    """The learning rate's multiplier: linear warm-up, then a cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def gather_embeddings(z: Tensor, world: int) -> Tensor:
    """(b, D) per worker -> (world * b, D) in rank order, with gradients flowing back to each worker's rows."""
    if world == 1:
        return z
    import torch.distributed.nn.functional as dist_nn

    return torch.cat(dist_nn.all_gather(z))  # (world * b, D)


def train_pair(job: AlignJob, rank: int = 0, world: int = 1, net: nn.Module | None = None,
               pair: AlignPair | None = None,
               on_epoch: Callable[[dict[str, Any]], None] | None = None) -> tuple[AlignPair, list[dict[str, Any]]]:
    """The training loop, on one worker: `net` is `pair` itself or its DDP wrapper; `on_epoch(metrics)` is called
    after every epoch. Returns the trained pair (BatchNorm statistics recomputed) and the per-epoch metrics."""
    cfg = job.cfg
    pair = build_pair(cfg) if pair is None else pair
    net = pair if net is None else net
    frozen_text = cfg.fine_tune_layers == 0
    sentences = _sentence_vectors(pair.text, job.titles) if frozen_text else None  # (N, 384)

    def text_inputs(rows: np.ndarray) -> Tensor | tuple[Tensor, Tensor]:
        return sentences[torch.from_numpy(rows)] if frozen_text else pair.text.tokenize([job.titles[i] for i in rows])

    batch = max(world, min(cfg.batch_size, len(job.train)) // world * world)  # global, a multiple of world
    per_worker = batch // world
    steps = max(1, len(job.train) // batch)
    optimizer = torch.optim.AdamW(_param_groups(pair, cfg.weight_decay), lr=cfg.lr, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _schedule(s, warmup=steps, total=steps * cfg.epochs))
    bn_rows = np.random.default_rng([cfg.seed, 1]).permutation(job.train)[:BN_RECOMPUTE_IMAGES]
    history = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, 2, epoch])  # the same on every worker
        order = rng.permutation(job.train)
        flips = rng.random(len(order)) < 0.5
        pair.train()
        total = 0.0
        for step in range(steps):
            lo = step * batch + rank * per_worker
            rows = order[lo: lo + per_worker]
            images = as_image_tensor(job.pixels[rows])  # (b, 3, S, S)
            if cfg.flip:
                flip = torch.from_numpy(flips[lo: lo + per_worker])[:, None, None, None]  # (b, 1, 1, 1)
                images = torch.where(flip, images.flip(-1), images)  # (b, 3, S, S)
            z_image, z_text, scale = net(images, text_inputs(rows))  # (b, D), (b, D), ()
            loss = matryoshka_align_loss(gather_embeddings(z_image, world), gather_embeddings(z_text, world), scale,
                                         cfg.dims)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
        # Every worker holds the same weights and rows: each recomputes the statistics and validates alike.
        recompute_batch_norm(pair.vision, job.pixels[bn_rows], per_worker)
        recall = validate(pair, job, sentences)
        temperature = 1.0 / float(pair.logit_scale().detach())
        metrics = {"epoch": epoch + 1, "loss": total / steps, "temperature": temperature,
                   "valid_recall": {str(d): r for d, r in recall.items()}, "seconds": time.perf_counter() - t0}
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    return pair, history


def validate(pair: AlignPair, job: AlignJob, sentences: Tensor | None = None) -> dict[int, dict[str, float]]:
    """Image->text recall@1 and @5 among the held-out items, at the smallest and the largest width (eval mode)."""
    titles = [job.titles[i] for i in job.valid]
    out = {}
    for dim in sorted({job.cfg.dims[0], job.cfg.dims[-1]}):
        image = pair.vision.encode(job.pixels[job.valid], dim=dim)  # (V, dim)
        if sentences is not None:
            pair.text.eval()
            with torch.inference_mode():
                text = matryoshka_prefix(pair.text.projection(sentences[torch.from_numpy(job.valid)]), dim)  # (V, dim)
        else:
            text = pair.text.encode(titles, dim=dim)  # (V, dim)
        out[dim] = {f"recall_at_{k}": r for k, r in retrieval_recall(image, text, titles).items()}
    return out


def _trainable(tower: nn.Module) -> dict[str, Tensor]:
    frozen = {n for n, p in tower.named_parameters() if not p.requires_grad}
    return {k: v.detach().contiguous() for k, v in tower.state_dict().items() if k not in frozen}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    job: AlignJob = job_of(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(job.threads)
    progress = ProgressLog(job.progress_file, rank == 0 and bool(job.progress_file))
    pair = build_pair(job.cfg)
    net = ray.train.torch.prepare_model(pair) if world > 1 else pair

    def on_epoch(metrics: dict[str, Any]) -> None:
        progress.emit(kind="epoch", epochs=job.cfg.epochs, **metrics)
        if metrics["epoch"] < job.cfg.epochs:
            ray.train.report(metrics)

    try:
        pair, history = train_pair(job, rank, world, net, pair, on_epoch)
        state = {**{f"vision.{k}": v for k, v in _trainable(pair.vision).items()},
                 **{f"text.{k}": v for k, v in _trainable(pair.text).items()}}

        def write_checkpoint(d: Path) -> Checkpoint:
            (d / _WEIGHTS).write_bytes(save_safetensors(state))
            (d / _STATE).write_text(json.dumps({"history": history, "log_scale": float(pair.log_scale.detach())}))
            return Checkpoint.from_directory(d)

        if job.cfg.num_workers == 0:  # Ray Train's local mode copies no checkpoint: it stays in the run folder
            final = Path(job.run_folder) / _FINAL
            final.mkdir(exist_ok=True)
            ray.train.report(history[-1], checkpoint=write_checkpoint(final))
        else:
            with tempfile.TemporaryDirectory() as d:  # Ray Train copies it into the run folder
                ray.train.report(history[-1], checkpoint=write_checkpoint(Path(d)) if rank == 0 else None)
    finally:
        progress.close()


# ---- the driver -------------------------------------------------------------------------------------------


def _distinct_pairs(batch: pa.Table, image_column: str, text_column: str) -> pa.Table:
    """A block's distinct (image, text) pairs with neither null nor empty."""
    keep = pc.and_(pc.greater(pc.utf8_length(pc.fill_null(batch[image_column], "")), 0),
                   pc.greater(pc.utf8_length(pc.fill_null(batch[text_column], "")), 0))
    return batch.filter(keep).group_by([image_column, text_column]).aggregate([])


def catalog_pairs(source: SourceSpec, image_column: str, text_column: str) -> tuple[list[str], list[str]]:
    """One (image path, title) per item of a source, sorted by image path (so nothing depends on row order).

    Rows are reduced to their distinct pairs inside Ray Data; an image found with several titles keeps the
    first in sort order. Rows whose image or title is missing or empty are left out.
    """
    ds = source_dataset(source)
    names = ds.schema().names
    for column in (image_column, text_column):
        if column not in names:
            raise ConfigError(f"source has no column {column!r}; columns: {names}")
    schema = pa.schema([(image_column, pa.string()), (text_column, pa.string())])
    pairs = collect(ds.select_columns([image_column, text_column]).map_batches(
        _distinct_pairs, fn_kwargs={"image_column": image_column, "text_column": text_column},
        batch_format="pyarrow", batch_size=None), schema)
    pairs = pairs.group_by([image_column, text_column]).aggregate([]).sort_by([(image_column, "ascending"),
                                                                                (text_column, "ascending")])
    images, titles = pairs[image_column].to_pylist(), pairs[text_column].to_pylist()
    keep = [i for i in range(len(images)) if i == 0 or images[i] != images[i - 1]]  # (items,)
    return [images[i] for i in keep], [titles[i] for i in keep]


def split_items(n: int, valid_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of n items into (train rows, held-out rows), each sorted; at least 2 of each."""
    n_valid = int(round(n * valid_share))
    if n_valid < 2 or n - n_valid < 2:
        raise ConfigError(f"{n} items leave {n_valid} to validate and {n - n_valid} to train; ALIGN needs at least "
                          f"2 of each (a larger catalog or another valid_share)")
    order = np.random.default_rng([seed, 0]).permutation(n)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def _threads(cpus: int, workers: int) -> int:
    """Torch threads per worker: the cluster's CPUs shared by the workers, at most OMP_NUM_THREADS when set."""
    threads = max(1, cpus // workers)
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(limit)) if limit.isdigit() and int(limit) > 0 else threads


def _show(event: dict[str, Any]) -> None:
    recall = event["valid_recall"]
    widths = sorted(recall, key=int)
    parts = "  ".join(f"R@1 {recall[w]['recall_at_1']:.3f} R@5 {recall[w]['recall_at_5']:.3f} at {w}"
                      for w in reversed(widths))
    say(f"align epoch {event['epoch']}/{event['epochs']}: loss {event['loss']:.4f}  temperature "
        f"{event['temperature']:.4f}  valid {parts}  ({event['seconds']:.1f}s)")


def fit_pair(job: AlignJob, pair: AlignPair, storage: Path, run_name: str) -> list[dict[str, Any]]:
    """Run the Ray Train job and load the trained weights (as rank 0 left them) into `pair`, built from the same
    config; returns the per-epoch metrics."""
    cfg = job.cfg
    cpus = int(ray.cluster_resources().get("CPU", 1))
    folder = storage / run_name
    folder.mkdir(parents=True, exist_ok=True)
    progress_file = folder / _PROGRESS
    progress_file.unlink(missing_ok=True)
    workers = max(1, cfg.num_workers)
    job = replace(job, threads=_threads(cpus, workers), progress_file=str(progress_file), run_folder=str(folder))
    trainer = TorchTrainer(
        train_loop_per_worker,
        job=job,
        process_group=cfg.num_workers > 1,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=False,
                                     resources_per_worker={"CPU": min(1.0, cpus / workers)}),
        run_config=RunConfig(name=run_name, storage_path=str(storage)),
    )
    with ProgressFollower(progress_file, _show), process_settings_kept():
        result = fit_trainer(trainer)
    if result.checkpoint is None:
        raise MuxrecError(f"ALIGN run {run_name} produced no checkpoint")
    with result.checkpoint.as_directory() as d:
        weights = load_safetensors((Path(d) / _WEIGHTS).read_bytes())
        state = json.loads((Path(d) / _STATE).read_text())
    for prefix, tower in (("vision.", pair.vision), ("text.", pair.text)):
        part = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        missing, unexpected = tower.load_state_dict(part, strict=False)
        if unexpected or set(_trainable(tower)) & set(missing):
            raise MuxrecError(f"ALIGN run {run_name}: its checkpoint does not fit the {prefix[:-1]} tower")
    with torch.no_grad():
        pair.log_scale.fill_(state["log_scale"])
    return state["history"]


def align(spec: FeatureSpec, text_column: str, image_column: str, registry: ArtifactRegistry, name: str,
          cfg: AlignConfig = AlignConfig(), storage: str | Path | None = None) -> dict[str, Any]:
    """Train both towers by ALIGN on the items of `spec`'s source and publish them as `<name>-text` and
    `<name>-image`.

    Args:
        spec: a spec whose source rows carry an image path and a title per item (e.g. synthetic with image_dir).
        text_column: the source column of titles.
        image_column: the source column of image paths.
        registry: where both encoders are published.
        name: the registry name prefix.
        cfg: hyper-parameters.
        storage: Ray Train's storage folder for the run (default: a temporary folder, removed afterwards).
    Returns:
        {"text": ref, "image": ref, "valid_recall_at_1": ..., "valid_recall_at_5": ... (image->text at the
        largest width, of the published encoders), "valid_recall": {width: {...}} (the smallest and the largest
        width), "valid_items": ..., "train_items": ..., "epochs": ..., "seconds": ..., "history": [...]}.
    """
    t0 = time.perf_counter()
    try:
        pair = build_pair(cfg)  # here first, so that a config the towers refuse fails before any work
    except ValueError as err:
        raise ConfigError(f"AlignConfig: {err}") from None
    ensure_ray()
    images, titles = catalog_pairs(spec.source, image_column, text_column)
    train_rows, valid_rows = split_items(len(images), cfg.valid_share, cfg.seed)
    say(f"ALIGN on {len(images)} items of {spec.name} ({len(train_rows)} train, {len(valid_rows)} held out): "
        f"decoding images at {cfg.image_size}x{cfg.image_size}")
    pixels = read_images(images, cfg.image_size, image_column)  # (N, S, S, 3)
    job = AlignJob(cfg, pixels, tuple(titles), train_rows, valid_rows)
    run_name = f"align-{name}"
    if storage is None:
        with tempfile.TemporaryDirectory(prefix="muxrec-align-") as d:
            history = fit_pair(job, pair, Path(d), run_name)
    else:
        history = fit_pair(job, pair, Path(storage).resolve(), run_name)

    common = {"align": {**asdict(cfg), "dims": list(cfg.dims)}, "epochs": cfg.epochs, "items": len(images),
              "valid_items": len(valid_rows), "source": spec.name, "text_column": text_column,
              "image_column": image_column, "temperature": 1.0 / float(pair.logit_scale().detach())}
    final = history[-1]["valid_recall"]
    top = str(cfg.dims[-1])
    recall = {"valid_recall_at_1": final[top]["recall_at_1"], "valid_recall_at_5": final[top]["recall_at_5"]}
    image_version = publish_encoder(registry, f"{name}-image", pair.vision, "image", {**common, **recall})
    image_ref = f"{image_version.name}@{image_version.version}"
    text_version = publish_encoder(registry, f"{name}-text", pair.text, "text", {**common, **recall,
                                                                                  "image_encoder": image_ref})
    text_ref = f"{text_version.name}@{text_version.version}"

    # The reported recall is that of the published versions, read back (hash-checked) and in eval mode.
    image_enc, text_enc = load_encoder(registry, image_ref), load_encoder(registry, text_ref)
    valid_titles = [titles[i] for i in valid_rows]
    published = {}
    for dim in sorted({cfg.dims[0], cfg.dims[-1]}):
        got = retrieval_recall(torch.from_numpy(image_enc.encode(pixels[valid_rows], dim)),
                               torch.from_numpy(text_enc.encode(valid_titles, dim)), valid_titles)
        published[str(dim)] = {f"recall_at_{k}": r for k, r in got.items()}
    seconds = time.perf_counter() - t0
    say(f"published {text_ref} and {image_ref}: valid image->text recall@1 {published[top]['recall_at_1']:.3f}, "
        f"@5 {published[top]['recall_at_5']:.3f} at {top} dims over {len(valid_rows)} held-out items "
        f"({seconds:.0f}s)")
    return {"text": text_ref, "image": image_ref,
            "valid_recall_at_1": published[top]["recall_at_1"], "valid_recall_at_5": published[top]["recall_at_5"],
            "valid_recall": published, "valid_items": len(valid_rows), "train_items": len(train_rows),
            "epochs": cfg.epochs, "seconds": round(seconds, 2), "temperature": common["temperature"],
            "history": history}
