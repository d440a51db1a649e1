"""The MobileNetV2 vision tower: the paper's network, Matryoshka widths, encode's contract, gradients, saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from muxrec.models.encoders import VisionTower, VisionTowerConfig, as_image_tensor, build_vision_tower
from muxrec.models.encoders.vision import InvertedResidual, round_channels

SMALL = VisionTowerConfig(width_mult=0.35, image_size=32)  # where the default width is not the point: faster


def _tower(cfg: VisionTowerConfig = VisionTowerConfig(), seed: int = 0) -> VisionTower:
    torch.manual_seed(seed)
    return build_vision_tower(cfg)


def _images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


# --- the network -------------------------------------------------------------------------------------------

def test_width_1_is_the_papers_network_and_the_multiplier_scales_it():
    full, half = _tower(VisionTowerConfig(width_mult=1.0)), _tower(VisionTowerConfig(width_mult=0.5))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(full.backbone) == 2_223_872  # the reference MobileNetV2 1.0: 3,504,872 less its 1000-class head
    assert count(half.backbone) == 687_680
    assert count(full) == 2_223_872 + 1280 * 64 + 64  # + the projection to max(dims)
    convs = [m for m in half.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels == 16 and convs[-1].out_channels == 1280  # the last conv stays 1280 below width 1
    assert [b.residual for b in full.backbone.modules() if isinstance(b, InvertedResidual)].count(True) == 10
    with torch.no_grad():
        assert full.backbone(torch.rand(2, 3, 64, 64)).shape == (2, 1280, 2, 2)  # five stride-2 layers


def test_channels_round_to_multiples_of_8_never_far_below():
    assert [round_channels(c) for c in (32 * 0.5, 24 * 0.5, 32 * 0.35, 320 * 0.35, 96 * 0.75)] == [16, 16, 16, 112, 72]
    assert all(round_channels(c) % 8 == 0 and round_channels(c) >= 0.9 * c for c in np.linspace(1, 500, 97))


@pytest.mark.parametrize("dim", [8, 16, 32, 64])
def test_encode_gives_unit_vectors_that_are_prefixes_of_the_forward(dim):
    tower = _tower().train()
    images = _images(5)
    with torch.no_grad():
        full = tower.eval()(as_image_tensor(images))  # (5, 64)
    tower.train()
    z = tower.encode(images, dim=dim, batch_size=2)
    assert z.shape == (5, dim) and not z.requires_grad
    assert torch.allclose(z.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(z, F.normalize(full[:, :dim], dim=-1), atol=1e-5)
    assert tower.training  # encode restores the mode it found


def test_encode_reads_uint8_arrays_and_float_tensors_alike_in_any_batch_size():
    tower = _tower(SMALL)
    images = _images(7, size=32)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (7, 3, 32, 32)
    assert torch.allclose(tower.encode(images, dim=16), tower.encode(tensor, dim=16), atol=1e-6)
    assert torch.allclose(tower.encode(images, batch_size=1), tower.encode(images, batch_size=64), atol=1e-5)
    assert tower.encode(images[:0]).shape == (0, 64)


def test_bad_inputs_are_refused_naming_the_expected_shape():
    tower = _tower()
    with pytest.raises(ValueError, match=r"dim must be one of \[8, 16, 32, 64\], got 12"):
        tower.encode(_images(1), dim=12)
    with pytest.raises(ValueError, match=r"must be uint8 \(N, 64, 64, 3\), got uint8 \(1, 32, 32, 3\)"):
        tower.encode(_images(1, size=32))
    with pytest.raises(ValueError, match=r"must be uint8 \(N, 64, 64, 3\), got float32"):
        tower.encode(_images(1).astype(np.float32))
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 64, 64\), got \(2, 64, 64, 3\)"):
        tower(torch.rand(2, 64, 64, 3))
    with pytest.raises(ValueError, match="a uint8 numpy array or a float tensor, got list"):
        tower.encode([[0]])


def test_backward_reaches_every_parameter():
    tower = _tower(SMALL).train()
    z = tower(torch.rand(4, 3, 32, 32))
    assert z.shape == (4, 64)
    z.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())


def test_same_seed_same_weights_and_outputs_dropout_only_in_training():
    a, b, c = _tower(SMALL, seed=3), _tower(SMALL, seed=3), _tower(SMALL, seed=4)
    x = as_image_tensor(_images(3, size=32))
    assert torch.equal(a.eval()(x), b.eval()(x)) and not torch.equal(a(x), c.eval()(x))
    assert torch.equal(a(x), a(x))  # eval: no dropout
    a.train()
    assert not torch.equal(a(x), a(x))  # dropout 0.2 before the projection


def test_safetensors_round_trip_restores_the_outputs(tmp_path):
    tower = _tower(SMALL, seed=1).train()
    tower(as_image_tensor(_images(8, size=32)))  # moves the batch-norm running statistics off their initial values
    save_file(tower.state_dict(), tmp_path / "vision.safetensors")
    other = _tower(SMALL, seed=2)
    assert not torch.equal(tower.encode(_images(1, size=32)), other.encode(_images(1, size=32)))
    other.load_state_dict(load_file(tmp_path / "vision.safetensors"))
    images = _images(4, size=32, seed=5)
    assert torch.equal(tower.encode(images), other.encode(images))


@pytest.mark.parametrize("kwargs, message", [
    ({"width_mult": 0.0}, "width_mult must be a positive number"),
    ({"width_mult": float("nan")}, "width_mult must be a positive number"),
    ({"image_size": 16}, "image_size must be >= 32"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"dims": (16, 8)}, "strictly increasing"),
    ({"dims": ()}, "non-empty"),
])
def test_vision_tower_config_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisionTowerConfig(**kwargs)
