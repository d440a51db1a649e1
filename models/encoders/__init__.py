"""muxrec.models.encoders: content encoders shared by the models: the MiniLM text tower and the MobileNetV2
vision tower.

Encoders turn item content into vectors that any CTR or multi-task model reads as item features; the text
tower loads its pretrained weights from an installed package, never from the network; the vision tower
trains from scratch.
"""

from muxrec.models.encoders.matryoshka import matryoshka_loss, matryoshka_prefix
from muxrec.models.encoders.minilm import MiniLM, MiniLMConfig, load_minilm, load_tokenizer, minilm_dir
from muxrec.models.encoders.text import TextTower, TextTowerConfig, build_text_tower
from muxrec.models.encoders.vision import VisionTower, VisionTowerConfig, as_image_tensor, build_vision_tower

__all__ = [
    "MiniLM", "MiniLMConfig", "TextTower", "TextTowerConfig", "VisionTower", "VisionTowerConfig", "as_image_tensor",
    "build_text_tower", "build_vision_tower", "load_minilm", "load_tokenizer", "matryoshka_loss", "matryoshka_prefix",
    "minilm_dir",
]
