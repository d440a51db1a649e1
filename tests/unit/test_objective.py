"""The training objective: plain BCE per task, plus cumulative-link cut points for graded labels."""

from __future__ import annotations

import math

import torch
from torch.nn.functional import binary_cross_entropy_with_logits as bce

from muxrec.pipelines.loop import Objective
from muxrec.spec import ModelInputs

from tests.helpers import tiny_spec

SIZES = {"color": 5, "tags": 6, "title": 17}


def _inputs(labels):
    return ModelInputs.from_spec(tiny_spec(labels=labels), SIZES)


def _logit(p):
    return math.log(p / (1 - p))


def test_without_grades_it_is_binary_cross_entropy():
    inputs = _inputs([{"name": "click", "source": "y"}, {"name": "buy", "source": "z"}])
    logits, labels = torch.randn(16, 2), torch.randint(0, 2, (16, 2)).float()
    objective = Objective(inputs, {})
    assert torch.allclose(objective(logits, labels), bce(logits, labels))
    # A model predicting only the first task is scored on it alone.
    assert torch.allclose(objective(logits[:, :1], labels), bce(logits[:, :1], labels[:, :1]))


def test_grades_share_the_task_score_with_fixed_log_odds_offsets():
    inputs = _inputs([{"name": "click", "source": "stars", "threshold": 4, "grades": [3, 5]}])
    rates = {"click": 0.5, "click@3": 0.8, "click@5": 0.2}
    objective = Objective(inputs, rates)
    offsets = torch.tensor([_logit(0.8), _logit(0.2)])  # minus logit(0.5) = 0
    stars = torch.tensor([1, 3, 4, 5, 5, 2, 4, 3])
    labels = torch.stack([stars >= 4, stars >= 3, stars >= 5], 1).float()  # label_columns order
    s = torch.randn(8, 1)
    expected = bce(torch.cat([s, s + offsets], 1), labels)
    assert torch.allclose(objective(s, labels), expected)


def test_a_five_pushes_the_score_up_harder_than_a_four_and_a_one_down_harder_than_a_three():
    inputs = _inputs([{"name": "click", "source": "stars", "threshold": 4, "grades": [2, 3, 5]}])
    objective = Objective(inputs, {"click": 0.55, "click@2": 0.94, "click@3": 0.83, "click@5": 0.21})
    stars = torch.tensor([1, 3, 4, 5])
    labels = torch.stack([stars >= 4, stars >= 2, stars >= 3, stars >= 5], 1).float()
    s = torch.zeros(4, 1, requires_grad=True)
    objective(s, labels).backward()
    g = s.grad[:, 0]  # gradient descent moves s by -g
    assert g[3] < g[2] < 0 < g[1] < g[0]
    # Binary labels cannot tell a 5 from a 4.
    plain = torch.zeros(4, 1, requires_grad=True)
    Objective(_inputs([{"name": "click", "source": "stars", "threshold": 4}]), {})(plain, labels[:, :1]).backward()
    assert plain.grad[3, 0] == plain.grad[2, 0] and plain.grad[0, 0] == plain.grad[1, 0]


FUNNEL = [{"name": "click", "source": "y"}, {"name": "buy", "source": "z", "parent": "click"}]


def _entire_space(parent_logit, conditional_logit):
    """Logits of P(parent) and P(parent) * sigmoid(conditional): a chained model's two outputs."""
    p_child = torch.sigmoid(parent_logit) * torch.sigmoid(conditional_logit)
    return torch.stack([parent_logit, torch.logit(p_child)], dim=1)  # (B, 2)


def test_fixed_weights_scale_each_task():
    labels_spec = [{"name": "click", "source": "y", "weight": 3.0}, {"name": "buy", "source": "z"}]
    logits, labels = torch.randn(32, 2), torch.randint(0, 2, (32, 2)).float()
    loss = Objective(_inputs(labels_spec), {})(logits, labels)
    expected = (3 * bce(logits[:, 0], labels[:, 0]) + bce(logits[:, 1], labels[:, 1])) / 4
    assert torch.allclose(loss, expected)


def test_masked_child_learns_its_conditional_on_parent_positive_rows_only():
    inputs = _inputs(FUNNEL)
    parent, conditional = torch.randn(64), torch.randn(64)
    labels = torch.stack([torch.randint(0, 2, (64,)), torch.randint(0, 2, (64,))], 1).float()
    labels[:, 1] *= labels[:, 0]  # no buy without a click
    loss = Objective(inputs, {}, masked=True)(_entire_space(parent, conditional), labels)
    rows = labels[:, 0] == 1
    expected = (bce(parent, labels[:, 0]) + bce(conditional[rows], labels[rows, 1])) / 2
    assert torch.allclose(loss, expected, atol=1e-5)
    # The child's labels on rows without a click do not move the loss at all.
    flipped = labels.clone()
    flipped[~rows, 1] = 1.0
    assert torch.allclose(Objective(inputs, {}, masked=True)(_entire_space(parent, conditional), flipped), loss)
    # Unmasked (entire space), they do.
    assert not torch.allclose(Objective(inputs, {})(_entire_space(parent, conditional), flipped),
                              Objective(inputs, {})(_entire_space(parent, conditional), labels))


def test_uncertainty_weighting_learns_a_smaller_weight_for_the_noisier_task():
    inputs = _inputs([{"name": "click", "source": "y"}, {"name": "buy", "source": "z"}])
    objective = Objective(inputs, {}, weighting="uncertainty")
    assert objective.task_weights() == {0: 1.0, 1: 1.0}
    torch.manual_seed(0)
    x = torch.randn(512, 1)
    clean = (x[:, 0] > 0).float()  # learnable exactly
    noisy = torch.randint(0, 2, (512,)).float()  # coin flips
    model = torch.nn.Linear(1, 2)
    optimizer = torch.optim.Adam([*model.parameters(), *objective.parameters()], lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        objective(model(x), torch.stack([clean, noisy], 1)).backward()
        optimizer.step()
    weights = objective.task_weights()
    assert weights[0] > 1.5 * weights[1], weights
    state = objective.state()
    again = Objective(inputs, {}, weighting="uncertainty")
    again.load_state(state)
    assert again.task_weights() == weights


def test_unknown_weighting_is_refused():
    import pytest

    with pytest.raises(ValueError, match="task weighting"):
        Objective(_inputs(FUNNEL), {}, weighting="magic")


def test_metrics_per_task_read_its_own_labels_and_the_child_also_its_parent_rows():
    import numpy as np

    from muxrec.metrics import roc_auc
    from muxrec.pipelines.loop import evaluate_rows

    inputs = _inputs(FUNNEL)
    inputs = ModelInputs(**{**inputs.__dict__, "blend": {"click": 0.25, "buy": 0.75}})
    torch.manual_seed(3)
    n = 400
    click = torch.randint(0, 2, (n,)).float()
    buy = click * torch.randint(0, 2, (n,)).float()
    scores = torch.randn(n, 2)

    class Rows:  # what the loop reads: batches with labels
        def batches(self, batch_size, generator=None):
            for start in range(0, n, batch_size):
                yield type("B", (), {"labels": torch.stack([click, buy], 1)[start:start + batch_size],
                                     "rows": slice(start, start + batch_size)})()

    class Model(torch.nn.Module):
        def forward(self, batch):
            return scores[batch.rows]  # (B, 2)

    out = evaluate_rows(Model(), Rows(), inputs, 128)
    p = torch.sigmoid(scores).numpy()
    assert out["click_auc"] == roc_auc(click.numpy(), p[:, 0])
    assert out["buy_auc"] == roc_auc(buy.numpy(), p[:, 1])
    clicked = click.numpy() == 1
    assert out["buy_given_click_auc"] == roc_auc(buy.numpy()[clicked], p[clicked, 1])
    assert out["buy_given_click_rows"] == int(clicked.sum()) and out["buy_rows"] == n
    assert out["auc"] == np.float64(0.25 * out["click_auc"] + 0.75 * out["buy_auc"])
