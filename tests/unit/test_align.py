"""ALIGN's pieces without Ray: the symmetric in-batch softmax loss, its Matryoshka sum, the learned temperature,
retrieval recall, PreciseBN, the config and the item split. The Ray Train job is tests/integration/test_align.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from muxrec.errors import ConfigError
from muxrec.models.encoders.vision import VisionTowerConfig, as_image_tensor, build_vision_tower
from muxrec.pipelines.align import (TEMPERATURE_MAX, TEMPERATURE_MIN, AlignConfig, AlignPair, align_loss,
                                    matryoshka_align_loss, recompute_batch_norm, retrieval_recall, split_items)


def _pairs(b: int = 16, d: int = 32, noise: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, d, generator=g)
    return image, image + noise * torch.randn(b, d, generator=g)


# --- the loss ----------------------------------------------------------------------------------------------

def test_loss_is_symmetric_in_the_two_towers():
    image, text = _pairs(noise=1.0)
    scale = torch.tensor(10.0)
    assert align_loss(image, text, scale) == pytest.approx(float(align_loss(text, image, scale)), rel=1e-6)
    # ... and is the mean of the two directions' cross-entropies over the batch.
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    target = torch.arange(16)
    both = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert float(align_loss(image, text, scale)) == pytest.approx(float(both), rel=1e-6)


def test_aligned_pairs_give_a_low_loss_and_uninformative_ones_log_b():
    image, text = _pairs(b=16)
    assert float(align_loss(image, text, torch.tensor(100.0))) < 1e-3  # each picks its own at temperature 0.01
    assert float(align_loss(image, _pairs(b=16, seed=1)[1], torch.tensor(100.0))) > 5.0  # unrelated pairs
    same = torch.ones(16, 8)  # every vector alike: nothing can be told apart
    assert float(align_loss(same, same, torch.tensor(14.3))) == pytest.approx(math.log(16), rel=1e-6)
    # Only the direction matters (the loss normalises): scaling a tower's outputs changes nothing.
    noisy_image, noisy_text = _pairs(noise=0.5)
    assert float(align_loss(3.0 * noisy_image, noisy_text, torch.tensor(10.0))) == \
        pytest.approx(float(align_loss(noisy_image, noisy_text, torch.tensor(10.0))), rel=1e-5)


def test_loss_rejects_mismatched_batches():
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        align_loss(torch.randn(4, 8), torch.randn(5, 8), torch.tensor(1.0))


def test_matryoshka_loss_is_the_mean_of_the_prefix_losses():
    image, text = _pairs(b=8, d=16, noise=1.0)
    scale = torch.tensor(5.0)
    expected = sum(float(align_loss(image[:, :m], text[:, :m], scale)) for m in (4, 8, 16)) / 3
    assert float(matryoshka_align_loss(image, text, scale, (4, 8, 16))) == pytest.approx(expected, rel=1e-6)
    # A pair aligned only in its last 8 values is punished at widths 4 and 8, not at 16 alone.
    tail = text.clone()
    tail[:, :8] = torch.randn(8, 8, generator=torch.Generator().manual_seed(3))
    assert float(align_loss(image[:, :8], tail[:, :8], scale)) > float(align_loss(image, tail, scale))


@pytest.fixture(scope="module")
def pair() -> AlignPair:
    from muxrec.pipelines.align import build_pair

    return build_pair(AlignConfig(width_mult=0.25, image_size=32, dims=(4, 8)))


def test_temperature_is_learned_through_its_log_and_clamped(pair):
    assert 1.0 / float(pair.logit_scale().detach()) == pytest.approx(0.07, rel=1e-5)
    torch.manual_seed(0)
    images = torch.rand(6, 3, 32, 32)
    sentences = torch.randn(6, 384)
    z_image, z_text, scale = pair(images, sentences)  # the frozen text path: sentence vectors in
    assert z_image.shape == z_text.shape == (6, 8)
    pair.zero_grad()
    matryoshka_align_loss(z_image, z_text, scale, (4, 8)).backward()
    assert pair.log_scale.grad is not None and float(pair.log_scale.grad) != 0.0
    assert pair.text.projection.weight.grad.abs().sum() > 0 and pair.vision.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in pair.text.encoder.parameters())  # MiniLM stays frozen
    with torch.no_grad():
        pair.log_scale.fill_(math.log(1e4))
    assert float(pair.logit_scale().detach()) == pytest.approx(1.0 / TEMPERATURE_MIN)
    with torch.no_grad():
        pair.log_scale.fill_(-3.0)
    assert float(pair.logit_scale().detach()) == pytest.approx(1.0 / TEMPERATURE_MAX)
    with torch.no_grad():
        pair.log_scale.fill_(math.log(1 / 0.07))


# --- validation pieces -------------------------------------------------------------------------------------

def test_recall_counts_identical_titles_as_the_items_own():
    image = torch.eye(4)
    text = torch.eye(4)[[1, 0, 2, 3]]  # images 0 and 1 are closest to each other's title
    titles = ["a", "b", "c", "d"]
    assert retrieval_recall(image, text, titles, ks=(1, 2)) == {1: 0.5, 2: 1.0}
    assert retrieval_recall(image, text, ["a", "a", "c", "d"], ks=(1,)) == {1: 1.0}  # same text: no mistake


def test_precise_batch_norm_gives_the_statistics_of_the_pass():
    torch.manual_seed(0)
    tower = build_vision_tower(VisionTowerConfig(width_mult=0.25, image_size=32, dims=(4, 8)))
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    stem = tower.backbone[0][1]  # the stem's BatchNorm, fed by the stem conv
    recompute_batch_norm(tower.eval(), pixels, batch_size=6)  # batches of 6, 6, 6, 2
    with torch.no_grad():
        conv = tower.backbone[0][0](as_image_tensor(pixels) * 2 - 1)  # (20, C, 16, 16)
    assert torch.allclose(stem.running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-6)  # the exact mean of the pass
    batch_vars = [conv[i: i + 6].var(dim=(0, 2, 3)) * len(conv[i: i + 6]) for i in range(0, 20, 6)]
    assert torch.allclose(stem.running_var, sum(batch_vars) / 20, rtol=1e-4)  # size-weighted batch variances
    assert stem.momentum == 0.1 and not tower.training  # settings put back
    # Eval mode now centres the stem's output over the pass, as train mode centres each batch.
    with torch.no_grad():
        assert stem(conv).mean(dim=(0, 2, 3)).sub(stem.bias).abs().max() < 1e-4


def test_split_is_seeded_disjoint_and_complete():
    train, valid = split_items(100, 0.1, seed=3)
    assert len(valid) == 10 and len(train) == 90
    assert sorted(np.concatenate([train, valid]).tolist()) == list(range(100))
    again = split_items(100, 0.1, seed=3)
    assert np.array_equal(again[1], valid) and not np.array_equal(split_items(100, 0.1, seed=4)[1], valid)
    with pytest.raises(ConfigError, match="at least 2"):
        split_items(10, 0.1, seed=0)


# --- the config ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    ({"epochs": 0}, "epochs"),
    ({"batch_size": 3, "num_workers": 2}, "per worker"),
    ({"lr": 0.0}, "lr"),
    ({"weight_decay": -1.0}, "weight_decay"),
    ({"valid_share": 1.0}, "valid_share"),
    ({"temperature_init": 0.001}, "temperature_init"),
    ({"fine_tune_layers": -1}, "fine_tune_layers"),
    ({"dims": (16, 8)}, "dims"),
    ({"image_size": 16}, "image_size"),
    ({"width_mult": 0.0}, "width_mult"),
    ({"num_workers": -1}, "num_workers"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        AlignConfig(**bad)


def test_config_gives_both_towers_the_same_widths():
    cfg = AlignConfig(dims=(4, 8), fine_tune_layers=1, width_mult=0.25, image_size=32)
    assert cfg.vision().dims == cfg.text().dims == (4, 8)
    assert cfg.text().fine_tune_layers == 1 and cfg.vision().width_mult == 0.25
