"""One training step's worth of logic, shared by the Ray Train workers and in-process tuning.

A model may define `regularization() -> Tensor`, added to the loss (a search penalty, a sparsity
term); the trainer knows nothing else about a model beyond `forward(batch) -> (B, T) logits`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from muxrec.config import TrainConfig
from muxrec.metrics import binary_metrics
from muxrec.models import EncodedRows
from muxrec.models.serialization import predict_proba


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam; embedding tables get embedding_l2, everything else weight_decay."""
    tables = {id(p) for m in model.modules() if isinstance(m, (nn.EmbeddingBag, nn.Embedding)) for p in m.parameters()}
    embedding = [p for p in model.parameters() if id(p) in tables]
    other = [p for p in model.parameters() if id(p) not in tables]
    return torch.optim.Adam([{"params": embedding, "weight_decay": cfg.embedding_l2},
                             {"params": other, "weight_decay": cfg.weight_decay}], lr=cfg.lr)


def train_epoch(net: nn.Module, model: nn.Module, rows: EncodedRows, cfg: TrainConfig, epoch: int,
                optimizer: torch.optim.Optimizer, max_batches: int | None = None,
                on_batch: Callable[[], None] | None = None) -> float:
    """One pass over `rows` in a seeded order; returns the mean loss.

    `net` is what runs forward (the DDP wrapper under Ray), `model` the module itself (for its
    regularization). Shuffling and dropout are seeded by (seed, epoch), so an epoch replays exactly.
    """
    torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout
    shuffle = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    regularization = getattr(model, "regularization", None)
    net.train()
    losses = []
    for step, batch in enumerate(rows.batches(cfg.batch_size, shuffle)):
        if max_batches is not None and step >= max_batches:
            break
        logits = net(batch)  # (B, T_out)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels[:, :logits.shape[1]])
        if regularization is not None:
            loss = loss + regularization()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_batch is not None:
            on_batch()
    return float(sum(losses) / max(len(losses), 1))


def evaluate_rows(model: nn.Module, rows: EncodedRows, tasks: tuple[str, ...], batch_size: int) -> dict[str, Any]:
    """Metrics per task, keyed "<task>_auc" etc.; the first task's also as plain "auc"/"logloss"."""
    probs = predict_proba(model, rows, batch_size)  # (N, T_out)
    labels = rows.labels.numpy()
    out: dict[str, Any] = {}
    for t in range(probs.shape[1]):
        m = binary_metrics(labels[:, t], probs[:, t])
        out.update({f"{tasks[t]}_{k}": v for k, v in m.items()})
        if t == 0:
            out.update(m)
    return out
