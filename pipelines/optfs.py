"""Feature selection by OptFS: train a gated DeepFM in-process, rank fields by their gate logits.

"Optimizing Feature Set for Click-Through Rate Prediction" (Lyu et al., WWW 2023,
https://arxiv.org/abs/2301.10909). The model and its gates are `muxrec.models.optfs.OptFS`; this
module runs the search, `epochs` passes over the train split with the temperature beta raised at the
start of every epoch from 1 to the config's `final_temperature`, and reads the result:

* score of a field = its final gate logit m (best first; m > 0 means kept);
* detail: the gate's sigmoid(beta * m) at the final beta, and `kept`;
* meta["kept"]: the kept fields; meta["interactions"]: the kept pairs [[a, b, m_ab], ...], best first
  (a pair is kept when its own logit and both its fields' are > 0).

Gates and weights learn on the same rows by default, as in the paper (`held_out=0`). `held_out` > 0
makes half (or that share) of the train rows move only the gates, the rest only the network: a gate
then opens only for what helps on rows the network has not fitted. Tried as the default and dropped,
measured with the same seed on prepared train rows (no test split read):
  synthetic (50k rows, seed 7): precision at the 13 planted fields 0.923 either way;
  ML-100K: joint training ranks item_id, zip_code, user_id, release_year, genres first (the order
  permutation importance and OutRank give); held-out gates put item_id 5th after 6 epochs and kept
  release_year alone after 12, and their top 2 (user_id, genres) retrained to validation AUC 0.70
  against 0.785 for item_id + user_id (`muxrec bench select`).
The gates have their own, larger learning rate (`gate_lr`): with Adam every parameter moves about lr
a step, and a gate must travel from gate_init past 0 before beta freezes it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import torch

from muxrec.models import Batch, EncodedRows, build_model
from muxrec.models.optfs import OptFS, OptFSConfig
from muxrec.pipelines.loop import Objective
from muxrec.pipelines.prepare import PreparedData
from muxrec.selection import FeatureRanking, FeatureScore
from muxrec.spec import ModelInputs

# A small backbone: the search ranks fields, it does not need the best model, and it must be quick.
# Gate price and final beta chosen on the synthetic set (see the module docstring and tests/unit/test_optfs.py).
SEARCH_CONFIG = OptFSConfig(embedding_dim=8, hidden_units=(64, 32), dropout=0.0, gate_l1=3e-4, final_temperature=20.0)
DEFAULT_EPOCHS = 6


def one_task(inputs: ModelInputs, task: str | None) -> ModelInputs:
    """`inputs` predicting `task` alone (the spec's first task when None), with its grade columns if any."""
    task = inputs.tasks[0] if task is None else task
    if task not in inputs.tasks:
        raise ValueError(f"unknown task {task!r}; tasks: {list(inputs.tasks)}")
    grades = {task: inputs.grades[task]} if task in inputs.grades else {}
    return dataclasses.replace(inputs, tasks=(task,), grades=grades, parents={}, blend={task: 1.0})


def _cycle(rows: EncodedRows, batch_size: int, order: torch.Generator) -> Iterator[Batch]:
    while True:
        yield from rows.batches(batch_size, order)


def search(model: OptFS, rows: EncodedRows, held_out: EncodedRows | None, epochs: int, seed: int,
           batch_size: int, lr: float, gate_lr: float) -> list[float]:
    """Train `model` on `rows` and its gates on `held_out` for `epochs`, beta raised every epoch.

    Each step: one batch of `rows` moves the network and the embeddings, then one batch of `held_out`
    (cycled) moves the gates, with the gate penalty. With `held_out` None both learn on the same batch
    (the paper's joint training). Shuffling is seeded by (seed, epoch). Returns the mean training loss per epoch.
    """
    gates = [model.field_logits, model.pair_logits]
    ids = {id(p) for p in gates}
    network = torch.optim.Adam([p for p in model.parameters() if id(p) not in ids], lr=lr)
    gate_optimizer = torch.optim.Adam(gates, lr=gate_lr)
    objective = Objective.fit(rows)
    losses = []
    for epoch in range(epochs):
        model.anneal(epoch / max(epochs - 1, 1))
        model.train()
        order = torch.Generator().manual_seed(seed * 1000 + epoch)
        gate_batches = _cycle(held_out, batch_size, order) if held_out is not None else None
        total, steps = 0.0, 0
        for batch in rows.batches(batch_size, order):
            loss = objective(model(batch), batch.labels)
            if gate_batches is None:  # joint: one loss for both
                loss = loss + model.regularization()
            network.zero_grad(set_to_none=True)
            gate_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            network.step()
            if gate_batches is None:
                gate_optimizer.step()
            else:
                other = next(gate_batches)
                gate_loss = objective(model(other), other.labels) + model.regularization()
                network.zero_grad(set_to_none=True)
                gate_optimizer.zero_grad(set_to_none=True)
                gate_loss.backward()
                gate_optimizer.step()
            total, steps = total + loss.item(), steps + 1
        losses.append(total / max(steps, 1))
    return losses


def ranking(model: OptFS, task: str, meta: dict) -> FeatureRanking:
    """The fields by gate logit, best first, with the kept fields and pairs in meta."""
    with torch.no_grad():
        field_gates = torch.sigmoid(model.temperature * model.field_logits).tolist()  # (F,)
    logits = model.field_logits.tolist()
    kept = model.kept_fields()
    scores = [FeatureScore(name, m, {"gate": g, "kept": name in kept})
              for name, m, g in zip(model.fields, logits, field_gates)]
    scores.sort(key=lambda s: (-s.score, s.name))
    pair_logit = dict(zip(model.pairs, model.pair_logits.tolist()))
    pairs = sorted(model.kept_pairs(), key=lambda p: (-pair_logit[p], p))
    return FeatureRanking("optfs", task, tuple(scores), {
        "score": "gate logit m (kept when > 0)", "kept": [s.name for s in scores if s.detail["kept"]],
        "interactions": [[a, b, pair_logit[(a, b)]] for a, b in pairs], "temperature": float(model.temperature),
        **meta})


def optfs_table(table: pa.Table, inputs: ModelInputs, task: str | None = None, seed: int = 0,
                epochs: int = DEFAULT_EPOCHS, cfg: OptFSConfig = SEARCH_CONFIG, batch_size: int = 128,
                lr: float = 1e-3, gate_lr: float = 1e-2, held_out: float = 0.0) -> FeatureRanking:
    """OptFS ranking of every field of one in-memory encoded table (tests, one process).

    Args:
        table: encoded rows (e.g. PreparedData.read("train")); rows without the task's label are skipped.
        inputs: the model inputs of the spec.
        task: the label to select for; the spec's first task when None.
        seed: seeds the held-out draw, the model's initialisation and the batch order.
        epochs: search epochs; beta goes 1 -> cfg.final_temperature over them.
        cfg: the gated model and its gate penalty / continuation schedule.
        batch_size: rows per training step.
        lr: Adam's learning rate for the network and the embeddings.
        gate_lr: Adam's learning rate for the gate logits.
        held_out: the share of rows the gates learn on (the network on the rest); 0: both on all rows.
    """
    inputs = one_task(inputs, task)
    task = inputs.tasks[0]
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    for name, value in (("lr", lr), ("gate_lr", gate_lr)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if not 0.0 <= held_out < 1.0:
        raise ValueError(f"held_out must be in [0, 1), got {held_out}")
    table = table.filter(pc.is_valid(table[task]))
    cut = int(table.num_rows * held_out)
    if table.num_rows - cut < 1 or (held_out > 0 and cut < 1):
        raise ValueError(f"{table.num_rows} rows with a {task!r} label are too few to search on")
    t0 = time.perf_counter()
    order = torch.randperm(table.num_rows, generator=torch.Generator().manual_seed(seed)).numpy()  # (N,)
    rows = EncodedRows(table.take(order[cut:]), inputs)
    gate_rows = EncodedRows(table.take(order[:cut]), inputs) if cut else None
    torch.manual_seed(seed)
    model = build_model("optfs", cfg, inputs)
    losses = search(model, rows, gate_rows, epochs, seed, batch_size, lr, gate_lr)
    return ranking(model, task, {
        "split": "train", "rows": table.num_rows, "seed": seed, "epochs": epochs, "losses": losses,
        "config": {**dataclasses.asdict(cfg), "hidden_units": list(cfg.hidden_units)}, "batch_size": batch_size, "lr": lr, "gate_lr": gate_lr,
        "held_out": held_out, "seconds": round(time.perf_counter() - t0, 2)})


def optfs(prepared: PreparedData, task: str | None = None, seed: int = 0, epochs: int = DEFAULT_EPOCHS,
          cfg: OptFSConfig = SEARCH_CONFIG, batch_size: int = 128, lr: float = 1e-3, gate_lr: float = 1e-2,
          held_out: float = 0.0) -> FeatureRanking:
    """OptFS ranking of the fields of `prepared`, searched in this process on its train split.

    Args: as `optfs_table`; `prepared` is the output of `muxrec prepare`.
    """
    ranked = optfs_table(prepared.read("train"), prepared.inputs, task, seed, epochs, cfg, batch_size, lr,
                         gate_lr, held_out)
    return dataclasses.replace(ranked, meta={**ranked.meta, "prepared": prepared.spec.name})
