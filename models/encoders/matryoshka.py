"""Matryoshka nesting: one embedding whose leading coordinates are themselves a usable embedding.

"Matryoshka Representation Learning", Kusupati, Bhatt, Rege, Wallingford, Sinha, Ramanujan,
Howard-Snyder, Chen, Kakade, Jain, Farhadi, NeurIPS 2022, https://arxiv.org/abs/2205.13147

A tower trained with `matryoshka_loss` over widths (8, 16, 32, 64) gives a 64-wide vector whose first 8,
16 or 32 values (`matryoshka_prefix`, re-normalised) can be used alone: the feature spec picks the width
per use (an 8-wide item vector in a ranking model, 64 for retrieval) without a projection per width.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_dims(dims: Sequence[int], width: int | None = None) -> None:
    """ValueError unless `dims` is a non-empty, strictly increasing list of positive widths (<= width)."""
    dims = list(dims)
    if not dims or any(d < 1 for d in dims) or any(a >= b for a, b in zip(dims, dims[1:])):
        raise ValueError(f"dims must be a non-empty, strictly increasing list of positive widths, got {dims}")
    if width is not None and dims[-1] > width:
        raise ValueError(f"dims {dims} exceed the embedding width {width}")


def encode_width(dims: Sequence[int], dim: int | None, batch_size: int) -> int:
    """The width an `encode(..., dim, batch_size)` call asks for (default max(dims)), checked."""
    dim = dims[-1] if dim is None else dim
    if dim not in dims:
        raise ValueError(f"dim must be one of {list(dims)}, got {dim}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return dim


@contextmanager
def inference(tower: nn.Module) -> Iterator[None]:
    """`tower` in eval mode without gradients for the block, then back in the mode it was in."""
    was_training = tower.training
    tower.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        tower.train(was_training)


def matryoshka_prefix(z: Tensor, dim: int) -> Tensor:
    """The first `dim` values of each embedding, L2-normalised.

    Args:
        z: (B, D) embeddings, D >= dim.
        dim: the nested width.
    Returns:
        (B, dim) unit vectors.
    """
    if not 1 <= dim <= z.shape[-1]:
        raise ValueError(f"dim must be in [1, {z.shape[-1]}], got {dim}")
    return F.normalize(z[..., :dim], dim=-1)  # (B, dim)


def matryoshka_loss(loss_fn: Callable[[Tensor], Tensor], z: Tensor, dims: Sequence[int],
                    weights: Sequence[float] | None = None) -> Tensor:
    """The Matryoshka objective: sum over nested widths m of c_m * loss_fn(z[:, :m]).

    Each prefix is trained to carry the task on its own, so one projection serves every width. `loss_fn`
    receives the raw prefix (B, m) and reads m from its shape, so that it can pick a head per width (the
    paper's separate linear classifier per m) or normalise and compare (contrastive losses). The paper weighs
    every width equally (c_m = 1), the default here.

    Args:
        loss_fn: prefix (B, m) -> scalar loss.
        z: (B, D) embeddings, D >= max(dims).
        dims: strictly increasing widths, e.g. (8, 16, 32, 64).
        weights: c_m per width (default all 1).
    Returns:
        a scalar.

    Example:
        >>> heads = {m: torch.nn.Linear(m, 2) for m in (8, 16)}
        >>> z, y = torch.randn(4, 16), torch.tensor([0, 1, 0, 1])
        >>> loss = matryoshka_loss(lambda p: F.cross_entropy(heads[p.shape[-1]](p), y), z, (8, 16))
    """
    check_dims(dims, z.shape[-1])
    weights = [1.0] * len(dims) if weights is None else list(weights)
    if len(weights) != len(dims) or any(w < 0 for w in weights):
        raise ValueError(f"weights must be {len(dims)} non-negative numbers (one per dim), got {weights}")
    return sum(w * loss_fn(z[..., :m]) for w, m in zip(weights, dims))
