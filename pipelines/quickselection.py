"""Feature selection by QuickSelection: a sparse denoising autoencoder ranks input neurons by strength.

"Quick and Robust Feature Selection: the Strength of Energy-efficient Sparse Training for
Autoencoders" (Atashgahi, Sokar, van der Lee, Mocanu, Mocanu, Veldhuis, Pechenizkiy, Machine Learning
2022, https://arxiv.org/abs/2012.00560). Unsupervised: no label is read.

The autoencoder has one hidden layer (sigmoid) and a linear output (standardised numeric inputs go
below 0, which a sigmoid output cannot reach), trained to reconstruct its clean
input from a noised copy (x + noise * N(0, 1)), mean squared error, SGD with momentum. Both layers are
sparse from the start, Erdos-Renyi: a connection exists with probability epsilon * (n_in + n_out) /
(n_in * n_out). After every epoch but the last, sparse evolutionary training (SET) removes the share
zeta of each layer's connections whose weights are closest to zero and grows as many at random places
(new weights drawn as at initialisation). The strength of an input neuron is the sum of |w| over its
connections to the hidden layer: neurons that matter for the reconstruction keep and grow theirs.
The masks are dense 0/1 tensors (a few hundred inputs: simplest and fast on CPU).

Our features become input neurons (`neurons`):
* a single-valued id feature: a one-hot of its `max_values` most frequent train values, plus an
  "other" neuron for every other value (when there is one);
* a list feature (multi-valued, text, sequence): a multi-hot of the same, "other" on when any value
  of the row is outside them;
* a numeric feature: its standardised value (missing -> 0, clipped to +-5);
* content features (pretrained vectors) are skipped and listed in `meta["skipped"]`.
Every neuron is then standardised (as in the paper): unscaled, a numeric neuron (variance 1) outweighs
one-hot neurons (variance p(1 - p)) in the squared error and took the top rank on planted data.

A feature's score aggregates its neurons' strengths (`AGGREGATES`). The default, "mean", was chosen
by measurement (tests/unit/test_quickselection.py, test_mean_aggregate_is_free_of_a_width_bias): on
pure-noise features of 2 to 64 values (3 to 33 neurons), "sum" ranks them by their width (rank
correlation with the neuron count below -0.9: every neuron keeps some strength, so more neurons add up
to more), while "mean" shows no such order. "max" is offered but was not measured there.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor, nn

from muxrec.pipelines.prepare import PreparedData
from muxrec.selection import FeatureRanking, FeatureScore
from muxrec.spec import ModelInputs

AGGREGATES = ("mean", "sum", "max")


@dataclass(frozen=True)
class QuickSelectionConfig:
    """The autoencoder, its sparse training and the input encoding (paper defaults where they fit).

    Args:
        hidden: hidden neurons.
        epsilon: Erdos-Renyi density parameter (the paper's 13).
        zeta: share of connections removed and regrown per layer after each epoch (the paper's 0.2).
        noise: std of the Gaussian noise added to the input (the paper's noise factor 0.2).
        epochs: training epochs (SET runs after each but the last).
        batch_size: rows per SGD step.
        lr: SGD learning rate (momentum 0.9); the paper's 0.01 over its 100 epochs, 0.05 for our 8.
        weight_decay: L2 on the weights.
        max_values: one-hot / multi-hot neurons per id feature (its most frequent values), plus "other".
        aggregate: how a feature's score combines its neurons' strengths: "mean", "sum" or "max".
    """

    hidden: int = 128
    epsilon: float = 13.0
    zeta: float = 0.2
    noise: float = 0.2
    epochs: int = 8
    batch_size: int = 100
    lr: float = 0.05
    weight_decay: float = 2e-4
    max_values: int = 32
    aggregate: str = "mean"

    def __post_init__(self) -> None:
        for name in ("hidden", "epochs", "batch_size", "max_values"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon must be a finite number > 0, got {self.epsilon}")
        if not 0.0 <= self.zeta < 1.0:
            raise ValueError(f"zeta must be in [0, 1), got {self.zeta}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0, got {self.noise}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {list(AGGREGATES)}, got {self.aggregate!r}")


def _list_values(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, row of each value) of a list column; null lists hold no value."""
    col = column.combine_chunks()
    return (pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64),
            pc.list_parent_indices(col).to_numpy(zero_copy_only=False).astype(np.int64))


def _hot(values: np.ndarray, rows: np.ndarray, n: int, max_values: int) -> tuple[np.ndarray, list[str]]:
    """(n, K [+ 1]) one/multi-hot of the max_values most frequent values (+ "other"), and the neuron names."""
    distinct, counts = np.unique(values, return_counts=True)
    top = distinct[np.argsort(-counts, kind="stable")[:max_values]]  # most frequent first
    column = {int(v): i for i, v in enumerate(top)}
    has_other = len(distinct) > len(top)
    x = np.zeros((n, len(top) + has_other), np.float32)  # (N, K [+ 1])
    at = np.array([column.get(int(v), len(top)) for v in values], np.int64) if len(values) else np.zeros(0, np.int64)
    x[rows, at] = 1.0  # "other" lands in column K
    return x, [str(int(v)) for v in top] + (["other"] if has_other else [])


def neurons(table: pa.Table, inputs: ModelInputs, max_values: int
            ) -> tuple[np.ndarray, list[str], dict[str, list[str]]]:
    """The autoencoder's input: (N, n_in) float32, the feature of each neuron (n_in,), and each feature's
    neuron names (values, "other", or "value" for a numeric one)."""
    n = table.num_rows
    blocks, owner, names = [], [], {}
    for name in inputs.fields:
        if name in inputs.content:
            continue
        col = table.column(name)
        if name in inputs.numeric:
            v = col.to_numpy(zero_copy_only=False).astype(np.float64)
            ok = np.isfinite(v)
            mean, std = (v[ok].mean(), v[ok].std()) if ok.any() else (0.0, 0.0)
            z = np.where(ok, (v - mean) / (std if std > 0 else 1.0), 0.0)
            x, labels = np.clip(z, -5, 5).astype(np.float32)[:, None], ["value"]  # (N, 1)
        elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            values, rows = _list_values(col)
            x, labels = _hot(values, rows, n, max_values)  # (N, K [+ 1])
        else:
            values = pc.fill_null(col, -1).to_numpy(zero_copy_only=False).astype(np.int64)
            x, labels = _hot(values, np.arange(n), n, max_values)  # (N, K [+ 1])
        blocks.append(x)
        owner += [name] * x.shape[1]
        names[name] = labels
    return np.concatenate(blocks, axis=1), owner, names  # (N, n_in)


def erdos_renyi(rows: int, cols: int, epsilon: float, generator: torch.Generator) -> Tensor:
    """A (rows, cols) 0/1 mask, each connection present with probability epsilon * (rows + cols) / (rows * cols)."""
    p = min(1.0, epsilon * (rows + cols) / (rows * cols))
    return (torch.rand(rows, cols, generator=generator) < p).float()  # (rows, cols)


class SparseAutoencoder(nn.Module):
    """x (B, n_in) -> sigmoid hidden (B, H) -> linear reconstruction (B, n_in), both layers masked.

    Args:
        n_in: input neurons.
        hidden: H, hidden neurons.
        epsilon: the Erdos-Renyi density parameter of both masks.
        generator: draws the masks and the initial weights.
    """

    def __init__(self, n_in: int, hidden: int, epsilon: float, generator: torch.Generator):
        super().__init__()
        self.bound = (1.0 / n_in ** 0.5, 1.0 / hidden ** 0.5)  # uniform init range per layer
        self.w1 = nn.Parameter((torch.rand(n_in, hidden, generator=generator) * 2 - 1) * self.bound[0])  # (n_in, H)
        self.w2 = nn.Parameter((torch.rand(hidden, n_in, generator=generator) * 2 - 1) * self.bound[1])  # (H, n_in)
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.b2 = nn.Parameter(torch.zeros(n_in))
        self.register_buffer("m1", erdos_renyi(n_in, hidden, epsilon, generator))  # (n_in, H)
        self.register_buffer("m2", erdos_renyi(hidden, n_in, epsilon, generator))  # (H, n_in)
        with torch.no_grad():
            self.w1.mul_(self.m1)
            self.w2.mul_(self.m2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.sigmoid(x @ (self.w1 * self.m1) + self.b1)  # (B, H)
        return h @ (self.w2 * self.m2) + self.b2  # (B, n_in)

    def strength(self) -> Tensor:
        """(n_in,): sum of |w| over each input neuron's connections to the hidden layer."""
        return (self.w1 * self.m1).abs().sum(dim=1)  # (n_in,)

    @torch.no_grad()
    def evolve(self, zeta: float, generator: torch.Generator) -> None:
        """SET: in each layer drop the share zeta of connections nearest zero, regrow as many at random."""
        for w, m, bound in ((self.w1, self.m1, self.bound[0]), (self.w2, self.m2, self.bound[1])):
            active = m.flatten().nonzero().squeeze(1)  # (A,)
            drop = int(zeta * len(active))
            if drop == 0:
                continue
            weakest = active[torch.argsort(w.flatten()[active].abs())[:drop]]  # (drop,)
            m.view(-1)[weakest] = 0.0
            w.view(-1)[weakest] = 0.0
            empty = (m.flatten() == 0).nonzero().squeeze(1)  # (E,)
            grow = empty[torch.randperm(len(empty), generator=generator)[:drop]]  # (drop,)
            m.view(-1)[grow] = 1.0
            w.view(-1)[grow] = (torch.rand(len(grow), generator=generator) * 2 - 1) * bound


def train_autoencoder(x: np.ndarray, cfg: QuickSelectionConfig, seed: int) -> tuple[SparseAutoencoder, list[float]]:
    """Train the sparse denoising autoencoder on x (N, n_in) with SET; the model and the mean loss per epoch."""
    generator = torch.Generator().manual_seed(seed)
    std = x.std(axis=0)
    data = torch.from_numpy((x - x.mean(axis=0)) / np.where(std > 0, std, 1.0))  # (N, n_in), standardised
    model = SparseAutoencoder(data.shape[1], cfg.hidden, cfg.epsilon, generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    losses = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(data), generator=generator)  # (N,)
        total, steps = 0.0, 0
        for start in range(0, len(data), cfg.batch_size):
            clean = data[order[start:start + cfg.batch_size]]  # (B, n_in)
            noisy = clean + cfg.noise * torch.randn(clean.shape, generator=generator)  # (B, n_in)
            loss = nn.functional.mse_loss(model(noisy), clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        losses.append(total / max(steps, 1))
        if epoch < cfg.epochs - 1:
            model.evolve(cfg.zeta, generator)
            optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return model, losses


def aggregate(strength: np.ndarray, owner: list[str], how: str) -> dict[str, float]:
    """Feature -> the mean, sum or max of its neurons' strengths."""
    reduce = {"mean": np.mean, "sum": np.sum, "max": np.max}[how]
    owners = np.array(owner)
    return {name: float(reduce(strength[owners == name])) for name in dict.fromkeys(owner)}


def quickselection_table(table: pa.Table, inputs: ModelInputs, seed: int = 0,
                         cfg: QuickSelectionConfig = QuickSelectionConfig()) -> FeatureRanking:
    """QuickSelection ranking of the fields of one in-memory encoded table.

    Args:
        table: encoded rows (e.g. PreparedData.read("train")).
        inputs: the model inputs of the spec.
        seed: seeds the masks, the initial weights, the batch order, the noise and SET's regrowth.
        cfg: the autoencoder, its sparse training and the input encoding.
    """
    if table.num_rows == 0:
        raise ValueError("no rows to train the autoencoder on")
    t0 = time.perf_counter()
    x, owner, names = neurons(table, inputs, cfg.max_values)
    model, losses = train_autoencoder(x, cfg, seed)
    strength = model.strength().detach().numpy()  # (n_in,)
    scores = aggregate(strength, owner, cfg.aggregate)
    owners = np.array(owner)
    features = sorted((FeatureScore(name, score, {
        "neurons": len(names[name]), "strength_sum": float(strength[owners == name].sum()),
        "strength_max": float(strength[owners == name].max())}) for name, score in scores.items()),
        key=lambda s: (-s.score, s.name))
    return FeatureRanking("quickselection", None, tuple(features), {
        "score": f"{cfg.aggregate} over the feature's input neurons of their strength (sum of |w| to the hidden layer)",
        "split": "train", "rows": table.num_rows, "seed": seed, "input_neurons": len(owner),
        "connections": int(model.m1.sum() + model.m2.sum()), "losses": losses, "config": dataclasses.asdict(cfg),
        "skipped": sorted(inputs.content), "seconds": round(time.perf_counter() - t0, 2)})


def quickselection(prepared: PreparedData, seed: int = 0,
                   cfg: QuickSelectionConfig = QuickSelectionConfig()) -> FeatureRanking:
    """QuickSelection ranking of the fields of `prepared`, trained in this process on its train split.

    Args: as `quickselection_table`; `prepared` is the output of `muxrec prepare`.
    """
    ranked = quickselection_table(prepared.read("train"), prepared.inputs, seed, cfg)
    return dataclasses.replace(ranked, meta={**ranked.meta, "prepared": prepared.spec.name})
