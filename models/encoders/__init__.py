"""muxrec.models.encoders: content encoders shared by the models (today the MiniLM text tower).

Encoders turn item content into vectors that any CTR or multi-task model reads as item features; they load
their pretrained weights from installed packages, never from the network.
"""

from muxrec.models.encoders.matryoshka import matryoshka_loss, matryoshka_prefix
from muxrec.models.encoders.minilm import MiniLM, MiniLMConfig, load_minilm, load_tokenizer, minilm_dir
from muxrec.models.encoders.text import TextTower, TextTowerConfig, build_text_tower

__all__ = [
    "MiniLM", "MiniLMConfig", "TextTower", "TextTowerConfig", "build_text_tower", "load_minilm", "load_tokenizer",
    "matryoshka_loss", "matryoshka_prefix", "minilm_dir",
]
