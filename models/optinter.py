"""OptInter: learn, per field pair, whether to memorize, factorize or ignore the interaction.

"Memorize, Factorize, or be Naive: Learning Optimal Feature Interaction Methods for CTR Prediction",
Lyu, Tang, Guo, Tang, He, Zhang, Liu, ICDE 2022. https://arxiv.org/abs/2108.01265

Two stages, both driven by the training pipeline:
  1. search (`methods=()`): every pair mixes its three methods with Gumbel-softmax weights of
     learned architecture logits alpha (P, 3), trained jointly with the network weights;
  2. retrain: `retrain_config()` turns the argmax of alpha into a fixed `methods` tuple, which the
     pipeline trains from scratch and publishes.

Pairs are the single-valued categorical fields taken two at a time, i < j in `inputs.fields` order:
(f0, f1), (f0, f2), ..., (f1, f2), ... A field is single-valued categorical when it is pooled
(`inputs.pooled`) and has no `inputs.max_len` (multi-valued and text features have one). Numeric,
multi-valued, text and sequence fields are embedded and fed to the MLP but take no part in pairs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import accumulate, combinations
from typing import Any

import torch
from torch import Tensor, nn

from muxrec.models import checks
from muxrec.models.batch import Batch
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.layers.tower import Activation, Tower, TowerConfig
from muxrec.models.registry import register
from muxrec.spec import ModelInputs

METHODS = ("memorize", "factorize", "naive")  # the M axis of alpha, in this order


@dataclass(frozen=True)
class OptInterConfig:
    """OptInter hyper-parameters.

    Args:
        embedding_dim: D, of the field embeddings and of every pair's interaction vector.
        hidden_units: widths of the MLP's hidden layers.
        dropout: dropout after each hidden activation.
        batch_norm: BatchNorm1d in the MLP.
        activation: the MLP's activation.
        methods: one of "memorize", "factorize", "naive" per field pair, in pair order (the module
            docstring); empty means search mode.
        cross_buckets: most rows of one memorized pair's cross-product table. A pair (i, j) gets
            min(n_i * n_j, cross_buckets) rows, n = table sizes: exact ids when they fit, else hashed.
        temperature: Gumbel-softmax temperature at the start of the search.
        final_temperature: temperature reached after `anneal_steps` training steps (geometric decay).
        anneal_steps: training steps over which the temperature decays.
        alpha_scale: the method logits are alpha_scale * alpha. Adam moves every parameter by about
            lr per step, so this is the architecture's learning rate relative to the weights' (the
            trainer has one lr); a larger one lets the search decide within the first epoch.
        memorize_cost: a search penalty of memorize_cost * (expected share of memorized pairs), added to
            the loss. Memorizing never raises the training loss, so without a price the search memorizes
            nearly every pair, and the cross tables then overfit; this is the storage budget, in loss units.
    """

    embedding_dim: int = 16
    hidden_units: tuple[int, ...] = (400, 400, 400)
    dropout: float = 0.2
    batch_norm: bool = False
    activation: Activation = "relu"
    methods: tuple[str, ...] = ()
    cross_buckets: int = 100_000
    temperature: float = 1.0
    final_temperature: float = 0.1
    anneal_steps: int = 1000
    alpha_scale: float = 1.0
    memorize_cost: float = 0.0

    def __post_init__(self) -> None:
        checks.at_least_one(self, "embedding_dim")
        checks.widths(self, "hidden_units")
        checks.dropout(self, "dropout")
        for i, method in enumerate(self.methods):
            if method not in METHODS:
                raise ValueError(f"methods[{i}] must be one of {list(METHODS)}, got {method!r}")
        if self.cross_buckets < 1:
            raise ValueError(f"cross_buckets must be >= 1, got {self.cross_buckets}")
        if not 0.0 < self.final_temperature <= self.temperature:
            raise ValueError(f"temperatures must satisfy 0 < final_temperature <= temperature, "
                             f"got final_temperature={self.final_temperature}, temperature={self.temperature}")
        if self.anneal_steps < 1:
            raise ValueError(f"anneal_steps must be >= 1, got {self.anneal_steps}")
        if not self.alpha_scale > 0:
            raise ValueError(f"alpha_scale must be > 0, got {self.alpha_scale}")
        if self.memorize_cost < 0:
            raise ValueError(f"memorize_cost must be >= 0, got {self.memorize_cost}")


def categorical_pairs(inputs: ModelInputs) -> list[tuple[str, str]]:
    """The field pairs OptInter models, in the fixed order its `methods` follow."""
    categorical = [f for f in inputs.fields if f in inputs.pooled and f not in inputs.max_len]
    return list(combinations(categorical, 2))


@register("optinter", OptInterConfig)
class OptInter(nn.Module):
    """Field embeddings + one interaction vector per field pair (memorized, factorized or none) -> MLP.

    A memorized pair looks its id pair up in a cross-product table (one shared nn.Embedding, a row
    range per pair): cross id = (id_i * n_j + id_j) mod rows_p + offset_p. A factorized pair is
    e_i * e_j from the shared field embedding. A naive pair contributes nothing. The MLP reads the
    concatenation [e_1 .. e_F, pair vectors] (the paper's combination layer). In search mode each
    pair's vector is the mix w_m * memorized + w_f * factorized (+ w_n * 0), w a Gumbel-softmax of
    alpha (B, P, 3) in training and softmax(alpha / temperature) in eval; in fixed mode naive pairs
    have neither cross rows nor MLP inputs, and only memorized pairs have cross rows.

    Args:
        cfg: hyper-parameters; `cfg.methods` empty for the search, one per pair for a fixed model.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.

    Forward takes a Batch and returns (B, 1) logits.
    """

    def __init__(self, cfg: OptInterConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__()
        self.cfg = cfg
        self.embedding = embedding
        self.pairs = categorical_pairs(inputs)
        if not self.pairs:
            raise ValueError("OptInter needs at least two single-valued categorical fields to pair; "
                             f"the inputs have {len(self.pairs)} pairs")
        self.search = not cfg.methods
        if not self.search and len(cfg.methods) != len(self.pairs):
            names = ", ".join(f"{a} x {b}" for a, b in self.pairs)
            raise ValueError(f"methods has {len(cfg.methods)} entries but these inputs have {len(self.pairs)} "
                             f"categorical field pairs, one method each, in this order: {names}")
        # The search computes memorize and factorize for every pair; a fixed model only what it uses.
        memorized = [p for i, p in enumerate(self.pairs) if self.search or cfg.methods[i] == "memorize"]
        factorized = [p for i, p in enumerate(self.pairs) if self.search or cfg.methods[i] == "factorize"]
        dim = cfg.embedding_dim

        # Memorized pairs: ids of both fields -> a row of one cross-product table.
        self.categorical = tuple(dict.fromkeys(f for pair in memorized for f in pair))
        column = {name: i for i, name in enumerate(self.categorical)}
        size = {name: t.num_embeddings for t in inputs.tables for name in t.feature_names}
        rows = [min(size[a] * size[b], cfg.cross_buckets) for a, b in memorized]
        offsets = [0, *accumulate(rows)][:-1]
        self.register_buffer("mem_left", torch.tensor([column[a] for a, _ in memorized], dtype=torch.long),
                             persistent=False)
        self.register_buffer("mem_right", torch.tensor([column[b] for _, b in memorized], dtype=torch.long),
                             persistent=False)
        self.register_buffer("mem_stride", torch.tensor([size[b] for _, b in memorized], dtype=torch.long),
                             persistent=False)
        self.register_buffer("mem_rows", torch.tensor(rows, dtype=torch.long), persistent=False)
        self.register_buffer("mem_offset", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self.cross = nn.Embedding(sum(rows), dim) if memorized else None
        if self.cross is not None:
            nn.init.normal_(self.cross.weight, std=1e-4)  # the shared embedding's scale

        # Factorized pairs: positions of both fields on the F axis.
        field = {name: i for i, name in enumerate(inputs.fields)}
        self.register_buffer("fac_left", torch.tensor([field[a] for a, _ in factorized], dtype=torch.long),
                             persistent=False)
        self.register_buffer("fac_right", torch.tensor([field[b] for _, b in factorized], dtype=torch.long),
                             persistent=False)

        if self.search:
            self.alpha = nn.Parameter(torch.zeros(len(self.pairs), len(METHODS)))  # (P, M)
            self.register_buffer("step", torch.zeros((), dtype=torch.long))  # training steps, for annealing
            width = len(self.pairs)
        else:
            width = len(memorized) + len(factorized)
        self.mlp = Tower((inputs.num_fields + width) * dim, TowerConfig.of(cfg), len(inputs.tasks))

    def forward(self, batch: Batch) -> Tensor:
        fields = self.embedding(batch)  # (B, F, D)
        if self.search:
            weights = self._method_weights(fields.shape[0])  # (B, P, M)
            mixed = weights[..., 0:1] * self._memorized(batch) + weights[..., 1:2] * self._factorized(fields)  # (B, P, D)
            parts = [fields, mixed]  # naive adds weights[..., 2] * 0
        else:
            parts = [fields]
            if self.cross is not None:
                parts.append(self._memorized(batch))  # (B, P_mem, D)
            if self.fac_left.numel():
                parts.append(self._factorized(fields))  # (B, P_fac, D)
        return self.mlp(torch.cat(parts, dim=1).flatten(1))  # (B, F + P', D) -> (B, (F + P') * D) -> (B, T)

    def regularization(self) -> Tensor:
        """The search's price on memorizing (0 for a fixed model); the trainer adds it to the loss."""
        if not self.search:
            return torch.zeros(())
        share = torch.softmax(self.cfg.alpha_scale * self.alpha, dim=-1)[:, 0].mean()  # expected memorized share
        return self.cfg.memorize_cost * share

    def cross_ids(self, batch: Batch) -> Tensor:
        """Rows of the cross-product table, one per memorized pair: (B, P_mem)."""
        sparse = batch.sparse.to_dict()
        ids = torch.stack([sparse[name].values() for name in self.categorical], dim=1)  # (B, C)
        if ids.shape[0] != len(batch):
            raise ValueError(f"OptInter memorizes single-valued fields {list(self.categorical)}, but the batch "
                             f"has {ids.shape[0]} ids for {len(batch)} rows")
        left, right = ids[:, self.mem_left], ids[:, self.mem_right]  # (B, P_mem)
        return (left * self.mem_stride + right) % self.mem_rows + self.mem_offset  # (B, P_mem)

    def _memorized(self, batch: Batch) -> Tensor:
        return self.cross(self.cross_ids(batch))  # (B, P_mem, D)

    def _factorized(self, fields: Tensor) -> Tensor:
        return fields[:, self.fac_left] * fields[:, self.fac_right]  # (B, P_fac, D)

    def temperature(self) -> float:
        """The Gumbel-softmax temperature now: geometric decay over `anneal_steps` training steps."""
        progress = min(int(self.step), self.cfg.anneal_steps) / self.cfg.anneal_steps
        return self.cfg.temperature * (self.cfg.final_temperature / self.cfg.temperature) ** progress

    def _method_weights(self, batch_size: int) -> Tensor:
        """Per-row Gumbel-softmax sample in training, the plain tempered softmax in eval."""
        logits, tau = self.cfg.alpha_scale * self.alpha, self.temperature()  # (P, M)
        if not self.training:
            return torch.softmax(logits / tau, dim=-1).expand(batch_size, -1, -1)  # (B, P, M)
        self.step += 1
        uniform = torch.rand(batch_size, *logits.shape, device=logits.device)  # (B, P, M)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))  # (B, P, M)
        return torch.softmax((logits + gumbel) / tau, dim=-1)  # (B, P, M)

    def chosen_methods(self) -> tuple[str, ...]:
        """One method per pair: the argmax of alpha in search mode, the config's in fixed mode."""
        if not self.search:
            return self.cfg.methods
        return tuple(METHODS[i] for i in self.alpha.argmax(dim=1).tolist())

    def retrain_config(self) -> OptInterConfig | None:
        """The fixed config to train from scratch after the search; None for a fixed model."""
        if not self.search:
            return None
        return dataclasses.replace(self.cfg, methods=self.chosen_methods())

    def search_report(self) -> dict[str, Any]:
        """The method per pair by feature names and, in search mode, the method weights in eval."""
        names = [f"{a} x {b}" for a, b in self.pairs]
        report: dict[str, Any] = {"methods": dict(zip(names, self.chosen_methods()))}
        if self.search:
            with torch.no_grad():
                probs = torch.softmax(self.cfg.alpha_scale * self.alpha / self.temperature(), dim=-1).tolist()  # (P, M)
            report["weights"] = {n: dict(zip(METHODS, (round(p, 4) for p in row))) for n, row in zip(names, probs)}
            report["temperature"] = round(self.temperature(), 4)
        return report
