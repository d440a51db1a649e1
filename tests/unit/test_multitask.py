"""Multi-task models: the funnel math, gates, zoo bottoms, config errors, one task, no numeric features.

tests/unit/test_models.py already walks every registered model (shapes, backward, seeded output,
save/load); these are the multi-task specifics.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from muxrec.artifacts import ArtifactRegistry
from muxrec.errors import ConfigError
from muxrec.metrics import roc_auc
from muxrec.models import build_model, make_config
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.layers.multitask import chain_funnel, conditional_log_probs
from muxrec.models.multitask import expert_utilisation
from muxrec.models.serialization import load_model, model_files
from muxrec.spec import parse_spec

from tests.helpers import spec_data, synthetic_spec

MULTI_TASK = ["apem", "esmm", "mmoe", "ple", "shared_bottom", "task_expert"]
GATED = ["apem", "mmoe", "ple", "task_expert"]
FUNNELS = ["chain", "masked"]


@pytest.fixture(scope="module")
def tiny():
    """The synthetic data (click, conversion), conversion declared after click."""
    spec, vocab, inputs, rows = spec_data(synthetic_spec(rows=800))
    inputs = dataclasses.replace(inputs, parents={"conversion": "click"})
    return spec, vocab, inputs, rows


@pytest.fixture(scope="module")
def batch(tiny):
    return tiny[3].take(torch.arange(64))


def _small(name, **fields):
    """The default config, smaller, with `fields` set."""
    return make_config(name, {"embedding_dim": 4, "hidden_units": [8], **fields})


def _build(name, inputs, seed=0, **fields):
    torch.manual_seed(seed)
    return build_model(name, _small(name, **fields), inputs)


# The funnel math.

def test_chain_funnel_is_the_product_of_sigmoids_and_never_above_the_parent():
    torch.manual_seed(0)
    conditional = torch.randn(256, 2) * 4
    out = chain_funnel(conditional, [None, 0])
    p = torch.sigmoid(out)
    assert torch.equal(out[:, 0], conditional[:, 0])  # a task without a parent is left as it is
    torch.testing.assert_close(p[:, 1], torch.sigmoid(conditional[:, 0]) * torch.sigmoid(conditional[:, 1]))
    assert (p[:, 1] <= p[:, 0]).all()


def test_a_three_step_chain_multiplies_down_it():
    torch.manual_seed(1)
    conditional = torch.randn(128, 4) * 3
    p = torch.sigmoid(chain_funnel(conditional, [None, 0, 1, None]))  # a -> b -> c, d alone
    s = torch.sigmoid(conditional)
    torch.testing.assert_close(p[:, 2], s[:, 0] * s[:, 1] * s[:, 2])
    assert (p[:, 2] <= p[:, 1]).all() and (p[:, 1] <= p[:, 0]).all()
    torch.testing.assert_close(p[:, 3], s[:, 3])
    assert torch.equal(torch.sigmoid(chain_funnel(torch.zeros(1, 3), [None, 0, 1])), torch.tensor([[0.5, 0.25, 0.125]]))


def test_chain_funnel_stays_finite_at_the_extremes_and_has_gradients():
    conditional = torch.tensor([[40.0, 40.0], [-40.0, -40.0], [40.0, -80.0], [-80.0, 40.0]], requires_grad=True)
    out = chain_funnel(conditional, [None, 0])
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(conditional.grad).all()


def test_chain_funnel_refuses_a_parent_that_is_not_earlier():
    with pytest.raises(ValueError, match="parent must be an earlier task"):
        chain_funnel(torch.zeros(2, 2), [1, None])
    with pytest.raises(ValueError, match="3 parents for 2 tasks"):
        chain_funnel(torch.zeros(2, 2), [None, 0, 1])


def test_conditional_log_probs_recover_the_conditional_of_a_chained_output():
    torch.manual_seed(2)
    conditional = torch.randn(512, 2) * 3
    out = chain_funnel(conditional, [None, 0])
    log_q, log_not_q = conditional_log_probs(out[:, 1], out[:, 0])
    torch.testing.assert_close(log_q.exp(), torch.sigmoid(conditional[:, 1]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(log_not_q.exp(), torch.sigmoid(-conditional[:, 1]), atol=1e-5, rtol=1e-4)
    # A child above its parent (a model without a chain) is capped just under q = 1, still finite.
    log_q, log_not_q = conditional_log_probs(torch.tensor([3.0, 50.0]), torch.tensor([-3.0, 50.0]))
    assert torch.isfinite(log_q).all() and torch.isfinite(log_not_q).all() and (log_q < 0).all()


# Models with a funnel.

@pytest.mark.parametrize(("name", "funnel"), [(n, f) for n in MULTI_TASK for f in FUNNELS if (n, f) != ("esmm", "masked")])
def test_a_funnel_child_is_never_more_likely_than_its_parent(name, funnel, tiny, batch):
    model = _build(name, tiny[2], funnel=funnel)
    assert model.funnel == funnel
    with torch.no_grad():
        for p in model.parameters():  # away from the near-zero init, so the heads disagree
            p.add_(torch.randn_like(p) * 0.3)
        p = torch.sigmoid(model(batch))
    assert (p[:, 1] <= p[:, 0]).all()


def test_without_a_funnel_the_tasks_are_independent_heads(tiny, batch):
    inputs = tiny[2]
    chained, plain = (_build("mmoe", inputs, funnel=f).eval() for f in ("chain", "none"))
    assert plain.funnel == "none" and plain.parents == [None, None] and chained.parents == [None, 0]
    with torch.no_grad():
        a, b = chained(batch), plain(batch)
    assert torch.equal(a[:, 0], b[:, 0])  # the same seed: the same heads
    torch.testing.assert_close(a[:, 1], chain_funnel(b, [None, 0])[:, 1])


def test_esmm_is_always_chained():
    assert make_config("esmm").funnel == "chain" and make_config("apem").funnel == "chain"
    assert make_config("mmoe").funnel == "none"
    for funnel in ("none", "masked"):
        with pytest.raises(ConfigError, match=f"esmm config: funnel must be 'chain'.*got '{funnel}'"):
            make_config("esmm", {"funnel": funnel})
    with pytest.raises(ConfigError, match=r"mmoe config.funnel: must be one of \['none', 'chain', 'masked'\]"):
        make_config("mmoe", {"funnel": "soft"})


# Gates.

@pytest.mark.parametrize("name", GATED)
def test_gates_sum_to_one_per_row_and_task(name, tiny, batch):
    model = _build(name, tiny[2]).eval()
    with torch.no_grad():
        gates = model.gates(batch)
    levels = {"ple": 2, "task_expert": 2}.get(name, 1)
    expected = [t if levels == 1 else f"{t}@{level}" for level in range(1, levels + 1) for t in ("click", "conversion")]
    assert sorted(gates) == sorted(expected)
    for key, w in gates.items():
        assert w.shape[0] == len(batch) and w.dim() == 2 and (w >= 0).all(), key
        torch.testing.assert_close(w.sum(dim=1), torch.ones(len(batch)))


def test_gate_names_and_widths_follow_the_levels(tiny, batch):
    inputs = tiny[2]
    with torch.no_grad():
        ple = _build("ple", inputs, levels=1, specific_experts=2, shared_experts=3).gates(batch)
        deep = _build("task_expert", inputs, layers=3, num_experts=5).gates(batch)
        mmoe = _build("mmoe", inputs, num_experts=6).gates(batch)
    assert {k: v.shape[1] for k, v in ple.items()} == {"click": 5, "conversion": 5}  # K own + S shared
    assert sorted(deep) == sorted(f"{t}@{i}" for t in ("click", "conversion") for i in (1, 2, 3))
    assert all(v.shape[1] == 5 for v in deep.values())
    assert {k: v.shape[1] for k, v in mmoe.items()} == {"click": 6, "conversion": 6}


@pytest.mark.parametrize("name", MULTI_TASK)
def test_expert_utilisation_averages_the_gates(name, tiny):
    inputs, rows = tiny[2], tiny[3]
    model = _build(name, inputs)
    model.train()
    used = expert_utilisation(model, rows.batches(100))
    assert model.training  # mode restored
    if name not in GATED:
        assert used == {} and model.gates(rows.take(torch.arange(4))) == {}
        return
    assert used and all(abs(sum(w) - 1) < 1e-5 for w in used.values())
    model.eval()
    with torch.no_grad():
        everything = model.gates(rows.take(torch.arange(len(rows))))
    for key, w in everything.items():
        torch.testing.assert_close(torch.tensor(used[key]), w.mean(dim=0), atol=1e-5, rtol=1e-5)


def test_expert_utilisation_of_a_model_without_gates_is_empty(tiny):
    inputs, rows = tiny[2], tiny[3]
    for name in ("deepfm", "final_mlp"):  # FinalMLP has a `gates` attribute: its feature gates, not experts
        torch.manual_seed(0)
        model = build_model(name, make_config(name, {"embedding_dim": 4}), inputs)
        assert expert_utilisation(model, rows.batches(100)) == {}


# Zoo models as the shared bottom.

@pytest.mark.parametrize("bottom", ["deepfm", "autoint"])
@pytest.mark.parametrize("name", MULTI_TASK)
def test_a_zoo_model_is_the_shared_bottom(name, bottom, tiny, batch):
    inputs = tiny[2]
    model = _build(name, inputs, bottom=bottom, bottom_dim=8, bottom_config={"hidden_units": [8]} if bottom == "deepfm"
                   else {"attention_layers": 1, "attention_dim": 4})
    assert isinstance(model.embedding, FeatureEmbedding) and model.bottom.embedding is model.embedding
    logits = model(batch)
    assert logits.shape == (64, 2) and torch.isfinite(logits).all()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels[:, :2]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.bottom.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.embedding.parameters())
    # The tables are registered once, under `embedding`, not again under the bottom.
    assert not [k for k in model.state_dict() if k.startswith("bottom.embedding.")]
    assert [n for n, m in model.named_modules(remove_duplicate=False) if m is model.embedding] == ["embedding"]


def test_a_model_with_a_zoo_bottom_round_trips(tiny, batch, tmp_path):
    spec, vocab, inputs, _ = tiny
    cfg = _small("ple", bottom="deepfm", bottom_dim=8, bottom_config={"hidden_units": [16]})
    torch.manual_seed(0)
    model = build_model("ple", cfg, inputs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    loaded = load_model(ArtifactRegistry(tmp_path).publish("ple", model_files(model, "ple", cfg, spec, vocab)))
    assert loaded.config == cfg
    with torch.no_grad():
        assert torch.equal(model(batch), loaded.model(batch))


def test_bad_bottoms_are_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"mmoe config: bottom must be a single-task zoo model, one of .*deepfm.*"
                                          r"got 'deepfn' \(not a zoo model\)"):
        make_config("mmoe", {"bottom": "deepfn"})
    with pytest.raises(ConfigError, match=r"bottom must be .*got 'ple' \(a multi-task model\)"):
        make_config("mmoe", {"bottom": "ple"})
    with pytest.raises(ConfigError, match=r"bottom must be .*got 'fm' \(its output is one logit"):
        make_config("esmm", {"bottom": "fm"})
    with pytest.raises(ConfigError, match=r"ple config: bottom_config: deepfm config: unknown key\(s\) \['hiden_units'\]"):
        make_config("ple", {"bottom": "deepfm", "bottom_config": {"hiden_units": [8]}})
    with pytest.raises(ConfigError, match=r"bottom_config: deepfm config.hidden_units\[1\]: expected an integer"):
        make_config("apem", {"bottom": "deepfm", "bottom_config": {"hidden_units": [8, "x"]}})
    with pytest.raises(ConfigError, match=r"bottom_config: autoint config: num_heads must be >= 1"):
        make_config("task_expert", {"bottom": "autoint", "bottom_config": {"num_heads": 0}})
    with pytest.raises(ConfigError, match="bottom_config is set but bottom is not"):
        make_config("shared_bottom", {"bottom_config": {"hidden_units": [8]}})
    with pytest.raises(ConfigError, match=r"bottom_config.embedding_dim \(8\) differs from embedding_dim \(16\)"):
        make_config("mmoe", {"bottom": "deepfm", "bottom_config": {"embedding_dim": 8}})
    with pytest.raises(ConfigError, match="bottom_dim must be >= 1"):
        make_config("mmoe", {"bottom": "deepfm", "bottom_dim": 0})


def test_bad_sizes_name_the_field():
    with pytest.raises(ConfigError, match="mmoe config: num_experts must be >= 1, got 0"):
        make_config("mmoe", {"num_experts": 0})
    with pytest.raises(ConfigError, match="expert_units must be a non-empty list"):
        make_config("ple", {"expert_units": []})
    with pytest.raises(ConfigError, match="levels must be >= 1"):
        make_config("ple", {"levels": 0})
    with pytest.raises(ConfigError, match="dropout must be in"):
        make_config("task_expert", {"dropout": 1.0})
    with pytest.raises(ConfigError, match=r"apem config: unknown key\(s\) \['experts'\]"):
        make_config("apem", {"experts": 3})


# Any number of tasks, any features.

def _spec_without_numeric_features(labels):
    data = synthetic_spec(rows=600, labels=labels).model_dump(mode="json", exclude_defaults=True)
    data["features"] = [f for f in data["features"] if f["kind"] != "numeric"]
    return parse_spec(data)


@pytest.fixture(scope="module")
def one_task():
    return spec_data(synthetic_spec(rows=600, labels=("click",)))


@pytest.fixture(scope="module")
def no_numeric():
    return spec_data(_spec_without_numeric_features(("click", "conversion")))


@pytest.mark.parametrize("name", MULTI_TASK)
def test_one_task_and_no_numeric_features(name, one_task, no_numeric):
    for data, tasks in ((one_task, 1), (no_numeric, 2)):
        inputs, rows = data[2], data[3]
        assert len(inputs.tasks) == tasks
        model = _build(name, inputs)
        batch = rows.take(torch.arange(32))
        logits = model(batch)
        assert logits.shape == (32, tasks) and torch.isfinite(logits).all()
        logits.sum().backward()
        for w in model.gates(batch).values():
            torch.testing.assert_close(w.sum(dim=1), torch.ones(32))
    assert not no_numeric[2].numeric


@pytest.mark.parametrize("name", MULTI_TASK)
def test_eval_output_is_deterministic(name, tiny, batch):
    model = _build(name, tiny[2], dropout=0.5).eval()
    with torch.no_grad():
        assert torch.equal(model(batch), model(batch))


# Learning: each task its own planted signal.

@pytest.mark.parametrize("name", MULTI_TASK)
def test_each_task_learns_its_own_signal(name, tiny):
    """click follows one field, conversion (after a click) another: every model separates both quickly."""
    inputs, rows = tiny[2], tiny[3]
    batch = rows.take(torch.arange(256))
    site, device = (batch.sparse[f].values() for f in ("site", "device"))  # one id per row
    click = (site % 2 == 0).float()
    conversion = click * (device % 2 == 0).float()
    labels = torch.stack([click, conversion], dim=1)  # (B, 2)
    model = _build(name, inputs, embedding_dim=8)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(60):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(batch))
    assert roc_auc(click.numpy(), p[:, 0].numpy()) > 0.95
    assert roc_auc(conversion.numpy(), p[:, 1].numpy()) > 0.95
