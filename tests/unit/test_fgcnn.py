"""FGCNN specifics: the generator's field-axis convolution, pooled field counts, IPNN products, config errors."""

from __future__ import annotations

import pytest
import torch

import muxrec.models.fgcnn  # noqa: F401  (registers "fgcnn")
from muxrec.errors import ConfigError
from muxrec.models import EncodedRows, build_model, make_config
from muxrec.models.fgcnn import FeatureGeneration, InnerProducts, pooled_fields

from tests.helpers import fitted, inputs_for, synthetic_raw, synthetic_spec


def test_inner_products_match_a_hand_computation():
    fields = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]]])  # (1, 3, 2)
    # pairs in order (0, 1), (0, 2), (1, 2)
    assert torch.equal(InnerProducts(3)(fields), torch.tensor([[0.0, 3.0, 2.0]]))
    assert InnerProducts(29).num_pairs == 29 * 28 // 2


def test_pooling_rounds_up_so_fields_never_vanish():
    assert pooled_fields(8, (2, 2, 2, 2)) == (4, 2, 1, 1)
    assert pooled_fields(7, (2, 3)) == (4, 2)
    gen = FeatureGeneration(8, 5, channels=(3, 4, 2, 2), kernel_heights=(7, 7, 7, 7), pooling_sizes=(2, 2, 2, 2),
                            recombined_channels=(3, 3, 3, 3))
    assert gen.num_new == (4 + 2 + 1 + 1) * 3
    assert gen(torch.randn(6, 8, 5)).shape == (6, 24, 5)


@pytest.mark.parametrize("height", [3, 4])
def test_convolution_slides_over_fields_only(height):
    """A change in field f, dimension d reaches only fields within the kernel's reach, in dimension d."""
    torch.manual_seed(0)
    gen = FeatureGeneration(9, 4, channels=(2,), kernel_heights=(height,), pooling_sizes=(1,),
                            recombined_channels=(1,))
    conv = gen.convs[0]
    x = torch.randn(1, 1, 9, 4)
    y = x.clone()
    y[0, 0, 4, 2] += 1.0
    out_x, out_y = conv(x), conv(y)  # (1, 2, 9, 4): "same" padding keeps the 9 fields
    assert out_x.shape == (1, 2, 9, 4)
    changed = (out_x != out_y).any(dim=1)[0]  # (F, D)
    rows = changed.any(dim=1).nonzero().flatten().tolist()
    # Output row r sees input rows r - (h - 1) // 2 .. r + h // 2, so input row 4 reaches these:
    assert rows == list(range(4 - height // 2, 4 + (height - 1) // 2 + 1))
    assert changed.any(dim=0).nonzero().flatten().tolist() == [2]


def test_classifier_reads_products_of_raw_and_generated_fields():
    spec = synthetic_spec(rows=400)
    vocab, encoded = fitted(spec, synthetic_raw(spec))
    inputs = inputs_for(spec, vocab)
    cfg = make_config("fgcnn", {"embedding_dim": 4, "channels": [3, 3], "kernel_heights": [3, 3],
                                "pooling_sizes": [2, 2], "recombined_channels": [2, 1], "hidden_units": [8]})
    model = build_model("fgcnn", cfg, inputs)
    f = inputs.num_fields
    fields = f + 2 * pooled_fields(f, (2, 2))[0] + pooled_fields(f, (2, 2))[1]
    assert model.dnn.net[0].in_features == fields * (fields - 1) // 2 + fields * 4
    batch = EncodedRows(encoded["train"], inputs).take(torch.arange(8))
    before = model(batch)
    with torch.no_grad():  # the generated features feed the classifier
        model.generation.recombinations[1][0].bias.add_(1.0)
    assert not torch.allclose(before, model(batch))


def test_bad_configs_name_the_field():
    with pytest.raises(ConfigError, match="one entry per generation layer, got channels=2, kernel_heights=1"):
        make_config("fgcnn", {"channels": [4, 4], "kernel_heights": [3], "pooling_sizes": [2],
                              "recombined_channels": [2]})
    with pytest.raises(ConfigError, match=r"pooling_sizes must be a list of positive integers, got \[2, 0\]"):
        make_config("fgcnn", {"channels": [4, 4], "kernel_heights": [3, 3], "pooling_sizes": [2, 0],
                              "recombined_channels": [2, 2]})
    with pytest.raises(ConfigError, match="dropout must be in"):
        make_config("fgcnn", {"dropout": 1.0})
