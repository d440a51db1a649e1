"""Multi-task models: Shared-Bottom, MMoE, PLE, ESMM, APEM and TaskExpert.

Each predicts one logit per task of the spec, (B, T) in `inputs.tasks` order. They read a shared input:
the flattened field embedding (B, F * D), or, with `bottom: <zoo model>`, that single-task model of the
zoo built with a `bottom_dim` wide head (B, W) and read through a ReLU, so any interaction model of the
zoo can be the shared bottom. The bottom reads the multi-task model's own `embedding`.

Funnels (`parent:` in the spec): with `funnel: chain` or `masked`, a task with a parent has its head
predict logit P(task | parent) and the model outputs the entire-space logit of P(parent) * P(task |
parent) (`chain_funnel`); `masked` also tells the trainer to fit the conditional on the parent's positive
rows only. With `funnel: none` the tasks are independent heads.

Gated models expose `gates(batch)`: gate name -> (B, E) softmax weights over the experts, `<task>`, or
`<task>@<level>` (1-based) where a model has several levels of gates; `expert_utilisation` averages them.

    >>> cfg = make_config("mmoe", {"num_experts": 4, "bottom": "deepfm", "bottom_config": {"hidden_units": [64]}})
    >>> model = build_model("mmoe", cfg, inputs)
    >>> model(batch).shape, model.gates(batch)["click"].shape
    (torch.Size([256, 2]), torch.Size([256, 4]))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import torch
from torch import Tensor, nn

from muxrec.errors import ConfigError
from muxrec.models import checks
from muxrec.models.batch import Batch
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.layers.mlp import MLP
from muxrec.models.layers.multitask import (Experts, ExtractionLevel, FieldExcitation, Gate, MemorialLayer,
                                            PatternSelector, TaskTowers, chain_funnel, mix)
from muxrec.models.layers.tower import TowerConfig
from muxrec.models.registry import build_model, entry, known_models, make_config, register
from muxrec.spec import ModelInputs

Funnel = Literal["none", "chain", "masked"]
FUNNELS = ("none", "chain", "masked")

# Zoo models whose output is one logit whatever the spec's tasks (a first-order sum, an FM term, FinalMLP's
# bilinear fusion): they cannot give a bottom_dim wide representation.
_ONE_LOGIT = ("final_mlp", "fm", "lr")


@dataclass(frozen=True)
class MultiTaskConfig:
    """The fields every multi-task config has.

    Args:
        embedding_dim: D, the width of every field embedding.
        bottom: a single-task zoo model (deepfm, autoint, dcn_v2, ...) as the shared bottom; None: the
            flattened field embedding is the shared input.
        bottom_config: that model's config (its own fields; embedding_dim is this config's).
        bottom_dim: W, the width of the bottom's head, read as features.
        dropout: dropout after each hidden activation (experts, shared layers, towers).
        funnel: none, chain or masked (see the module docstring).
    """

    embedding_dim: int = 16
    bottom: str | None = None
    bottom_config: dict[str, Any] = field(default_factory=dict, hash=False)
    bottom_dim: int = 64
    dropout: float = 0.1
    funnel: Funnel = "none"

    def __post_init__(self) -> None:
        checks.at_least_one(self, "embedding_dim", "bottom_dim")
        checks.dropout(self, "dropout")
        if self.funnel not in FUNNELS:
            raise ValueError(f"funnel must be one of {list(FUNNELS)}, got {self.funnel!r}")
        self._check_bottom()

    def _check_bottom(self) -> None:
        if self.bottom is None:
            if self.bottom_config:
                raise ValueError("bottom_config is set but bottom is not: name the zoo model it configures")
            return
        usable = [n for n in known_models()
                  if n not in _ONE_LOGIT and not issubclass(entry(n).config_cls, MultiTaskConfig)]
        if self.bottom not in usable:
            why = ("its output is one logit, not bottom_dim features" if self.bottom in _ONE_LOGIT
                   else "a multi-task model" if self.bottom in known_models() else "not a zoo model")
            raise ValueError(f"bottom must be a single-task zoo model, one of {usable}; got {self.bottom!r} ({why})")
        own_dim = self.bottom_config.get("embedding_dim", self.embedding_dim)
        if own_dim != self.embedding_dim:
            raise ValueError(f"bottom_config.embedding_dim ({own_dim!r}) differs from embedding_dim "
                             f"({self.embedding_dim}): the bottom reads the model's embedding; set embedding_dim")
        try:
            self.bottom_model_config()
        except ConfigError as err:
            raise ValueError(f"bottom_config: {err}") from None

    def bottom_model_config(self) -> Any:
        """The bottom's typed config (call only with `bottom` set)."""
        return make_config(self.bottom, {**self.bottom_config, "embedding_dim": self.embedding_dim})


def gate_key(task: str, level: int, levels: int) -> str:
    """The name of task's gate at 1-based `level`: `task` when there is one level, else `task@level`."""
    return task if levels == 1 else f"{task}@{level}"


class _MultiTaskModel(nn.Module):
    """What the multi-task models share: the embedding, the shared input (flat fields or a zoo bottom)
    and the funnel over the task heads. Subclasses build their experts and towers."""

    def __init__(self, cfg: MultiTaskConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__()
        self.embedding = embedding
        self.tasks = tuple(inputs.tasks)
        self.funnel = cfg.funnel
        self.parents = [inputs.parent_index(t) if cfg.funnel != "none" else None for t in inputs.tasks]
        self.bottom = None
        self.input_fields, self.field_dim = inputs.num_fields, cfg.embedding_dim
        if cfg.bottom is not None:
            bottom = build_model(cfg.bottom, cfg.bottom_model_config(), inputs, embedding=embedding,
                                 num_outputs=cfg.bottom_dim)
            if bottom.embedding is not embedding:
                raise TypeError(f"the bottom {cfg.bottom!r} does not read the embedding it was given")
            # Registered in both modules, the tables would be saved twice under two names (and safetensors
            # refuses tensors that share memory): the bottom keeps a plain reference, `embedding` owns them.
            del bottom.embedding
            object.__setattr__(bottom, "embedding", embedding)
            self.bottom = bottom
            self.input_fields, self.field_dim = cfg.bottom_dim, 1
        self.input_dim = self.input_fields * self.field_dim

    def shared_fields(self, batch: Batch) -> Tensor:
        """The shared input as fields: the (B, F, D) embedding, or the bottom's W ReLU outputs as (B, W, 1)."""
        if self.bottom is None:
            return self.embedding(batch)  # (B, F, D)
        return torch.relu(self.bottom(batch)).unsqueeze(2)  # (B, W) -> (B, W, 1)

    def shared_input(self, batch: Batch) -> Tensor:
        return self.shared_fields(batch).flatten(1)  # (B, F * D) or (B, W)

    def entire_space(self, logits: Tensor) -> Tensor:
        """The heads' (B, T) logits with each funnel child's conditional chained onto its parent."""
        if all(p is None for p in self.parents):
            return logits
        return chain_funnel(logits, self.parents)  # (B, T)

    def gates(self, batch: Batch) -> dict[str, Tensor]:
        """Gate name -> (B, E) softmax weights over experts; {} for a model without gates."""
        return {}


@torch.no_grad()
def expert_utilisation(model: nn.Module, batches: Iterable[Batch]) -> dict[str, list[float]]:
    """Per gate of `model.gates`, the mean weight each expert gets over all rows (each list sums to 1).

    {} for a model without a `gates` method. Runs in eval mode (restored afterwards)."""
    if not callable(getattr(type(model), "gates", None)):
        return {}
    was_training = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    rows: dict[str, int] = {}
    try:
        for batch in batches:
            for key, weights in model.gates(batch).items():
                sums[key] = sums[key] + weights.sum(dim=0) if key in sums else weights.sum(dim=0)  # (E,)
                rows[key] = rows.get(key, 0) + weights.shape[0]
    finally:
        model.train(was_training)
    return {key: (total / max(rows[key], 1)).tolist() for key, total in sums.items()}


@dataclass(frozen=True)
class SharedBottomConfig(MultiTaskConfig):
    """Shared-Bottom hyper-parameters (and the MultiTaskConfig fields).

    Args:
        shared_units: the shared MLP's hidden widths.
        hidden_units: each task tower's hidden widths.
    """

    shared_units: tuple[int, ...] = (128, 64)
    hidden_units: tuple[int, ...] = (32,)

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.widths(self, "shared_units", allow_empty=False)
        checks.widths(self, "hidden_units")


@register("shared_bottom", SharedBottomConfig)
class SharedBottom(_MultiTaskModel):
    """One MLP shared by all tasks, a tower per task on top (hard parameter sharing).

    "Multitask Learning", Caruana, Machine Learning 1997; "An Overview of Multi-Task Learning in Deep
    Neural Networks", Ruder, 2017. https://arxiv.org/abs/1706.05098

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: SharedBottomConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__(cfg, inputs, embedding)
        self.shared = MLP(self.input_dim, cfg.shared_units, dropout=cfg.dropout)
        self.towers = TaskTowers(self.shared.out_dim, len(self.tasks), TowerConfig.of(cfg))

    def forward(self, batch: Batch) -> Tensor:
        h = self.shared(self.shared_input(batch))  # (B, H)
        return self.entire_space(self.towers([h] * len(self.tasks)))  # (B, T)


@dataclass(frozen=True)
class MMoEConfig(MultiTaskConfig):
    """MMoE hyper-parameters (and the MultiTaskConfig fields).

    Args:
        num_experts: E, expert MLPs shared by all tasks.
        expert_units: each expert's hidden widths.
        hidden_units: each task tower's hidden widths.
    """

    num_experts: int = 4
    expert_units: tuple[int, ...] = (64,)
    hidden_units: tuple[int, ...] = (32,)

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.at_least_one(self, "num_experts")
        checks.widths(self, "expert_units", allow_empty=False)
        checks.widths(self, "hidden_units")


@register("mmoe", MMoEConfig)
class MMoE(_MultiTaskModel):
    """E expert MLPs over the shared input; per task a softmax gate over them, read from the same input,
    and a tower over the gated mixture.

    "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", Ma, Zhao,
    Yi, Chen, Hong, Chi, KDD 2018. https://doi.org/10.1145/3219819.3220007

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: MMoEConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__(cfg, inputs, embedding)
        self.experts = Experts(self.input_dim, cfg.num_experts, cfg.expert_units, cfg.dropout)
        self.task_gates = nn.ModuleList(Gate(self.input_dim, cfg.num_experts) for _ in self.tasks)
        self.towers = TaskTowers(self.experts.out_dim, len(self.tasks), TowerConfig.of(cfg))

    def _mixtures(self, batch: Batch) -> tuple[list[Tensor], list[Tensor]]:
        """Each task's mixture (B, H) and gate (B, E)."""
        x = self.shared_input(batch)  # (B, W)
        experts = self.experts(x)  # (B, E, H)
        weights = [gate(x) for gate in self.task_gates]  # T x (B, E)
        return [mix(w, experts) for w in weights], weights  # T x (B, H)

    def forward(self, batch: Batch) -> Tensor:
        return self.entire_space(self.towers(self._mixtures(batch)[0]))  # (B, T)

    def gates(self, batch: Batch) -> dict[str, Tensor]:
        return dict(zip(self.tasks, self._mixtures(batch)[1]))


@dataclass(frozen=True)
class PLEConfig(MultiTaskConfig):
    """PLE hyper-parameters (and the MultiTaskConfig fields).

    Args:
        levels: stacked extraction (CGC) levels; 1 is CGC alone.
        specific_experts: K, experts of each task per level.
        shared_experts: S, shared experts per level.
        expert_units: each expert's hidden widths.
        hidden_units: each task tower's hidden widths.
    """

    levels: int = 2
    specific_experts: int = 1
    shared_experts: int = 2
    expert_units: tuple[int, ...] = (64,)
    hidden_units: tuple[int, ...] = (32,)

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.at_least_one(self, "levels", "specific_experts", "shared_experts")
        checks.widths(self, "expert_units", allow_empty=False)
        checks.widths(self, "hidden_units")


@register("ple", PLEConfig)
class PLE(_MultiTaskModel):
    """Stacked CGC levels: per level each task's own experts and shared experts, a gate per task over its
    own and the shared ones, and (between levels) a shared gate over all of them; towers on the last level.

    At the first level every input is the shared input; above it, task t's gate output is task t's input
    and the shared gate's output the shared input. Gates are named `<task>` (one level) or
    `<task>@<level>`, weights over [task t's K experts, the S shared ones]; the shared gates are not listed.

    "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for Personalized
    Recommendations", Tang, Liu, Zhao, Gong, RecSys 2020. https://doi.org/10.1145/3383313.3412236

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: PLEConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__(cfg, inputs, embedding)
        width = cfg.expert_units[-1]
        self.levels = nn.ModuleList(
            ExtractionLevel(self.input_dim if i == 0 else width, len(self.tasks), cfg.specific_experts,
                            cfg.shared_experts, cfg.expert_units, cfg.dropout, last=i == cfg.levels - 1)
            for i in range(cfg.levels))
        self.towers = TaskTowers(width, len(self.tasks), TowerConfig.of(cfg))

    def _extract(self, batch: Batch) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Each task's last-level output (B, H), and the task gates by name (B, K + S)."""
        x = self.shared_input(batch)  # (B, W)
        task_inputs, shared = [x] * len(self.tasks), x
        gates: dict[str, Tensor] = {}
        for level, extraction in enumerate(self.levels, start=1):
            task_inputs, shared, weights = extraction(task_inputs, shared)  # T x (B, H), (B, H), T x (B, K + S)
            gates.update({gate_key(t, level, len(self.levels)): w for t, w in zip(self.tasks, weights)})
        return task_inputs, gates

    def forward(self, batch: Batch) -> Tensor:
        return self.entire_space(self.towers(self._extract(batch)[0]))  # (B, T)

    def gates(self, batch: Batch) -> dict[str, Tensor]:
        return self._extract(batch)[1]


@dataclass(frozen=True)
class ESMMConfig(MultiTaskConfig):
    """ESMM hyper-parameters (and the MultiTaskConfig fields; funnel is always chain).

    Args:
        hidden_units: each task tower's hidden widths.
    """

    hidden_units: tuple[int, ...] = (128, 64)
    funnel: Funnel = "chain"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.funnel != "chain":
            raise ValueError(f"funnel must be 'chain' for esmm (its towers predict P(task | parent) over all "
                             f"rows), got {self.funnel!r}")
        checks.widths(self, "hidden_units")


@register("esmm", ESMMConfig)
class ESMM(_MultiTaskModel):
    """A tower per task over the shared embedding; a task with a parent predicts P(task | parent) and
    outputs P(parent) * P(task | parent), so it is trained on every row (the entire space), not only on
    its parent's positives. A spec without parents gives independent towers.

    "Entire Space Multi-Task Model: An Effective Approach for Estimating Post-Click Conversion Rate", Ma,
    Zhao, Huang, Wang, Hu, Zhu, Gai, SIGIR 2018. https://arxiv.org/abs/1804.07931

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: ESMMConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__(cfg, inputs, embedding)
        self.towers = TaskTowers(self.input_dim, len(self.tasks), TowerConfig.of(cfg))

    def forward(self, batch: Batch) -> Tensor:
        x = self.shared_input(batch)  # (B, W)
        return self.entire_space(self.towers([x] * len(self.tasks)))  # (B, T)


@dataclass(frozen=True)
class APEMConfig(MultiTaskConfig):
    """APEM hyper-parameters (and the MultiTaskConfig fields; funnel defaults to chain).

    Args:
        attention_units: hidden width of the per-task field attention (squeeze-and-excitation).
        shared_experts: S, experts reading the shared input.
        specific_experts: K, experts of each task, reading its attended fields.
        expert_units: each expert's hidden widths.
        indicator_dim: width of each task's learned indicator vector.
        selector_units: hidden width of the pattern selector (the gate network all tasks share).
        hidden_units: each task tower's hidden widths.
    """

    funnel: Funnel = "chain"
    attention_units: int = 16
    shared_experts: int = 2
    specific_experts: int = 1
    expert_units: tuple[int, ...] = (64,)
    indicator_dim: int = 8
    selector_units: int = 16
    hidden_units: tuple[int, ...] = (32,)

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.at_least_one(self, "attention_units", "shared_experts", "specific_experts", "indicator_dim",
                            "selector_units")
        checks.widths(self, "expert_units", allow_empty=False)
        checks.widths(self, "hidden_units")


@register("apem", APEMConfig)
class APEM(_MultiTaskModel):
    """Sample-wise and task-wise adaptive pattern extraction, chained along the conversion funnel.

    "Adaptive Pattern Extraction Multi-Task Learning for Multi-Step Conversion Estimations", Tao, Ha,
    Guo, Ma, Cheng, Lin, 2023. https://arxiv.org/abs/2301.02494

    What is implemented, as read from the paper's ideas (not its code, which is not public):

    1. Sample-wise extraction: per task t and row, an attention a_t over the fields computed from that
       row: each field squeezed to its mean, an MLP (F -> attention_units -> T * F, ReLU) excites, a
       softmax over the fields times F. Task t's input is the fields re-weighted by a_t, flattened.
       (The paper's DeepAuto Group Transformer also has a set attention among the fields; left out to
       keep the cost near DeepFM's.) With a zoo bottom, its W outputs are the "fields" (each 1 wide).
    2. Task-wise extraction: S shared experts read the plain shared input, K experts per task read task
       t's input; task t mixes [its K experts, the S shared] with softmax weights from a "pattern
       selector": one MLP shared by the tasks reading task t's input and a learned task-indicator
       vector v_t (in_dim + indicator_dim -> selector_units -> K + S). Gates are named `<task>`.
    3. Multi-step conversion: a tower per task over its mixture; with `funnel: chain` (the default) a
       task with a parent predicts P(task | parent) and outputs P(parent) * P(task | parent), down the
       whole chain (impression -> click -> conversion ...). The paper's dependence-task loss is the
       trainer's business (`funnel: masked` fits the conditional on the parent's positives).

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: APEMConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__(cfg, inputs, embedding)
        num_tasks = len(self.tasks)
        self.field_attention = FieldExcitation(self.input_fields, num_tasks, cfg.attention_units)
        self.shared_experts = Experts(self.input_dim, cfg.shared_experts, cfg.expert_units, cfg.dropout)
        self.task_experts = nn.ModuleList(Experts(self.input_dim, cfg.specific_experts, cfg.expert_units, cfg.dropout)
                                          for _ in range(num_tasks))
        self.selector = PatternSelector(self.input_dim, num_tasks, cfg.specific_experts + cfg.shared_experts,
                                        cfg.indicator_dim, cfg.selector_units)
        self.towers = TaskTowers(cfg.expert_units[-1], num_tasks, TowerConfig.of(cfg))

    def _extract(self, batch: Batch) -> tuple[list[Tensor], list[Tensor]]:
        """Each task's mixture (B, H) and gate (B, K + S)."""
        fields = self.shared_fields(batch)  # (B, F, D)
        attention = self.field_attention(fields)  # (B, T, F)
        attended = fields.unsqueeze(1) * attention.unsqueeze(3)  # (B, T, F, D)
        task_inputs = attended.flatten(2).unbind(dim=1)  # T x (B, F * D)
        shared = self.shared_experts(fields.flatten(1))  # (B, S, H)
        own = [experts(x) for experts, x in zip(self.task_experts, task_inputs)]  # T x (B, K, H)
        weights = self.selector(task_inputs)  # T x (B, K + S)
        return [mix(w, torch.cat([o, shared], dim=1)) for w, o in zip(weights, own)], weights  # T x (B, H)

    def forward(self, batch: Batch) -> Tensor:
        return self.entire_space(self.towers(self._extract(batch)[0]))  # (B, T)

    def gates(self, batch: Batch) -> dict[str, Tensor]:
        return dict(zip(self.tasks, self._extract(batch)[1]))

    def field_attention_weights(self, batch: Batch) -> dict[str, Tensor]:
        """Task -> (B, F) its sample-wise attention over the fields (mean 1 per row)."""
        attention = self.field_attention(self.shared_fields(batch))  # (B, T, F)
        return dict(zip(self.tasks, attention.unbind(dim=1)))


@dataclass(frozen=True)
class TaskExpertConfig(MultiTaskConfig):
    """TaskExpert hyper-parameters (and the MultiTaskConfig fields).

    Args:
        layers: L, memorial mixture-of-experts layers.
        num_experts: E, experts per layer.
        expert_units: each expert's hidden widths; the last is H, the width of the backbone above the
            first layer and of each task's memory.
        hidden_units: each task tower's hidden widths.
    """

    layers: int = 2
    num_experts: int = 4
    expert_units: tuple[int, ...] = (64,)
    hidden_units: tuple[int, ...] = (32,)

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.at_least_one(self, "layers", "num_experts")
        checks.widths(self, "expert_units", allow_empty=False)
        checks.widths(self, "hidden_units")


@register("task_expert", TaskExpertConfig)
class TaskExpert(_MultiTaskModel):
    """Layers of experts whose task gates also read a per-task memory of the earlier layers.

    "TaskExpert: Dynamically Assembling Multi-Task Representations with Memorial Mixture-of-Experts",
    Ye, Xu, ICCV 2023. https://arxiv.org/abs/2307.15324

    What is implemented, as read from the paper (a vision model, brought to rows of fields):

    - A backbone of L features: b_1 the shared input, b_l = ReLU(Linear(b_(l-1))) (H wide) above it,
      standing for the backbone layers whose features the paper's experts decompose.
    - Layer l: E expert MLPs turn b_l into E task-generic features (B, E, H). Task t's gate reads
      [b_l, m_t] (the layer's feature and the task's memory) and gives softmax weights over the E
      experts; their mixture y_t is added to the memory: m_t <- m_t + y_t (the multi-task feature
      memory, m_t = 0 before the first layer). Gates are named `<task>@<l>` (`<task>` when L = 1).
    - Task t's tower reads its final memory m_t, the sum of its mixtures over the layers.

    Args:
        cfg: hyper-parameters.
        inputs: the model-input view of the feature spec.
        embedding: the shared (B, F, D) field embedding.
    """

    def __init__(self, cfg: TaskExpertConfig, inputs: ModelInputs, embedding: FeatureEmbedding):
        super().__init__(cfg, inputs, embedding)
        width = cfg.expert_units[-1]
        self.backbone = nn.ModuleList(MLP(self.input_dim if i == 0 else width, (width,), dropout=cfg.dropout)
                                      for i in range(cfg.layers - 1))
        self.layers = nn.ModuleList(
            MemorialLayer(self.input_dim if i == 0 else width, len(self.tasks), cfg.num_experts, cfg.expert_units,
                          cfg.dropout)
            for i in range(cfg.layers))
        self.towers = TaskTowers(width, len(self.tasks), TowerConfig.of(cfg))
        self.memory_dim = width

    def _remember(self, batch: Batch) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Each task's final memory (B, H), and the gates by name (B, E)."""
        feature = self.shared_input(batch)  # (B, W)
        memory = [feature.new_zeros(feature.shape[0], self.memory_dim)] * len(self.tasks)  # T x (B, H)
        gates: dict[str, Tensor] = {}
        for level, layer in enumerate(self.layers, start=1):
            if level > 1:
                feature = self.backbone[level - 2](feature)  # (B, H)
            memory, weights = layer(feature, memory)  # T x (B, H), T x (B, E)
            gates.update({gate_key(t, level, len(self.layers)): w for t, w in zip(self.tasks, weights)})
        return memory, gates

    def forward(self, batch: Batch) -> Tensor:
        return self.entire_space(self.towers(self._remember(batch)[0]))  # (B, T)

    def gates(self, batch: Batch) -> dict[str, Tensor]:
        return self._remember(batch)[1]
