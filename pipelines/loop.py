"""One training step's worth of logic, shared by the Ray Train workers and in-process tuning.

A model may define `regularization() -> Tensor`, added to the loss (a search penalty, a sparsity
term); the trainer knows nothing else about a model beyond `forward(batch) -> (B, T) logits`.
The loss is `Objective`: binary cross-entropy per task, plus the task's grade cut points when the
spec declares `grades:` for its label.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchrec import KeyedJaggedTensor
from torchrec import optim as trec_optim

from muxrec.config import TASK_WEIGHTINGS, TrainConfig
from muxrec.encoding import OOV_ID
from muxrec.errors import ConfigError
from muxrec.metrics import binary_metrics
from muxrec.models import Batch, EncodedRows
from muxrec.models.layers.multitask import conditional_log_probs
from muxrec.models.layers.tables import PrunedTable
from muxrec.pipelines.sparse import LazyAdam, use_sparse_gradients
from muxrec.spec import ModelInputs


class Rows(Protocol):
    """What the loop trains on: rows in memory (`EncodedRows`) or a streamed shard of them."""

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Batches in order, or shuffled by `generator` (a replayable order)."""
        ...


# How tables learn when they do not learn with Adam: dense optimizers that TorchRec maps to the
# fused kernels (fbgemm) that sharded tables train with, so a sharded run and an unsharded one take
# the same step (row-wise Adagrad is TorchRec's own; its Adagrad and SGD classes are placeholders). They update a row only through its gradient: with embedding_l2 > 0 the dense ones
# decay every row each step, the fused ones only the rows a batch touched.
TABLE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adagrad": torch.optim.Adagrad, "rowwise_adagrad": trec_optim.RowWiseAdagrad, "sgd": torch.optim.SGD}
TABLE_EPS = 1e-8  # Adagrad's epsilon, the same for the dense and the fused kernels


def table_optimizer_kwargs(cfg: TrainConfig) -> dict[str, float]:
    kwargs = {"lr": cfg.table_lr, "weight_decay": cfg.embedding_l2}
    return kwargs if cfg.table_optimizer == "sgd" else {**kwargs, "eps": TABLE_EPS}


def table_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the model's embedding tables (torch or TorchRec modules), in module order."""
    return [p for m in model.modules() if isinstance(m, (nn.EmbeddingBag, nn.Embedding)) for p in m.parameters()]


def empty_parameters(model: nn.Module) -> list[str]:
    """Names of parameters with no elements (a spec without numeric features): they never get a
    gradient, so DDP must be told to skip them."""
    return [name for name, p in model.named_parameters() if p.numel() == 0]


class Optimizers:
    """Several optimizers stepped as one: the tables' own beside Adam for the rest of the model."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict[str, Any]:
        return {str(i): o.state_dict() for i, o in enumerate(self.optimizers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, o in enumerate(self.optimizers):
            o.load_state_dict(state[str(i)])


def make_optimizer(model: nn.Module, cfg: TrainConfig, tables: list[nn.Parameter] | None = None,
                   exclude: set[int] = frozenset()) -> torch.optim.Optimizer | Optimizers:
    """Adam; embedding tables get embedding_l2, everything else weight_decay.

    `tables` (default: every torch / TorchRec embedding module's weights) learn with
    `cfg.table_optimizer`: with the rest in Adam, or with their own optimizer. Parameters whose id is
    in `exclude` are left out (sharded tables whose optimizer is fused into TorchRec's kernels).
    The fused Adam kernel updates every parameter in one pass; torch's default on CPU loops over
    tensors in Python (measured on DeepFM [256, 128]: a third of the time of a training step's backward).
    Under Adam, tables over `cfg.sparse_table_rows` rows are switched to sparse gradients here and
    learn with `LazyAdam` (pipelines/sparse.py), so a model must be trained with the optimizer made for it.
    """
    tables = table_parameters(model) if tables is None else tables
    ids = {id(p) for p in tables}
    embedding = [p for p in tables if id(p) not in exclude]
    other = [p for p in model.parameters() if id(p) not in ids and id(p) not in exclude]
    if cfg.table_optimizer == "adam":
        large = {id(p) for p in use_sparse_gradients(model, cfg.sparse_table_rows)} if cfg.lazy_tables else set()
        adam = torch.optim.Adam([{"params": [p for p in embedding if id(p) not in large],
                                  "weight_decay": cfg.embedding_l2, "lr": cfg.table_lr},
                                 {"params": other, "weight_decay": cfg.weight_decay}], lr=cfg.lr, fused=True)
        if not large:
            return adam
        return Optimizers(adam, LazyAdam([p for p in embedding if id(p) in large], lr=cfg.table_lr,
                                         weight_decay=cfg.embedding_l2))
    parts = [torch.optim.Adam(other, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)] if other else []
    if embedding:
        parts.append(TABLE_OPTIMIZERS[cfg.table_optimizer](embedding, **table_optimizer_kwargs(cfg)))
    return parts[0] if len(parts) == 1 else Optimizers(*parts)


class Objective:
    """The training loss over every target a batch carries: each task's binary cross-entropy, blended.

    A task t predicts logit s. A task whose label declares grades g_1..g_K also trains
    P(source >= g_k) = sigmoid(s + offset_k): one score, K + 1 cut points (cumulative link, see
    `muxrec.spec.LabelSpec`). The offsets are fixed, not learned: the gap in log-odds between each
    grade's positive rate and the task's in the training split. That keeps them out of the model
    (the served model is unchanged: it predicts the task) and out of checkpoints; learning them
    measured no better on ML-100K validation (DeepFM 0.7928 learned vs 0.7921 fixed).

    Several tasks are weighed by `weighting`:
      fixed         the spec's label weights: sum over columns of w * BCE / sum of w (a grade column
                    carries its task's weight), so equal weights give the plain mean over columns;
      uncertainty   learned: sum over tasks of exp(-s_t) * L_t + s_t / 2, with s_t = log sigma_t^2 a
                    parameter of this objective ("Multi-Task Learning Using Uncertainty to Weigh Losses
                    for Scene Geometry and Semantics", Kendall, Gal, Cipolla, CVPR 2018).
    With `masked` (a model with `funnel: masked`), a task with a parent learns P(task | parent) from
    its parent's positive rows only (label masks): the model's outputs are entire-space, so the
    conditional is their ratio (`conditional_log_probs`).
    """

    def __init__(self, inputs: ModelInputs, rates: Mapping[str, float], weighting: str = "fixed",
                 masked: bool = False):
        """rates: the training positive rate of each grade column and of its task."""

        def log_odds(column: str) -> float:
            r = min(max(float(rates[column]), 1e-4), 1 - 1e-4)
            return math.log(r / (1 - r))

        if weighting not in TASK_WEIGHTINGS:
            raise ValueError(f"task weighting must be one of {TASK_WEIGHTINGS}, got {weighting!r}")
        self.num_tasks = len(inputs.tasks)
        self.grades: list[tuple[int, int, Tensor]] = []  # (task, first label column, (K,) offsets)
        column = self.num_tasks
        for t, task in enumerate(inputs.tasks):
            grades = inputs.grades.get(task, ())
            if grades:
                offsets = torch.tensor([log_odds(g) - log_odds(task) for g in grades], dtype=torch.float32)
                self.grades.append((t, column, offsets))
            column += len(grades)
        self.weights = torch.tensor([inputs.weights.get(t, 1.0) for t in inputs.tasks], dtype=torch.float32)
        self.parents = [inputs.parent_index(t) for t in inputs.tasks] if masked else [None] * self.num_tasks
        self.weighting = weighting
        self.log_vars = nn.Parameter(torch.zeros(self.num_tasks)) if weighting == "uncertainty" else None
        self._plain = weighting == "fixed" and bool((self.weights == 1).all()) and not any(
            p is not None for p in self.parents)

    @classmethod
    def fit(cls, rows: EncodedRows, weighting: str = "fixed", masked: bool = False) -> Objective:
        """Rates from these rows (the trainer passes the whole training split's rates instead)."""
        means = rows.labels.double().mean(0).tolist() if len(rows) else [0.5] * len(rows.inputs.label_columns)
        return cls(rows.inputs, dict(zip(rows.inputs.label_columns, means)), weighting, masked)

    def parameters(self) -> list[nn.Parameter]:
        """What the objective itself learns (the uncertainty weights), to be optimised with the model."""
        return [self.log_vars] if self.log_vars is not None else []

    def state(self) -> list[float]:
        return self.log_vars.detach().tolist() if self.log_vars is not None else []

    def load_state(self, values: list[float]) -> None:
        if self.log_vars is not None and values:
            with torch.no_grad():
                self.log_vars.copy_(torch.tensor(values))

    def task_weights(self) -> dict[int, float]:
        """The weight each task's loss gets now: the fixed ones, or exp(-s_t) learned."""
        w = torch.exp(-self.log_vars.detach()) if self.log_vars is not None else self.weights
        return dict(enumerate(w.tolist()))

    def sync_gradients(self) -> None:
        """Average the objective's own gradients over DDP ranks (the model's are averaged by DDP)."""
        if self.log_vars is not None and self.log_vars.grad is not None and dist.is_initialized() \
                and dist.get_world_size() > 1:
            dist.all_reduce(self.log_vars.grad)
            self.log_vars.grad /= dist.get_world_size()

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        """logits (B, T_out) for the first T_out tasks; labels (B, tasks + grade columns)."""
        predicted = logits.shape[1]
        if self._plain:
            scores, targets = [logits], [labels[:, :predicted]]
            for t, column, offsets in self.grades:
                if t < predicted:
                    scores.append(logits[:, t:t + 1] + offsets)  # (B, K)
                    targets.append(labels[:, column:column + len(offsets)])
            return nn.functional.binary_cross_entropy_with_logits(torch.cat(scores, 1), torch.cat(targets, 1))
        # Per task: the sum of its columns' mean losses and how many columns that is.
        sums: list[Tensor] = []
        counts: list[int] = []
        for t in range(predicted):
            p = self.parents[t]
            if p is not None and p < predicted:
                log_q, log_not_q = conditional_log_probs(logits[:, t], logits[:, p])  # (B,), (B,)
                y, rows = labels[:, t], labels[:, p]  # rows: the parent's positives
                bce = -(y * log_q + (1 - y) * log_not_q)  # (B,)
                sums.append((bce * rows).sum() / rows.sum().clamp(min=1))
            else:
                sums.append(nn.functional.binary_cross_entropy_with_logits(logits[:, t], labels[:, t]))
            counts.append(1)
        for t, column, offsets in self.grades:
            if t < predicted:
                k = len(offsets)
                sums[t] = sums[t] + k * nn.functional.binary_cross_entropy_with_logits(
                    logits[:, t:t + 1] + offsets, labels[:, column:column + k])
                counts[t] += k
        total = torch.stack(sums)  # (T_out,)
        n = torch.tensor(counts, dtype=torch.float32)  # (T_out,)
        if self.log_vars is not None:
            s = self.log_vars[:predicted]
            return (torch.exp(-s) * total / n + s / 2).sum() / predicted
        w = self.weights[:predicted]
        return (w * total).sum() / (w * n).sum()


def train_epoch(net: nn.Module, model: nn.Module, rows: Rows, cfg: TrainConfig, epoch: int,
                optimizer: torch.optim.Optimizer, max_batches: int | None = None,
                on_batch: Callable[[], None] | None = None, objective: Objective | None = None) -> float:
    """One pass over `rows` in a seeded order; returns the mean loss.

    `net` is what runs forward (the DDP wrapper under Ray), `model` the module itself (for its
    regularization). Shuffling and dropout are seeded by (seed, epoch), so an epoch replays exactly.
    `objective` defaults to `Objective.fit(rows)`.
    """
    objective = objective or Objective.fit(rows)
    torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout
    shuffle = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    regularization = getattr(model, "regularization", None)
    net.train()
    losses = []
    item = rows.inputs.item_feature if cfg.id_dropout else None
    if cfg.id_dropout and item is None:
        raise ConfigError("id_dropout needs the spec's item key (keys: {item: ...}) read by a categorical feature")
    for step, batch in enumerate(rows.batches(cfg.batch_size, shuffle)):
        if max_batches is not None and step >= max_batches:
            break
        if item is not None:
            batch = drop_ids(batch, item, cfg.id_dropout)
        logits = net(batch)  # (B, T_out)
        loss = objective(logits, batch.labels)
        if regularization is not None:
            loss = loss + regularization()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        objective.sync_gradients()
        optimizer.step()
        losses.append(loss.item())
        if on_batch is not None:
            on_batch()
    return float(sum(losses) / max(len(losses), 1))


def drop_ids(batch: Batch, feature: str, p: float) -> Batch:
    """`batch` with single-valued id feature `feature` set to the out-of-vocabulary id on a random share `p`
    of its rows (torch's global generator: seeded per epoch by train_epoch)."""
    kjt = batch.sparse
    keys, rows = kjt.keys(), kjt.stride()
    lengths = kjt.lengths().view(len(keys), rows)  # (K, B)
    k = keys.index(feature)
    start = int(lengths[:k].sum())
    drop = torch.rand(rows) < p  # (B,)
    owner = torch.repeat_interleave(torch.arange(rows), lengths[k])  # (n,) the row of each value
    values = kjt.values().clone()
    values[start:start + len(owner)] = torch.where(drop[owner], OOV_ID, values[start:start + len(owner)])
    sparse = KeyedJaggedTensor(keys=keys, values=values, lengths=kjt.lengths())
    return Batch(sparse, batch.dense, batch.sequences, batch.labels, batch.content)


def still_ramping(model: nn.Module) -> bool:
    """Whether a table of the model is still on its pruning schedule: its validation AUC is then that of a
    model still adapting to the sparsity it will be served at, so early stopping must not count it."""
    return any(isinstance(m, PrunedTable) and int(m.steps) < m.ramp_steps for m in model.modules())


@dataclass
class Fitted:
    """What `fit_in_process` reports; the model holds its best epoch's weights afterwards."""

    valid_auc: float
    best_epoch: int  # 1-based
    history: list[float]  # validation AUC per epoch
    seconds: float
    objective: Objective


def fit_in_process(model: nn.Module, train: Rows, valid: Rows, inputs: ModelInputs, cfg: TrainConfig,
                   rates: Mapping[str, float] | None = None) -> Fitted:
    """Train in this process with early stopping on validation AUC (the blend), as a Ray Train worker
    does: the benchmarks and tuning use it. Epochs spent on a pruning schedule (`still_ramping`) never
    count towards `patience`. `rates`: the training split's positive rates (default: from `train`)."""
    masked = getattr(model, "funnel", "none") == "masked"
    objective = Objective(inputs, rates, cfg.task_weighting, masked) if rates is not None \
        else Objective.fit(train, cfg.task_weighting, masked)
    optimizer = make_optimizer(model, cfg)
    if objective.parameters():
        optimizer = Optimizers(optimizer, torch.optim.Adam(objective.parameters(), lr=cfg.lr))
    best, best_state, best_epoch, bad, history, t0 = -1.0, None, 0, 0, [], time.perf_counter()
    for epoch in range(cfg.epochs):
        train_epoch(model, model, train, cfg, epoch, optimizer, objective=objective)
        auc = evaluate_rows(model, valid, inputs, cfg.eval_batch_size)["auc"]
        history.append(auc)
        if auc > best:
            best, best_state, best_epoch, bad = auc, copy.deepcopy(model.state_dict()), epoch + 1, 0
        elif not still_ramping(model):
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return Fitted(best, best_epoch, history, round(time.perf_counter() - t0, 1), objective)


def evaluate_rows(model: nn.Module, rows: Rows, inputs: ModelInputs, batch_size: int) -> dict[str, Any]:
    """Metrics per task, keyed "<task>_auc" etc., and the blend's as plain "auc" / "logloss".

    The blend is the spec's (`ModelInputs.blend`: default the first task alone), over the tasks the
    model predicts. A task with a parent is also measured on its parent's positive rows only, keyed
    "<task>_given_<parent>_auc" (for conversion after click: the CVR among clicks).
    """
    model.eval()
    probs, labels = [], []
    with torch.no_grad():
        for batch in rows.batches(batch_size):
            probs.append(torch.sigmoid(model(batch)))  # (B, T_out)
            labels.append(batch.labels)  # (B, T + G)
    tasks = inputs.tasks
    probs_np = torch.cat(probs).numpy() if probs else np.zeros((0, len(tasks)), np.float32)  # (N, T_out)
    labels_np = torch.cat(labels).numpy() if labels else np.zeros((0, len(tasks)), np.float32)
    out: dict[str, Any] = {}
    predicted = tasks[:probs_np.shape[1]]
    for t, task in enumerate(predicted):
        out.update({f"{task}_{k}": v for k, v in binary_metrics(labels_np[:, t], probs_np[:, t]).items()})
        parent = inputs.parent_index(task)
        if parent is not None and labels_np[:, parent].any():
            rows_of_parent = labels_np[:, parent] == 1
            given = binary_metrics(labels_np[rows_of_parent, t], probs_np[rows_of_parent, t])
            out.update({f"{task}_given_{tasks[parent]}_{k}": v for k, v in given.items()})
    blend = {t: w for t, w in inputs.task_blend().items() if t in predicted} or {predicted[0]: 1.0}
    total = sum(blend.values())
    for metric in ("auc", "logloss"):
        out[metric] = sum(w * out[f"{t}_{metric}"] for t, w in blend.items()) / total
    return out
