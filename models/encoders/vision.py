"""The vision tower: a MobileNetV2 trained from scratch, a linear projection, Matryoshka widths.

"MobileNetV2: Inverted Residuals and Linear Bottlenecks", Sandler, Howard, Zhu, Zhmoginov, Chen, CVPR 2018,
https://arxiv.org/abs/1801.04381. The backbone is the paper's Table 2: a 3x3 stem, seven stages of inverted
residual blocks (1x1 expansion by t, 3x3 depthwise conv, linear 1x1 bottleneck, ReLU6 between, a skip
connection where shapes allow) and a 1x1 conv to 1280 channels; every width is scaled by the width
multiplier and rounded to a multiple of 8, except the last conv, which the paper keeps at 1280 for
multipliers below 1. Global average pooling and a linear projection to max(dims) follow, whose prefixes of
every width in `dims` are embeddings too ("Matryoshka Representation Learning", Kusupati et al., NeurIPS
2022, https://arxiv.org/abs/2205.13147; train with `matryoshka_loss`), the same contract as the text tower.

No pretrained weights can be reached, so the tower starts from random weights and trains with the model that
reads it. Images are small (64x64 by default: five stride-2 layers leave a 2x2 map to pool).

Why not timm: timm 1.0.31 installs with `pip install --no-deps timm`, but `import timm` fails here: it
declares torchvision as a dependency and imports it at import time (timm/layers/create_norm.py imports
torchvision.ops.misc), and torchvision is not usable beside our torch 2.13. The network is ~60 lines of
plain torch instead.

    >>> tower = build_vision_tower(VisionTowerConfig())
    >>> tower.encode(np.zeros((2, 64, 64, 3), np.uint8), dim=8).shape   # decoded RGB images, uint8
    torch.Size([2, 8])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from muxrec.models.encoders.matryoshka import check_dims, encode_width, inference, matryoshka_prefix

# The paper's Table 2, one row per stage: expansion t, output channels c, blocks n, first block's stride s.
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


@dataclass(frozen=True)
class VisionTowerConfig:
    """Vision tower hyper-parameters.

    Args:
        width_mult: the paper's width multiplier: every layer's channels are scaled by it and rounded to a
            multiple of 8 (default 0.5: small images need little width; 1.0 is the paper's base network).
        image_size: the side S of the square RGB images the tower reads (default 64, at least 32).
        dims: the Matryoshka widths, strictly increasing; the projection is max(dims) wide and every prefix
            of a width in dims is a usable embedding (default (8, 16, 32, 64)).
        dropout: dropout on the pooled features before the projection, in training only (default 0.2, as
            in the reference MobileNetV2 classifier).
    """

    width_mult: float = 0.5
    image_size: int = 64
    dims: tuple[int, ...] = (8, 16, 32, 64)
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if not (isinstance(self.width_mult, (int, float)) and math.isfinite(self.width_mult) and self.width_mult > 0):
            raise ValueError(f"width_mult must be a positive number, got {self.width_mult!r}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 (five stride-2 layers), got {self.image_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        check_dims(self.dims)

    @property
    def width(self) -> int:
        """The projection's width, max(dims)."""
        return self.dims[-1]


def round_channels(channels: float, divisor: int = 8) -> int:
    """`channels` rounded to the nearest multiple of `divisor` (at least `divisor`), never more than 10% below."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, relu6: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if relu6 else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand (1x1, t times wider, ReLU6), filter (3x3 depthwise, ReLU6), project (1x1, linear bottleneck).

    The skip connection joins the narrow bottlenecks, when the block keeps the resolution and the width.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        expand = [_conv_bn(c_in, hidden, 1)] if expansion != 1 else []
        self.block = nn.Sequential(*expand, _conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                   _conv_bn(hidden, c_out, 1, relu6=False))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)  # (B, c_out, H / stride, W / stride)
        return x + y if self.residual else y


def mobilenet_v2(width_mult: float) -> tuple[nn.Sequential, int]:
    """The MobileNetV2 feature extractor at `width_mult`, and its output channels C.

    (B, 3, S, S) -> (B, C, S / 32, S / 32), C = 1280 for width_mult <= 1.
    """
    c_in = round_channels(STEM_CHANNELS * width_mult)
    layers: list[nn.Module] = [_conv_bn(3, c_in, 3, stride=2)]
    for t, c, n, s in MOBILENET_V2_STAGES:
        c_out = round_channels(c * width_mult)
        for i in range(n):
            layers.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
            c_in = c_out
    last = round_channels(LAST_CHANNELS * max(1.0, width_mult))
    layers.append(_conv_bn(c_in, last, 1))
    return nn.Sequential(*layers), last


class VisionTower(nn.Module):
    """MobileNetV2 -> global average pool -> linear projection to max(dims).

    Args:
        cfg: hyper-parameters.
    """

    def __init__(self, cfg: VisionTowerConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone, channels = mobilenet_v2(cfg.width_mult)
        self.dropout = nn.Dropout(cfg.dropout)
        self.projection = nn.Linear(channels, cfg.width)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> Tensor:
        """
        Args:
            images: (B, 3, S, S) RGB values in [0, 1], S = cfg.image_size.
        Returns:
            (B, max(dims)) projections, not normalised (the loss or `encode` normalises the prefix it uses).
        """
        size = self.cfg.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images must be (B, 3, {size}, {size}), got {tuple(images.shape)}")
        x = self.backbone(images * 2.0 - 1.0)  # (B, C, S / 32, S / 32), values centred on 0
        x = x.mean(dim=(2, 3))  # (B, C)
        return self.projection(self.dropout(x))  # (B, max(dims))

    def encode(self, images: np.ndarray | Tensor, dim: int | None = None, batch_size: int = 64) -> Tensor:
        """Unit-norm embeddings of `images` at a Matryoshka width, without gradients, in eval mode.

        Args:
            images: N images, either uint8 (N, S, S, 3) as `muxrec.images.decode_image` returns them (stacked),
                or float (N, 3, S, S) in [0, 1] as `forward` reads them.
            dim: one of cfg.dims (default max(dims)): the first `dim` projected values, re-normalised.
            batch_size: images per forward pass.
        Returns:
            (N, dim).
        """
        dim = encode_width(self.cfg.dims, dim, batch_size)
        pixels = _checked_pixels(images, self.cfg.image_size)
        device = self.projection.weight.device
        out = torch.empty(len(pixels), dim, device=device)  # (N, dim)
        with inference(self):
            for start in range(0, len(pixels), batch_size):
                batch = as_image_tensor(pixels[start: start + batch_size]).to(device)  # (b, 3, S, S)
                out[start: start + len(batch)] = matryoshka_prefix(self(batch), dim)  # (b, dim)
        return out


def as_image_tensor(images: np.ndarray | Tensor) -> Tensor:
    """Images as the tower reads them: uint8 (N, S, S, 3) become float (N, 3, S, S) in [0, 1]; float
    (N, 3, S, S) tensors pass through."""
    if isinstance(images, Tensor):
        return images
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, S, S)


def _checked_pixels(images: np.ndarray | Tensor, size: int) -> np.ndarray | Tensor:
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"images must be uint8 (N, {size}, {size}, 3), got {images.dtype} {images.shape}")
        return images
    if isinstance(images, Tensor):
        if not images.is_floating_point() or images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images must be float (N, 3, {size}, {size}), got {images.dtype} {tuple(images.shape)}")
        return images
    raise ValueError(f"images must be a uint8 numpy array or a float tensor, got {type(images).__name__}")


def build_vision_tower(cfg: VisionTowerConfig) -> VisionTower:
    """A VisionTower with freshly initialised weights (no pretrained MobileNetV2 is reachable)."""
    return VisionTower(cfg)
