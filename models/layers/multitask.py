"""Multi-task blocks: expert MLPs and their softmax gates, one tower per task, and the funnel math.

A funnel links a task to the earlier task it only happens after (conversion after click). A model that
chains it predicts the conditional c = logit P(task | parent) and outputs the entire-space logit of
P(task) = P(parent) * sigmoid(c), as in "Entire Space Multi-Task Model: An Effective Approach for
Estimating Post-Click Conversion Rate", Ma et al., SIGIR 2018. https://arxiv.org/abs/1804.07931
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from muxrec.models.layers.mlp import MLP
from muxrec.models.layers.tower import Tower, TowerConfig

# log P is kept <= this so that P < 1 and both log(1 - P) and the logit stay finite.
_MAX_LOG_P = -1e-7


def _logit_of_log(log_p: Tensor) -> Tensor:
    """logit(P) from log P: log P - log(1 - P), with 1 - P = -expm1(log P), accurate near P = 1 and 0."""
    log_p = log_p.clamp(max=_MAX_LOG_P)
    return log_p - torch.log(-torch.expm1(log_p))


def chain_funnel(conditional: Tensor, parents: Sequence[int | None]) -> Tensor:
    """Entire-space logits from conditional ones: out[:, t] = logit(P(parent) * sigmoid(conditional[:, t])).

    Tasks are taken in order, so a chain a -> b -> c multiplies down it: P(c) = P(a) P(b | a) P(c | b).
    The products are sums of log-sigmoids, turned back into logits in log space, so probabilities near 0
    or 1 keep their precision. A task without a parent keeps its logit as it is.

    Args:
        conditional: (B, T) logits; for a task with a parent, of P(task | parent).
        parents: per task, the index of its parent (an earlier task), or None.

    Returns:
        (B, T) logits of P(task) over all rows; P(child) <= P(parent) on every row.

    Example::

        >>> torch.sigmoid(chain_funnel(torch.zeros(1, 3), [None, 0, 1]))
        tensor([[0.5000, 0.2500, 0.1250]])
    """
    if len(parents) != conditional.shape[1]:
        raise ValueError(f"{len(parents)} parents for {conditional.shape[1]} tasks")
    log_p: list[Tensor] = []  # per task, log P(task) (B,)
    out: list[Tensor] = []
    for t, p in enumerate(parents):
        c = conditional[:, t]  # (B,)
        if p is None:
            log_p.append(F.logsigmoid(c))
            out.append(c)
            continue
        if not 0 <= p < t:
            raise ValueError(f"task {t}'s parent must be an earlier task, got {p}")
        log_p.append(log_p[p] + F.logsigmoid(c))  # (B,) log P(parent) + log P(task | parent)
        out.append(_logit_of_log(log_p[t]))
    return torch.stack(out, dim=1)  # (B, T)


def conditional_log_probs(child: Tensor, parent: Tensor) -> tuple[Tensor, Tensor]:
    """(log q, log(1 - q)) with q = P(child) / P(parent), from the two tasks' entire-space logits.

    What a child task learns from its parent's positive rows (`funnel: masked`). q is capped just
    under 1 (where P(child) >= P(parent), which a chained model never predicts) so both are finite.
    For the output of `chain_funnel`, q is sigmoid of the child's conditional logit.

    Args:
        child: (B,) entire-space logits of the child task.
        parent: (B,) entire-space logits of its parent.
    """
    log_q = (F.logsigmoid(child) - F.logsigmoid(parent)).clamp(max=_MAX_LOG_P)  # (B,)
    return log_q, torch.log(-torch.expm1(log_q))  # (B,), (B,)


def mix(weights: Tensor, experts: Tensor) -> Tensor:
    """The gate-weighted sum of expert outputs: weights (B, E), experts (B, E, H) -> (B, H)."""
    return torch.bmm(weights.unsqueeze(1), experts).squeeze(1)  # (B, 1, E) @ (B, E, H) -> (B, H)


class Experts(nn.Module):
    """E expert MLPs reading one input, their outputs stacked.

    Args:
        in_dim: input width.
        num_experts: E.
        units: each expert's hidden widths (Linear -> ReLU -> [Dropout] per layer); H = units[-1].
        dropout: dropout after each hidden activation.

    Example::

        >>> Experts(32, num_experts=4, units=(16,), dropout=0.0)(torch.randn(8, 32)).shape
        torch.Size([8, 4, 16])
    """

    def __init__(self, in_dim: int, num_experts: int, units: Sequence[int], dropout: float):
        super().__init__()
        if num_experts < 1 or not units:
            raise ValueError(f"experts need num_experts >= 1 and non-empty units, got {num_experts}, {list(units)}")
        self.experts = nn.ModuleList(MLP(in_dim, units, dropout=dropout) for _ in range(num_experts))
        self.out_dim = units[-1]

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([expert(x) for expert in self.experts], dim=1)  # (B, in_dim) -> (B, E, H)


class Gate(nn.Module):
    """Softmax weights over E experts, read from the gate's input: (B, in_dim) -> (B, E), rows summing to 1."""

    def __init__(self, in_dim: int, num_experts: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, num_experts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.linear(x), dim=-1)  # (B, E)


class TaskTowers(nn.Module):
    """One tower per task, each ending in one logit: T inputs (B, in_dim) -> (B, T), in task order.

    Args:
        in_dim: width of each task's input.
        num_tasks: T.
        cfg: each tower's hidden layers.
    """

    def __init__(self, in_dim: int, num_tasks: int, cfg: TowerConfig):
        super().__init__()
        self.towers = nn.ModuleList(Tower(in_dim, cfg, num_tasks=1) for _ in range(num_tasks))

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return torch.cat([tower(x) for tower, x in zip(self.towers, inputs)], dim=1)  # T x (B, 1) -> (B, T)


class ExtractionLevel(nn.Module):
    """One Customized Gate Control (CGC) level of PLE: task-specific and shared experts, gated per task.

    Task t's gate reads task t's input and weighs its own K experts and the S shared ones. Below the
    last level a shared gate reads the shared input and weighs every expert (all tasks' and the shared
    ones): its mixture is the next level's shared input. "Progressive Layered Extraction (PLE): A Novel
    Multi-Task Learning (MTL) Model for Personalized Recommendations", Tang et al., RecSys 2020.

    Args:
        in_dim: width of every input (task and shared).
        num_tasks: T.
        specific: K, experts per task.
        shared: S, shared experts.
        units: each expert's hidden widths; H = units[-1].
        dropout: dropout inside the experts.
        last: the top level: no shared gate (nothing reads a shared output).
    """

    def __init__(self, in_dim: int, num_tasks: int, specific: int, shared: int, units: Sequence[int],
                 dropout: float, last: bool):
        super().__init__()
        self.task_experts = nn.ModuleList(Experts(in_dim, specific, units, dropout) for _ in range(num_tasks))
        self.shared_experts = Experts(in_dim, shared, units, dropout)
        self.task_gates = nn.ModuleList(Gate(in_dim, specific + shared) for _ in range(num_tasks))
        self.shared_gate = None if last else Gate(in_dim, num_tasks * specific + shared)
        self.out_dim = units[-1]

    def forward(self, task_inputs: Sequence[Tensor], shared_input: Tensor
                ) -> tuple[list[Tensor], Tensor | None, list[Tensor]]:
        """T task inputs and the shared input, (B, in_dim) each -> T task outputs (B, H), the shared output
        (B, H) (None at the last level) and each task's gate weights (B, K + S): its own experts first."""
        shared = self.shared_experts(shared_input)  # (B, S, H)
        own = [experts(x) for experts, x in zip(self.task_experts, task_inputs)]  # T x (B, K, H)
        weights = [gate(x) for gate, x in zip(self.task_gates, task_inputs)]  # T x (B, K + S)
        outputs = [mix(w, torch.cat([o, shared], dim=1)) for w, o in zip(weights, own)]  # T x (B, H)
        shared_out = None
        if self.shared_gate is not None:
            everything = torch.cat([*own, shared], dim=1)  # (B, T * K + S, H)
            shared_out = mix(self.shared_gate(shared_input), everything)  # (B, H)
        return outputs, shared_out, weights


class FieldExcitation(nn.Module):
    """Per task, an attention over the fields of each row, computed from the row (Squeeze-and-Excitation).

    Each field is squeezed to its mean value, a small MLP reads the F means and gives every task a
    softmax over the F fields, scaled by F so that uniform attention leaves the fields unchanged.
    "Squeeze-and-Excitation Networks", Hu, Shen, Sun, CVPR 2018 is the squeeze / excite step.

    Args:
        num_fields: F.
        num_tasks: T.
        units: the excitation MLP's hidden width.

    Example::

        >>> FieldExcitation(num_fields=5, num_tasks=2, units=8)(torch.randn(3, 5, 4)).shape
        torch.Size([3, 2, 5])
    """

    def __init__(self, num_fields: int, num_tasks: int, units: int):
        super().__init__()
        self.num_fields, self.num_tasks = num_fields, num_tasks
        self.excite = nn.Sequential(nn.Linear(num_fields, units), nn.ReLU(), nn.Linear(units, num_tasks * num_fields))

    def forward(self, fields: Tensor) -> Tensor:
        """(B, F, D) fields -> (B, T, F) weights, each task's summing to F over the fields."""
        squeezed = fields.mean(dim=2)  # (B, F)
        scores = self.excite(squeezed).view(-1, self.num_tasks, self.num_fields)  # (B, T, F)
        return torch.softmax(scores, dim=-1) * self.num_fields  # (B, T, F)


class MemorialLayer(nn.Module):
    """One TaskExpert layer: experts over the layer's backbone feature, a gate per task reading that
    feature and the task's memory, and the memory updated with the task's mixture.

    m_t <- m_t + sum_e g_t,e(b, m_t) * expert_e(b), with b the backbone feature (B, in_dim) and m_t the
    task's memory (B, H). "TaskExpert: Dynamically Assembling Multi-Task Representations with Memorial
    Mixture-of-Experts", Ye & Xu, ICCV 2023.

    Args:
        in_dim: width of the backbone feature.
        num_tasks: T.
        num_experts: E.
        units: each expert's hidden widths; H = units[-1], the memory's width.
        dropout: dropout inside the experts.
    """

    def __init__(self, in_dim: int, num_tasks: int, num_experts: int, units: Sequence[int], dropout: float):
        super().__init__()
        self.experts = Experts(in_dim, num_experts, units, dropout)
        self.task_gates = nn.ModuleList(Gate(in_dim + units[-1], num_experts) for _ in range(num_tasks))
        self.out_dim = units[-1]

    def forward(self, backbone: Tensor, memory: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """backbone (B, in_dim), T memories (B, H) -> T updated memories (B, H) and each task's gate (B, E)."""
        experts = self.experts(backbone)  # (B, E, H)
        weights = [gate(torch.cat([backbone, m], dim=1)) for gate, m in zip(self.task_gates, memory)]  # T x (B, E)
        return [m + mix(w, experts) for w, m in zip(weights, memory)], weights  # T x (B, H)


class PatternSelector(nn.Module):
    """Per task, softmax weights over E experts from one selector MLP that all tasks share, reading the
    task's input and the task's learned indicator vector.

    The indicator says which task asks, so one network serves every task and the tasks' choices are
    learned jointly (the "Pattern Selector" with "adaptive task-indicator vectors" of APEM, as read here).

    Args:
        in_dim: width of each task's input.
        num_tasks: T.
        num_experts: E, experts each task chooses among.
        indicator_dim: width of the task-indicator vectors.
        units: the selector's hidden width.
    """

    def __init__(self, in_dim: int, num_tasks: int, num_experts: int, indicator_dim: int, units: int):
        super().__init__()
        self.indicators = nn.Parameter(torch.randn(num_tasks, indicator_dim))  # (T, V): tasks start apart
        self.selector = nn.Sequential(nn.Linear(in_dim + indicator_dim, units), nn.ReLU(),
                                      nn.Linear(units, num_experts))

    def forward(self, task_inputs: Sequence[Tensor]) -> list[Tensor]:
        """T inputs (B, in_dim) -> T gates (B, E)."""
        weights = []
        for indicator, x in zip(self.indicators, task_inputs):
            asked = torch.cat([x, indicator.expand(x.shape[0], -1)], dim=1)  # (B, in_dim + V)
            weights.append(torch.softmax(self.selector(asked), dim=-1))  # (B, E)
        return weights
