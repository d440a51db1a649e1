"""The block most models end with: an MLP tower over a flat input, then a linear head, one logit per task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from muxrec.models import checks
from muxrec.models.layers.mlp import MLP

# The hidden activations a model config may name (DIN adds "dice", its own unit).
Activation = Literal["relu", "gelu", "silu", "tanh", "prelu"]


@dataclass(frozen=True)
class TowerConfig:
    """A tower's hidden layers.

    Model configs keep these as flat fields (`hidden_units`, `dropout`, ... in configs/models/*.yaml);
    `TowerConfig.of(cfg)` gathers them.

    Args:
        hidden_units: widths of the hidden layers (may be empty: the head alone, a linear model).
        dropout: dropout after each hidden activation.
        batch_norm: BatchNorm1d before each hidden activation.
        activation: relu, gelu, silu, tanh, prelu or dice.
    """

    hidden_units: tuple[int, ...] = ()
    dropout: float = 0.0
    batch_norm: bool = False
    activation: str = "relu"

    def __post_init__(self) -> None:
        checks.widths(self, "hidden_units")
        checks.dropout(self, "dropout")

    @classmethod
    def of(cls, cfg: Any, hidden_units: str = "hidden_units", dropout: str = "dropout") -> TowerConfig:
        """The tower fields of a model config: `hidden_units` and `dropout` (or the named fields), and
        `batch_norm` / `activation` where the model has them (else off / relu)."""
        return cls(tuple(getattr(cfg, hidden_units)), getattr(cfg, dropout), getattr(cfg, "batch_norm", False),
                   getattr(cfg, "activation", "relu"))


class Tower(MLP):
    """Hidden layers (Linear -> [BatchNorm] -> activation -> [Dropout]), then a linear head.

    The head is one logit per task, so its width comes from the spec's labels (`len(inputs.tasks)`).
    With `num_tasks=None` there is no head: the tower is a trunk whose output another layer reads
    (DCN-v2's parallel DNN, FinalMLP's streams). An MLP underneath, so the parameter names are the
    MLP's (`net.<i>.weight`) and weights saved before this block existed still load.

    Args:
        in_dim: input width.
        cfg: the hidden layers.
        num_tasks: T, the head's width; None for no head.

    Example::

        >>> Tower(64, TowerConfig((128, 64), dropout=0.1), num_tasks=2)(torch.randn(8, 64)).shape
        torch.Size([8, 2])
    """

    def __init__(self, in_dim: int, cfg: TowerConfig, num_tasks: int | None):
        super().__init__(in_dim, cfg.hidden_units, out_dim=num_tasks, dropout=cfg.dropout,
                         batch_norm=cfg.batch_norm, activation=cfg.activation)
