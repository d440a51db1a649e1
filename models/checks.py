"""Validation shared by the model configs: each raises ValueError naming the field and the value.

    def __post_init__(self) -> None:
        at_least_one(self, "embedding_dim", "num_heads")
        widths(self, "hidden_units")
        dropout(self, "dropout")
"""

from __future__ import annotations

from typing import Any


def at_least_one(cfg: Any, *names: str) -> None:
    """Each named integer field is >= 1."""
    for name in names:
        value = getattr(cfg, name)
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def widths(cfg: Any, *names: str, allow_empty: bool = True) -> None:
    """Each named tuple (layer widths, kernel sizes) holds positive integers (and is non-empty unless allowed)."""
    for name in names:
        units = getattr(cfg, name)
        if (not units and not allow_empty) or any(h < 1 for h in units):
            need = "a list of positive integers" if allow_empty else "a non-empty list of positive integers"
            raise ValueError(f"{name} must be {need}, got {list(units)}")


def dropout(cfg: Any, *names: str) -> None:
    """Each named dropout rate is in [0, 1)."""
    for name in names:
        value = getattr(cfg, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
