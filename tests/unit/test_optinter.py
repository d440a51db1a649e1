"""OptInter specifics: pair order, argmax retrain config, cost of naive / memorized pairs, cross ids, errors.

Shapes, backward, seeded output and the save/load round trip run for every registered model in
test_models.py (the default config is the search mode).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchrec import KeyedJaggedTensor

import muxrec.models.optinter  # noqa: F401  (registers "optinter")
from muxrec.config import to_dict
from muxrec.errors import ConfigError
from muxrec.models import Batch, build_model, make_config
from muxrec.models.optinter import METHODS, OptInterConfig, categorical_pairs

from tests.helpers import build, tiny_rows

SMALL = {"embedding_dim": 4, "hidden_units": (8,), "dropout": 0.0}


@pytest.fixture(scope="module")
def tiny():
    return tiny_rows(400)


def _fixed(inputs, methods, **overrides):
    torch.manual_seed(0)
    return build_model("optinter", OptInterConfig(**{**SMALL, "methods": tuple(methods), **overrides}), inputs)


def _size(inputs, name):
    return next(t.num_embeddings for t in inputs.tables if name in t.feature_names)


def _ids_batch(columns: dict[str, list[int]]) -> Batch:
    """A batch carrying only single-valued ids: enough for `cross_ids`."""
    n = len(next(iter(columns.values())))
    kjt = KeyedJaggedTensor(keys=list(columns), values=torch.tensor([v for c in columns.values() for v in c]),
                            lengths=torch.ones(n * len(columns), dtype=torch.long))
    return Batch(kjt, torch.zeros(n, 0), {})


def test_pairs_are_single_valued_categoricals_in_field_order(tiny):
    inputs, _ = tiny
    pairs = categorical_pairs(inputs)
    categorical = ["user_id", "item_id", "site", "ad_type", "region", "device", "daypart", "slot", "noise_a", "noise_b"]
    assert len(pairs) == 45  # tags (multi), title (text), history (sequence) and numerics take no part
    assert pairs[:3] == [("user_id", "item_id"), ("user_id", "site"), ("user_id", "ad_type")]
    assert pairs[-1] == ("noise_a", "noise_b")
    assert {f for p in pairs for f in p} == set(categorical)


def test_retrain_config_is_the_argmax_per_pair(tiny):
    inputs, _ = tiny
    search = build("optinter", dict(SMALL), inputs)
    winners = [i % 3 for i in range(len(search.pairs))]
    with torch.no_grad():
        search.alpha.normal_()
        search.alpha[torch.arange(len(winners)), winners] = 5.0
    chosen = search.retrain_config()
    assert chosen.methods == tuple(METHODS[w] for w in winners)
    assert dataclasses.replace(chosen, methods=()) == search.cfg  # only the methods change
    report = search.search_report()
    assert report["methods"]["user_id x item_id"] == "memorize"
    assert report["methods"]["user_id x site"] == "factorize"
    assert report["methods"]["user_id x ad_type"] == "naive"
    assert report["weights"]["user_id x item_id"]["memorize"] > 0.9

    fixed = build_model("optinter", make_config("optinter", to_dict(chosen)), inputs)  # as model.json is read back
    assert fixed.cfg == chosen
    assert fixed.retrain_config() is None
    assert fixed.search_report() == {"methods": report["methods"]}
    assert not hasattr(fixed, "alpha")


def test_naive_pairs_cost_no_parameters_and_memorized_pairs_only_their_rows(tiny):
    inputs, rows = tiny
    n_pairs = len(categorical_pairs(inputs))
    naive = _fixed(inputs, ["naive"] * n_pairs)
    d, h = SMALL["embedding_dim"], SMALL["hidden_units"][0]
    embedding = sum(p.numel() for p in naive.embedding.parameters())
    t = len(inputs.tasks)
    mlp_no_pairs = inputs.num_fields * d * h + h + h * t + t  # (F * D -> h) + (h -> T), one logit per task
    assert naive.cross is None
    assert sum(p.numel() for p in naive.parameters()) == embedding + mlp_no_pairs

    cap = 50
    one_memorized = _fixed(inputs, ["memorize"] + ["naive"] * (n_pairs - 1), cross_buckets=cap)
    user_x_item = min(_size(inputs, "user_id") * _size(inputs, "item_id"), cap)
    assert one_memorized.cross.weight.shape == (user_x_item, d)
    extra = sum(p.numel() for p in one_memorized.parameters()) - sum(p.numel() for p in naive.parameters())
    assert extra == user_x_item * d + d * h  # its rows + its D inputs to the MLP

    small_pair = ["naive"] * n_pairs
    small_pair[categorical_pairs(inputs).index(("ad_type", "device"))] = "memorize"
    exact = _fixed(inputs, small_pair)
    assert exact.cross.weight.shape[0] == _size(inputs, "ad_type") * _size(inputs, "device")  # fits: no hashing

    one_factorized = _fixed(inputs, ["factorize"] + ["naive"] * (n_pairs - 1))
    extra = sum(p.numel() for p in one_factorized.parameters()) - sum(p.numel() for p in naive.parameters())
    assert extra == d * h  # e_i * e_j reads the shared embedding: only its MLP inputs

    batch = rows.take(torch.arange(16))
    mixed = _fixed(inputs, [METHODS[i % 3] for i in range(n_pairs)])
    logits = mixed(batch)
    assert logits.shape == (16, len(inputs.tasks))
    logits.sum().backward()
    assert mixed.cross.weight.grad.abs().sum() > 0


def test_memorize_gives_distinct_ids_to_distinct_pairs(tiny):
    inputs, _ = tiny
    n_pairs = len(categorical_pairs(inputs))
    n_ad, n_dev = _size(inputs, "ad_type"), _size(inputs, "device")
    grid = [(a, b) for a in range(n_ad) for b in range(n_dev)]
    methods = ["naive"] * n_pairs
    for pair in (("user_id", "item_id"), ("ad_type", "device")):
        methods[categorical_pairs(inputs).index(pair)] = "memorize"
    batch = _ids_batch({"user_id": [0] * len(grid), "item_id": [0] * len(grid),
                        "ad_type": [a for a, _ in grid], "device": [b for _, b in grid]})

    model = _fixed(inputs, methods)
    ids = model.cross_ids(batch)  # (B, 2): user x item, then ad_type x device
    user_x_item = min(_size(inputs, "user_id") * _size(inputs, "item_id"), model.cfg.cross_buckets)
    assert len(set(ids[:, 1].tolist())) == len(grid)  # exact: every id pair its own row
    assert ids[:, 1].min() >= user_x_item and ids[:, 1].max() < model.cross.num_embeddings  # its own range
    assert ids[:, 0].tolist() == [0] * len(grid)

    hashed = _fixed(inputs, methods, cross_buckets=5)  # fewer buckets than id pairs: hashed
    ids = hashed.cross_ids(batch)[:, 1]
    assert ids.tolist() == [5 + (a * n_dev + b) % 5 for a, b in grid]  # after user x item's 5 rows
    assert len(set(ids.tolist())) == 5


def test_search_anneals_the_temperature_in_training_only(tiny):
    inputs, rows = tiny
    model = build("optinter", {**SMALL, "anneal_steps": 4, "final_temperature": 0.25}, inputs)
    batch = rows.take(torch.arange(8))
    assert model.temperature() == 1.0
    model.eval()
    model(batch)
    assert model.temperature() == 1.0
    model.train()
    for _ in range(6):
        model(batch)
    assert model.temperature() == pytest.approx(0.25)
    assert int(model.state_dict()["step"]) == 6  # saved: a checkpoint's eval mix depends on it


def test_memorize_cost_prices_the_expected_memorized_share(tiny):
    inputs, _ = tiny
    free = build("optinter", SMALL, inputs)
    assert free.regularization().item() == 0
    model = build("optinter", {**SMALL, "memorize_cost": 0.3, "alpha_scale": 2.0}, inputs)
    assert model.regularization().item() == pytest.approx(0.3 / 3)  # alpha = 0: a third of each pair memorized
    with torch.no_grad():
        model.alpha[:, 0] = 5.0  # lean every pair towards memorize
    share = torch.softmax(2.0 * model.alpha, dim=-1)[:, 0].mean()
    assert model.regularization().item() == pytest.approx(0.3 * share.item())
    model.regularization().backward()
    assert (model.alpha.grad[:, 0] > 0).all()  # the gradient pushes away from memorizing
    fixed = build("optinter", {**SMALL, "memorize_cost": 0.3, "methods": list(model.chosen_methods())}, inputs)
    assert fixed.regularization().item() == 0  # only the search pays


def test_config_errors_are_clear(tiny):
    inputs, _ = tiny
    with pytest.raises(ConfigError, match=r"methods\[1\] must be one of \['memorize', 'factorize', 'naive'\], "
                                          r"got 'memorise'"):
        make_config("optinter", {"methods": ["naive", "memorise"]})
    with pytest.raises(ConfigError, match="final_temperature"):
        make_config("optinter", {"final_temperature": 2.0})
    with pytest.raises(ConfigError, match="memorize_cost must be >= 0"):
        make_config("optinter", {"memorize_cost": -1})
    with pytest.raises(ConfigError, match="cross_buckets must be >= 1"):
        make_config("optinter", {"cross_buckets": 0})
    with pytest.raises(ValueError, match=r"methods has 2 entries but these inputs have 45 categorical field "
                                         r"pairs, one method each, in this order: user_id x item_id, user_id x site"):
        build("optinter", {**SMALL, "methods": ["naive", "naive"]}, inputs)
